"""The engine's operations, by name: the one dispatch table for CLI and ``serve``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from engine import __version__
from engine.context import Context
from engine.errors import ProtocolError
from engine.events import Emitter, EventLog
from engine.probe import probe
from engine.profile import Profile
from engine.protocol import SUPPORTED_VERSIONS, Request

MUTATING = frozenset({"rotate-key", "rotate-agent", "recover"})


def new_rotation_id() -> str:
    return f"r-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _hello(ctx: Context, request: Request) -> dict[str, Any]:
    return {"engine_version": __version__, "protocol": list(SUPPORTED_VERSIONS), "panel": ctx.profile.name}


def _plan(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.preflight import run_preflight

    if request.agents or request.all_agents:
        from engine.agents.plan import plan_agents

        return plan_agents(ctx, request)
    unfinished = ctx.journal.load()
    pre = run_preflight(ctx, lock_note="read-only", write_checks=True)
    return {
        **pre.summary(),
        "panel": ctx.profile.name,
        "unfinished": unfinished.public() if unfinished else None,
    }


def _probe(ctx: Context, request: Request) -> dict[str, Any]:
    from engine import envfile

    profile = ctx.profile
    with ctx.step("probe", "trying every known layout on every stored value") as out:
        key_hex = envfile.read_key(profile.env_path, profile.key_name)
        db = ctx.connect()
        try:
            columns, missing = ctx.columns(db)
            report = probe(db, columns, key_hex, profile.batch_size)
            agents = _probe_agents(ctx, db)
        finally:
            db.close()
        out.detail = (
            f"layout {report.chosen.label}" if report.chosen else f"no layout chosen: {report.problem}"
        )
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
    from engine.agents.probe import probe_agents

    return probe_agents(ctx, db)


def _status(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.agents.journal import AgentJournal

    unfinished = ctx.journal.load()
    agents = [
        {"rotation_id": r.rotation_id, "agent": r.agent_name, "state": r.state}
        for r in AgentJournal(ctx.profile.journal_dir).unfinished()
    ]
    return {
        "panel": ctx.profile.name,
        "unfinished": unfinished.public() if unfinished else None,
        "unfinished_agents": agents,
        "recent": ctx.journal.finished(),
        "known_keys": len(ctx.journal.history()),
        "engine_version": __version__,
    }


def _rotate_key(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.rotation import KeyRotation

    return KeyRotation(
        ctx,
        rotation_id=request.id,
        dry_run=request.dry_run,
        requested_by=request.requested_by,
        approved_by=list(request.approved_by),
        reason=request.reason,
    ).run()


def _recover(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.converge import recover

    return recover(ctx, rollback=request.rollback)


def _rotate_agent(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.agents.rotation import rotate_agents

    return rotate_agents(ctx, request)


def _attach(ctx: Context, request: Request) -> dict[str, Any]:
    raise ProtocolError("attach is served by `serve`, not as a one-shot operation")


OPERATIONS: dict[str, Callable[[Context, Request], dict[str, Any]]] = {
    "hello": _hello,
    "plan": _plan,
    "probe": _probe,
    "status": _status,
    "rotate-key": _rotate_key,
    "recover": _recover,
    "rotate-agent": _rotate_agent,
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
    if request.op in MUTATING and not request.dry_run:
        ctx.journal.ensure_dir()
        emitter.add_sink(EventLog(ctx.journal.events_dir, request.id).sink())
    return handler(ctx, request)
