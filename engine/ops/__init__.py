"""The engine's operations by name: the one map from the protocol's list to the code.

``engine.protocol.REGISTRY`` names the operations (the bot needs the names); this module
says where each one's code is (``IMPLEMENTATIONS``), and its command line (help, options,
whether it asks before it runs). ``serve`` and the CLI dispatch through it, the way borg's
``RepositoryServer`` keeps one ``rpc_methods`` list; a test ties it to the protocol, the
CLI's subcommands and the docs.

An operation kind (``key``, ``db_password``, ``agents``, ``incident``) is a package of the
same shape: ``plan``, ``run``, ``recover``, and for the CLI ``approved`` (what a run
confirmed at the terminal names of the plan it was shown), ``print_plan`` and
``print_summary``. The read-only operations on the whole panel are in ``panel``, ``recover``
across the kinds in ``recovery``, ``plan`` in ``planning``. Modules are imported on first
use: ``serve`` answers ``hello`` before any of them loads.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from typing import IO, Any

from engine import protocol
from engine.context import Context
from engine.errors import EngineError, ProtocolError
from engine.events import Emitter, EventLog
from engine.profile import Profile
from engine.protocol import Request
from engine.runs import RunRecord

Handler = Callable[[Context, Request], dict[str, Any]]
Printer = Callable[[IO[str], Request, dict[str, Any], Profile], None]

# Command-line options, by what they mean (argparse's flags and keywords).
JSON = (("--json",), {"action": "store_true", "help": "print JSON Lines events"})
YES = (("--yes",), {"action": "store_true", "help": "do not ask for confirmation"})
REASON = (("--reason",), {"help": "why (kept in the journal)"})
DRY_RUN = (("--dry-run",), {"action": "store_true", "help": "run the preflight only; change nothing"})
ROLLBACK = (("--rollback",), {"action": "store_true", "help": "always go back to the old key"})
AGENTS = (("agents",), {"nargs": "*", "help": "agent names (or --all)"})
ALL_AGENTS = (("--all",), {"action": "store_true", "dest": "all_agents", "help": "every agent"})
Option = tuple[tuple[str, ...], dict[str, Any]]


class Implementation:
    """Where one operation's code is, and its command line.

    ``target`` is ``"module:function"`` (imported on first use), None for ``attach``,
    which ``serve`` answers itself. ``kind`` is the operation kind's package, for the
    operations ``plan`` can plan for. ``printer`` prints a result for a person.
    """

    __slots__ = ("confirm", "help", "kind", "name", "options", "printer", "target")

    def __init__(
        self,
        name: str,
        target: str | None,
        *,
        kind: str | None = None,
        printer: str | None = None,
        help: str | None = None,
        options: tuple[Option, ...] = (JSON,),
        confirm: bool = False,
    ) -> None:
        self.name = name
        self.target = target
        self.kind = kind
        self.printer = printer
        #: the CLI subcommand's help; None: not a CLI subcommand
        self.help = help
        self.options = options
        #: the CLI shows the plan and asks before it runs (unless --yes or --dry-run)
        self.confirm = confirm

    def function(self) -> Handler:
        assert self.target is not None
        handler: Handler = _load(self.target)
        return handler

    def kind_module(self) -> Any:
        assert self.kind is not None
        return importlib.import_module(self.kind)

    def print_result(self, out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
        """The result for a person at a terminal (``--json`` prints the events instead)."""
        if self.printer is not None:
            printer: Printer = _load(self.printer)
            printer(out, request, data, profile)

    def __repr__(self) -> str:
        return f"Implementation({self.name!r}, {self.target!r})"


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _kind(name: str, package: str, help: str, options: tuple[Option, ...]) -> Implementation:
    """A rotation: its package's ``run``, printed by its ``print_summary``, confirmed first."""
    return Implementation(
        name, f"{package}:run", kind=package, printer="engine.ops.planning:print_run",
        help=help, options=options, confirm=True,
    )  # fmt: skip


