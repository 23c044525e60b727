"""The engine's operations, by name: the one dispatch table for CLI and ``serve``."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine import __version__, protocol
from engine.context import Context
from engine.errors import EngineError, PlanMismatchError, ProtocolError
from engine.events import Emitter, EventLog
from engine.layouts import probe
from engine.profile import Profile
from engine.protocol import SUPPORTED_VERSIONS, Request
from engine.runs import RunRecord

if TYPE_CHECKING:
    from engine.ops.db_password.rotation import PasswordPreflight
    from engine.ops.key.preflight import Preflight

MUTATING = protocol.MUTATING_OPS


def new_rotation_id() -> str:
    return f"r-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _hello(ctx: Context, request: Request) -> dict[str, Any]:
    return {"engine_version": __version__, "protocol": list(SUPPORTED_VERSIONS), "panel": ctx.profile.name}


def _plan(ctx: Context, request: Request) -> dict[str, Any]:
    """``plan``: what the operation it plans for (``protocol.planned_op``) would do, read-only."""
    return _PLANS[protocol.planned_op(request)](ctx, request)


def _incident_plan(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.incident.rotation import plan_incident

    return plan_incident(ctx, request)


def _agent_plan(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.plan import plan_agents

    data = plan_agents(ctx, request)
    names = [str(row["name"]) for row in data.get("agents") or ()]
    return {**data, "plan_hash": protocol.plan_hash(_agent_binding(ctx, names))}


def _key_plan_result(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.key.preflight import run_preflight

    unfinished = ctx.journal.load()
    pre = run_preflight(ctx, lock_note="read-only", write_checks=True)
    return {
        **_key_plan(ctx, pre),
        "unfinished": unfinished.public() if unfinished else None,
    }


# -- what a run must match: the plan as the engine computes it now --------------------------


def _key_binding(ctx: Context, pre: Preflight) -> dict[str, Any]:
    return protocol.key_binding(
        panel=ctx.profile.name,
        engine_version=__version__,
        key_fingerprint=pre.key_fingerprint,
        scheme=pre.scheme.label,
    )


def _key_plan(ctx: Context, pre: Preflight) -> dict[str, Any]:
    """The ``plan`` result for rotate-key: the preflight's facts and the plan's hash."""
    return {
        **pre.summary(),
        "panel": ctx.profile.name,
        "escrow": ctx.profile.escrow_description,
        "plan_hash": protocol.plan_hash(_key_binding(ctx, pre)),
    }


def _db_password_binding(ctx: Context, pre: PasswordPreflight) -> dict[str, Any]:
    return protocol.db_password_binding(
        panel=ctx.profile.name,
        engine_version=__version__,
        db_user=pre.settings.user,
        db_host=pre.settings.host,
        password_fingerprint=pre.fingerprint,
    )


def _db_password_summary(ctx: Context, pre: PasswordPreflight) -> dict[str, Any]:
    return {**pre.summary(ctx.profile.name), "plan_hash": protocol.plan_hash(_db_password_binding(ctx, pre))}


def _db_password_plan(ctx: Context, request: Request | None = None) -> dict[str, Any]:
    """``plan --db-password``: the login whose password would change, read-only."""
    from engine.ops.db_password.journal import PasswordJournal
    from engine.ops.db_password.rotation import password_preflight

    unfinished = PasswordJournal(ctx.profile.journal_dir).load()
    pre = password_preflight(ctx, write_checks=True)
    return {**_db_password_summary(ctx, pre), "unfinished": unfinished.public() if unfinished else None}


def _rotate_db_password(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.db_password.rotation import DbPasswordRotation

    def matches_the_approved_plan(pre: PasswordPreflight) -> None:
        if _names_a_plan(request):
            _refuse_mismatch(request, _db_password_binding(ctx, pre), _db_password_summary(ctx, pre))

    return DbPasswordRotation(ctx, **run_options(request), expect=matches_the_approved_plan).run()


def run_options(request: Request) -> dict[str, Any]:
    """What every rotation takes from its request: id, dry run, who asked, who approved, why."""
    return {
        "rotation_id": request.id,
        "dry_run": request.dry_run,
        "requested_by": request.requested_by,
        "approved_by": list(request.approved_by),
        "reason": request.reason,
    }


def _agent_binding(ctx: Context, names: list[str]) -> dict[str, Any]:
    return protocol.agent_binding(panel=ctx.profile.name, engine_version=__version__, agents=names)


def _refuse_mismatch(request: Request, binding: dict[str, Any], plan: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` unless the request names exactly this plan."""
    try:
        protocol.check_run(request, binding)
    except PlanMismatchError as exc:
        exc.details["plan"] = plan
        raise


