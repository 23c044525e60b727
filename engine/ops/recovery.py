"""``recover``: converge every unfinished rotation, in the order their secrets depend on.

An unfinished database password rotation first (every other part logs in with the
password in ``.env``), then an unfinished key rotation, then agent rotations (each kind's
``recover``). With none unfinished, the answer is the read-only preflight's: every stored
value opens with the key in ``.env`` (exit 0), or the rows that don't are named (exit 1).
"""

from __future__ import annotations

from typing import IO, Any

from engine.context import Context
from engine.errors import NothingToRecoverError
from engine.ops import agents, db_password, key
from engine.ops.agents.journal import AgentJournal
from engine.ops.journaled import panel_lock
from engine.profile import Profile
from engine.protocol import Request
from engine.protocol.words import plural


def recover(ctx: Context, request: Request) -> dict[str, Any]:
    """Converge an unfinished rotation; with none, prove the panel needs nothing."""
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


def recover_all(ctx: Context, *, rollback: bool) -> dict[str, Any]:
    """The password rotation, then the key's, then the agents'. With a password rotation
    alone, its result is the result; with more, it is under ``db_password``."""
    password = db_password.recover(ctx, rollback=rollback)
    pending_agents = AgentJournal(ctx.profile.journal_dir).unfinished()
    key_unfinished = ctx.journal.load() is not None
    if password is not None and not key_unfinished and not pending_agents:
        return password
    if not pending_agents:
        data = key.recover(ctx, rollback=rollback)
        return {**data, "db_password": password} if password is not None else data
    data = dict(password) if password is not None else {}
    if key_unfinished:
        data = key.recover(ctx, rollback=rollback)
        if password is not None:
            data["db_password"] = password
    with panel_lock(ctx):
        data["agents"] = agents.recover(ctx, rollback=rollback)
    return data


# -- the CLI ------------------------------------------------------------------------------


def print_recover(out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
    if data.get("state") == "NOTHING_TO_RECOVER":
        out.write(
            f"Nothing to recover: no rotation is unfinished, and all {_stored_values(data.get('verified', 0))} "
            f"open with the key in .env ({data.get('key_fingerprint')}…).\n"
        )
        return
    password = data.get("db_password")
    if password and password is not data and password.get("direction"):
        out.write(
            f"Recovered database password rotation {password['rotation_id']}: "
            f"{password['state']} ({password['direction']}).\n"
        )
    if data.get("direction"):
        out.write(f"Recovered rotation {data['rotation_id']}: {data['state']} ({data['direction']}).\n")
    for agent in data.get("agents") or []:
        out.write(
            f"Closed agent rotation {agent['rotation_id']} of {agent['agent']} (stopped at {agent['state']}): "
            f"install token {agent['install_token']}, the agent holds the {agent.get('token', 'unknown')} token\n"
        )


def _stored_values(n: int) -> str:
    return plural(n, "stored value")