#: Every operation of ``protocol.REGISTRY``, in the CLI's order: the one map to the code.
IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation("hello", "engine.ops.panel:hello"),
        Implementation(
            "probe", "engine.ops.panel:probe", printer="engine.ops.panel:print_probe",
            help="detect the ciphertext layout and count stored values (read-only)",
        ),
        Implementation(
            "plan", "engine.ops.planning:plan", printer="engine.ops.planning:print_plan",
            help="what rotate-key (or, with agents, rotate-agent; or --for OPERATION) would do (read-only)",
            options=(
                (("agents",), {"nargs": "*", "help": "plan rotate-agent for these agents (or --all)"}),
                (("--all",), {"action": "store_true", "dest": "all_agents",
                              "help": "plan rotate-agent for every agent"}),
                (("--for",), {"dest": "plan_for", "choices": protocol.PLANNABLE_OPS, "metavar": "OPERATION",
                              "help": "the operation to plan: " + ", ".join(protocol.PLANNABLE_OPS)}),
                (("--incident",), {"action": "store_true",
                                   "help": "plan rotate-incident (everything a leaked .env exposed)"}),
                (("--db-password",), {"action": "store_true", "help": "plan rotate-db-password"}),
                JSON,
            ),
        ),
        _kind("rotate-key", "engine.ops.key", "rotate PANEL_ENCRYPTION_KEY", (DRY_RUN, YES, JSON, REASON)),
        _kind(
            "rotate-db-password", "engine.ops.db_password",
            "rotate the panel's database password (DB_PASSWORD)", (DRY_RUN, YES, JSON, REASON),
        ),
        Implementation(
            "recover", "engine.ops.recovery:recover", printer="engine.ops.recovery:print_recover",
            help="converge after an interrupted rotation", options=(ROLLBACK, JSON),
        ),
        Implementation(
            "status", "engine.ops.panel:status", printer="engine.ops.panel:print_status",
            help="the unfinished rotation, if any, and recent ones",
        ),
        _kind(
            "rotate-agent", "engine.ops.agents", "rotate agent tokens by re-running the bootstrap",
            (AGENTS, ALL_AGENTS,
             (("--dry-run",), {"action": "store_true", "help": "check every agent is reachable; change nothing"}),
             YES, JSON),
        ),
        _kind(
            "rotate-incident", "engine.ops.incident",
            "after a leaked .env: rotate the database password, the key and every agent token, in that order",
            ((("--dry-run",), {"action": "store_true", "help": "show the plan only; change nothing"}),
             YES, JSON, REASON),
        ),
        Implementation("attach", None),
    )
}  # fmt: skip


def run(name: str, ctx: Context, request: Request) -> dict[str, Any]:
    """Run operation ``name`` in this process (``rotate-incident`` runs its parts so)."""
    return IMPLEMENTATIONS[name].function()(ctx, request)


def run_operation(request: Request, profile: Profile, emitter: Emitter) -> dict[str, Any]:
    """Run one operation; returns the closing result's data or raises ``EngineError``.

    Mutating operations also log every event on disk so a client whose
    connection dropped can ``attach`` and replay them.
    """
    implementation = IMPLEMENTATIONS.get(request.op)
    if implementation is None or implementation.target is None:
        raise ProtocolError(f"{request.op} is served by `serve`, not as a one-shot operation"
                            if implementation else f"unknown operation {request.op!r}")  # fmt: skip
    handler = implementation.function()
    ctx = Context(profile, emitter)
    if request.op not in protocol.MUTATING_OPS or request.dry_run:
        return handler(ctx, request)
    ctx.journal.ensure_dir()
    emitter.add_sink(EventLog(ctx.journal.events_dir, request.id).sink())
    record = RunRecord(ctx.profile.journal_dir)
    record.append({**_who(request), "event": "started", "pid": os.getpid()})
    try:
        data = handler(ctx, request)
    except EngineError as exc:
        record.append(
            {**_who(request), "event": "finished", "ok": False, "code": exc.code,
             "rolled_back": exc.rolled_back}
        )  # fmt: skip
        raise
    except BaseException as exc:
        record.append(
            {**_who(request), "event": "finished", "ok": False, "code": "internal",
             "error": type(exc).__name__}
        )  # fmt: skip
        raise
    record.append({**_who(request), "event": "finished", **_outcome(data)})
    _prune(ctx.profile)
    return data


def _prune(profile: Profile) -> None:
    """Housekeeping after a run; a failure here never fails the run it follows."""
    from engine.journal_prune import prune_journal

    with contextlib.suppress(OSError):
        prune_journal(profile.journal_dir, profile.journal_keep_days)


def _who(request: Request) -> dict[str, Any]:
    """What the run record keeps of a request: who, why, which plan. Never a secret."""
    return {
        "rotation_id": request.id,
        "op": request.op,
        "requested_by": request.requested_by,
        "approved_by": list(request.approved_by),
        "reason": request.reason,
        "plan_hash": request.plan_hash,
        "key_fingerprint": request.key_fingerprint,
        "password_fingerprint": request.password_fingerprint,
        "agents": list(request.agents) if request.agents is not None else None,
        "all_agents": request.all_agents,
    }


def _outcome(data: dict[str, Any]) -> dict[str, Any]:
    ok = data.get("ok", True) is not False and data.get("state", "DONE") != "ROLLED_BACK"
    out: dict[str, Any] = {"ok": bool(ok), "state": data.get("state")}
    for key in ("old_fingerprint", "new_fingerprint", "verified", "rolled_back", "total", "stop_ms",
                "apply_bytes_per_s"):
        if key in data:
            out[key] = data[key]
    return out