def _names_a_plan(request: Request) -> bool:
    return (
        request.plan_hash is not None
        or request.key_fingerprint is not None
        or request.password_fingerprint is not None
    )


def _probe(ctx: Context, request: Request) -> dict[str, Any]:
    from engine import envfile, restart

    profile = ctx.profile
    with ctx.step("probe", "trying every known layout on every stored value") as out:
        restart.check_target(profile)  # a missing php-fpm unit shows here, before any run
        key_hex = envfile.read_key(profile.env_path, profile.key_name)
        db = ctx.connect()
        try:
            columns, missing = ctx.columns(db)
            report = probe(db, columns, key_hex, profile.batch_size)
            agents = _probe_agents(ctx, db)
        finally:
            db.close()
        out.detail = f"layout {report.chosen.label}" if report.chosen else "no layout opens every value"
    data: dict[str, Any] = {**report.as_dict(), "skipped": missing, "panel": profile.name}
    if report.chosen and profile.scheme and profile.scheme != report.chosen:
        data["problem"] = (
            f"the profile says ciphertext = {profile.scheme.label} but the stored values are "
            f"{report.chosen.label}"
        )
    data["agents"] = agents
    data["engine_version"] = __version__
    return data


def _probe_agents(ctx: Context, db: Any) -> dict[str, Any]:
    from engine.ops.agents.probe import probe_agents

    return probe_agents(ctx, db)


