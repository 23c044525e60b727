"""Unfinished agent rotations, for ``status`` (read-only) and ``recover`` (closes them;
``engine.ops.recovery`` runs every kind's recover in order).

A crash, a killed engine or a lost host can leave an agent's journal behind,
holding an install token that may still be usable. ``status`` reports each
such agent's real state, read from the panel: which token its row holds now
(the old one, the new one, another, none) and whether the install token is
still usable. ``recover`` revokes every such install token and archives the
journal (as FAILED, naming where it stopped and what was found), so nothing
usable is left behind; a later ``rotate-agent`` starts afresh.
"""

from __future__ import annotations

import contextlib
from typing import Any

from engine.context import Context
from engine.db import PanelDB
from engine.errors import EngineError
from engine.ops.agents.journal import AgentJournal, AgentRecord
from engine.ops.agents.rows import AgentTable, iso
from engine.ops.agents.tokens import InstallTokens, provider


def _token_now(table: AgentTable, db: PanelDB, record: AgentRecord) -> dict[str, Any]:
    row = table.get(db, record.agent_id)
    if row is None:
        return {"token": "agent gone", "token_fingerprint": None, "last_seen": None}
    if row.token is None:
        token = "none"
    elif record.old_token is not None and row.token == record.old_token:
        token = "old"
    elif row.token_fingerprint == record.new_fingerprint:
        token = "new"
    else:
        token = "new (registered after the interruption)"
    return {"token": token, "token_fingerprint": row.token_fingerprint, "last_seen": iso(row.last_seen)}


def _install_token_now(tokens: InstallTokens, db: PanelDB, record: AgentRecord) -> str:
    if record.install_token is None:
        return record.install_token_state or "not issued"
    return tokens.state(db, record.install_token)


def _describe(record: AgentRecord) -> dict[str, Any]:
    return {
        "rotation_id": record.rotation_id,
        "agent": record.agent_name,
        "agent_id": record.agent_id,
        "state": record.state,
        "started_at": record.started_at,
        "old_fingerprint": record.old_fingerprint,
    }


def agent_states(ctx: Context) -> list[dict[str, Any]]:
    """Each unfinished agent rotation with what the panel holds now. Read-only."""
    records = AgentJournal(ctx.profile.journal_dir).unfinished()
    if not records:
        return []
    settings = ctx.profile.agents
    table, tokens = AgentTable(settings), provider(settings)
    out = []
    try:
        db = ctx.connect()
    except EngineError as exc:
        return [{**_describe(r), "token": f"unknown ({exc.message})"} for r in records]
    try:
        for record in records:
            item = _describe(record)
            try:
                item.update(_token_now(table, db, record))
                item["install_token"] = _install_token_now(tokens, db, record)
            except EngineError as exc:
                item["token"] = f"unknown ({exc.message})"
            out.append(item)
    finally:
        db.close()
    return out


def close_agents(ctx: Context) -> list[dict[str, Any]]:
    """Revoke the install token of every unfinished agent rotation and archive it."""
    journal = AgentJournal(ctx.profile.journal_dir)
    records = journal.unfinished()
    if not records:
        return []
    settings = ctx.profile.agents
    table, tokens = AgentTable(settings), provider(settings)
    closed = []
    with ctx.step("agents", f"closing {len(records)} unfinished agent rotation(s)") as out:
        db = ctx.connect()
        try:
            for record in records:
                item = _describe(record)
                if record.install_token is not None:
                    record.install_token_state = tokens.revoke(db, record.install_token)
                    record.install_token = None
                item["install_token"] = record.install_token_state or "not issued"
                with contextlib.suppress(EngineError):
                    item.update(_token_now(table, db, record))
                record.failed_step = record.failed_step or "interrupted"
                record.error = (
                    f"interrupted at {record.state}; closed by recover: the agent holds the "
                    f"{item.get('token', 'unknown')} token, install token {item['install_token']}"
                )
                record.state = "FAILED"
                record.old_token = None
                journal.finish(record)
                closed.append(item)
        finally:
            db.close()
        out.detail = "; ".join(
            f"{c['agent']}: install token {c['install_token']}, holds the {c.get('token', 'unknown')} token"
            for c in closed
        )
    return closed
