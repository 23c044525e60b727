"""Does the profile's ``[agents]`` section match the live panel? Read-only.

Checks that the agents table has the configured columns, that the install
token table (``sql`` provider) and the server table (``ssh_source = "panel"``)
exist with the columns the engine uses, and that ``known_hosts`` is readable;
counts agents, agents with a token or without a server, and install tokens
still usable. Problems are listed in words; nothing is changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.context import Context
from engine.db import PanelDB
from engine.ops.agents.journal import AgentJournal


def _schema(db: PanelDB) -> dict[str, set[str]]:
    rows = db.query(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()",
        doing="reading the schema",
    )
    have: dict[str, set[str]] = {}
    for table, column in rows:
        have.setdefault(str(table), set()).add(str(column))
    return have


def _check(have: dict[str, set[str]], table: str, columns: list[str], what: str) -> list[str]:
    if table not in have:
        return [f"{what} table {table} does not exist"]
    absent = [c for c in columns if c not in have[table]]
    return [f"{what} table {table} has no column {', '.join(absent)}"] if absent else []


def _count(db: PanelDB, sql: str) -> int:
    return int(db.query(sql, doing="counting agents")[0][0])


def probe_agents(ctx: Context, db: PanelDB) -> dict[str, Any]:
    s = ctx.profile.agents
    have = _schema(db)
    agent_columns = [s.id_column, s.name_column, s.token_column, s.server_column, s.last_seen_column]
    if s.all_filter_column:
        agent_columns.append(s.all_filter_column)
    problems = _check(have, s.table, agent_columns, "agents")
    if s.install_token_provider == "sql":
        token_columns = [
            s.install_token_agent_column,
            s.install_token_hash_column,
            s.install_token_expires_column,
            s.install_token_used_column,
        ]
        problems += _check(have, s.install_token_table, token_columns, "install token")
    if s.ssh_source == "panel":
        server_columns = [
            s.server_id_column,
            s.server_name_column,
            s.server_host_column,
            s.server_port_column,
            s.server_user_column,
            s.server_credential_column,
        ]
        problems += _check(have, s.server_table, server_columns, "server")
    known_hosts = s.known_hosts or Path.home() / ".ssh" / "known_hosts"
    known_hosts_readable = os.access(known_hosts, os.R_OK)
    report: dict[str, Any] = {
        "checked": True,
        # the profile has an [agents] section: without one, a panel without agents is fine
        "configured": "agents" in ctx.profile.fields_set,
        "ok": not problems,
        "problems": problems,
        "install_token_provider": s.install_token_provider,
        "ssh_source": s.ssh_source,
        "known_hosts": str(known_hosts),
        "unfinished": len(AgentJournal(ctx.profile.journal_dir).unfinished()),
    }
    if s.table in have and not any(p.startswith("agents table") for p in problems):
        t = f"`{s.table}`"
        report["agents"] = _count(db, f"SELECT COUNT(*) FROM {t}")
        report["with_token"] = _count(
            db, f"SELECT COUNT(*) FROM {t} WHERE `{s.token_column}` IS NOT NULL AND `{s.token_column}` <> ''"
        )
        report["without_server"] = _count(db, f"SELECT COUNT(*) FROM {t} WHERE `{s.server_column}` IS NULL")
    if not known_hosts_readable and report.get("agents", 1):
        # Only a problem once there are agents to reach: their host keys are pinned there.
        problems.append(f"known_hosts {known_hosts} is not readable: agent server host keys are pinned there")
    report["ok"] = not problems
    if s.install_token_provider == "sql" and not any(p.startswith("install token") for p in problems):
        report["usable_install_tokens"] = _count(
            db,
            f"SELECT COUNT(*) FROM `{s.install_token_table}` WHERE `{s.install_token_used_column}` IS NULL "
            f"AND `{s.install_token_expires_column}` > UTC_TIMESTAMP(6)",
        )
    db.rollback()
    return report