def _status(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.recovery import agent_states
    from engine.ops.db_password.journal import PasswordJournal

    unfinished = ctx.journal.load()
    unfinished_password = PasswordJournal(ctx.profile.journal_dir).load()
    from engine.verdict import decide

    agents = agent_states(ctx)
    holder = ctx.journal.lock_holder()
    key = unfinished.public() if unfinished else None
    password = unfinished_password.public() if unfinished_password else None
    runs = RunRecord(ctx.profile.journal_dir).recent(50)
    verdict = decide(ctx.profile, holder=holder, key=key, db_password=password, agents=agents, runs=runs)
    return {
        "panel": ctx.profile.name,
        # the one answer (running / unfinished / clear) the CLI and the bot render
        "verdict": verdict.as_dict(),
        "unfinished": key,
        # an engine holding the lock is working on it now: not a case for recover
        "running": {"pid": holder} if holder is not None else None,
        "unfinished_agents": agents,
        "unfinished_db_password": password,
        "recent": ctx.journal.finished(),
        "runs": runs[-10:],
        "known_keys": len(ctx.journal.history()),
        "secret_ages": _secret_ages(ctx),
        "engine_version": __version__,
    }


def _secret_ages(ctx: Context) -> dict[str, Any]:
    """When the key and each agent's token were last rotated to DONE, from the journals.

    Read-only. ``key_rotated_at`` is None when no finished key rotation is on
    record (the key predates the engine's history: its age is unknown). Every
    agent of the panel is listed, ``rotated_at`` None for one never rotated here;
    when the panel's database cannot be read, ``agents_listed`` is False and only
    the agents the journal knows are listed.
    """
    from engine.ops.agents.journal import AgentJournal

    key_done = [
        float(r["started_at"])
        for r in ctx.journal.finished(limit=50)
        if r.get("state") == "DONE" and isinstance(r.get("started_at"), int | float)
    ]
    agents: dict[str, dict[str, Any]] = {}
    for record in AgentJournal(ctx.profile.journal_dir).finished(limit=500):
        at = record.get("started_at")
        if record.get("state") != "DONE" or not isinstance(at, int | float):
            continue
        name = str(record.get("agent_name") or record.get("agent_id"))
        if name not in agents or agents[name]["rotated_at"] < at:
            agents[name] = {"agent": name, "rotated_at": float(at)}
    names = _agent_names(ctx)
    for name in names or ():
        agents.setdefault(name, {"agent": name, "rotated_at": None})
    return {
        "key_rotated_at": max(key_done) if key_done else None,
        "agents": sorted(agents.values(), key=lambda a: str(a["agent"])),
        "agents_listed": names is not None,
    }


def _agent_names(ctx: Context) -> list[str] | None:
    """The names of the panel's agents (read-only), or None when the database can't say."""
    from engine.ops.agents.rows import AgentTable

    try:
        db = ctx.connect()
    except EngineError:
        return None
    try:
        rows, _ = AgentTable(ctx.profile.agents).select(db, None)
    except EngineError:
        return None
    finally:
        db.close()
    return [row.name for row in rows]


def _rotate_key(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.key.rotation import KeyRotation

    def matches_the_approved_plan(pre: Preflight) -> None:
        """Runs under the panel's lock, right after the preflight (the re-plan)."""
        if _names_a_plan(request):
            _refuse_mismatch(request, _key_binding(ctx, pre), _key_plan(ctx, pre))

    return KeyRotation(ctx, **run_options(request), expect=matches_the_approved_plan).run()


def _recover(ctx: Context, request: Request) -> dict[str, Any]:
    """Converge an unfinished rotation; with none, prove the panel needs nothing.

    Operators (and scripts) run ``recover`` after any crash. When no rotation (key or
    agent) is unfinished, the answer is the read-only preflight's: every stored value
    opens with the key in ``.env`` (exit 0), or the rows that don't are named (exit 1).
    """
    from engine.errors import NothingToRecoverError
    from engine.ops.agents.recovery import recover_all
    from engine.ops.key.preflight import run_preflight

    try:
        return recover_all(ctx, rollback=request.rollback)
    except NothingToRecoverError:
        pre = run_preflight(ctx, lock_note="read-only", write_checks=False)
        summary = pre.summary()
        return {
            "state": "NOTHING_TO_RECOVER",
            "direction": "none",
            "panel": ctx.profile.name,
            "verified": summary.get("total", 0),
            "columns": summary.get("columns", {}),
            "key_fingerprint": pre.key_fingerprint,
        }


def _rotate_agent(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.rotation import rotate_agents

    if _names_a_plan(request):
        exact = _resolve_agents(ctx, request)
        binding = _agent_binding(ctx, exact)
        plan = {
            "panel": ctx.profile.name,
            "agents": [{"name": name} for name in binding["agents"]],
            "engine_version": __version__,
            "plan_hash": protocol.plan_hash(binding),
        }
        _refuse_mismatch(request, binding, plan)
        # run exactly the approved agents, never a fresh ``--all``
        request = request.replace(agents=tuple(request.agents or ()), all_agents=False)
    return rotate_agents(ctx, request)


def _resolve_agents(ctx: Context, request: Request) -> list[str]:
    """The agent names the request's selection means on the panel now (read-only)."""
    from engine.ops.agents.rows import AgentTable

    table = AgentTable(ctx.profile.agents)
    db = ctx.connect()
    try:
        names = None if request.all_agents else list(request.agents or ())
        agents, _missing = table.select(db, names)
    finally:
        db.close()
    return [agent.name for agent in agents]


def _rotate_incident(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.incident.rotation import rotate_incident

    return rotate_incident(ctx, request)


def _attach(ctx: Context, request: Request) -> dict[str, Any]:
    raise ProtocolError("attach is served by `serve`, not as a one-shot operation")


#: What ``plan`` runs for each operation it can plan for (``protocol.PLANNABLE_OPS``).
_PLANS: dict[str, Callable[[Context, Request], dict[str, Any]]] = {
    "rotate-key": _key_plan_result,
    "rotate-agent": _agent_plan,
    "rotate-incident": _incident_plan,
    "rotate-db-password": _db_password_plan,
}

OPERATIONS: dict[str, Callable[[Context, Request], dict[str, Any]]] = {
    "hello": _hello,
    "plan": _plan,
    "probe": _probe,
    "status": _status,
    "rotate-key": _rotate_key,
    "recover": _recover,
    "rotate-agent": _rotate_agent,
    "rotate-incident": _rotate_incident,
    "rotate-db-password": _rotate_db_password,
    "attach": _attach,
}


def run_operation(request: Request, profile: Profile, emitter: Emitter) -> dict[str, Any]:
    """Run one operation; returns the closing result's data or raises ``EngineError``.

    Mutating operations also log every event on disk so a client whose
    connection dropped can ``attach`` and replay them.
    """
    handler = OPERATIONS.get(request.op)
    if handler is None:
        raise ProtocolError(f"unknown operation {request.op!r}")
    ctx = Context(profile, emitter)
    if request.op not in MUTATING or request.dry_run:
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
    for key in ("old_fingerprint", "new_fingerprint", "verified", "rolled_back", "total"):
        if key in data:
            out[key] = data[key]
    return out
