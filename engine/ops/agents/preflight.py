"""``plan`` for ``rotate-agent``: which agents, on which servers, last seen when. Read-only.

Nothing is decrypted and no SSH connection is made: the plan says how each
server would be reached (the panel's credential or an inventory entry) and
names what is missing, so the request card shows a problem before anyone
approves it. An agent name the panel does not know fails the plan.
"""

from __future__ import annotations

from typing import Any

from engine import __version__
from engine.context import Context
from engine.errors import AgentError
from engine.ops.agents.journal import AgentJournal
from engine.ops.agents.rows import AgentRow, AgentTable, ServerRow, iso
from engine.profile import AgentSettings
from engine.protocol import Request


def _ssh(settings: AgentSettings, agent: AgentRow, server: ServerRow | None) -> tuple[str, str | None]:
    """(how the server would be reached, the problem if it cannot be)."""
    if settings.ssh_source == "inventory":
        keys = [agent.name] + ([server.name, server.host] if server else [])
        if any(k in settings.inventory for k in keys):
            return "inventory", None
        return "no route", f"no inventory entry for {agent.name}"
    if agent.server_id is None:
        return "no route", f"{agent.name} has no server in the panel"
    if server is None:
        return "no route", f"{agent.name}'s server {agent.server_id} is not in {settings.server_table}"
    if server.credential is None:
        return "no route", f"server {server.name} has no SSH credential in the panel"
    return "panel credential", None


def plan_agents(ctx: Context, request: Request) -> dict[str, Any]:
    settings = ctx.profile.agents
    table = AgentTable(settings)
    names = None if request.all_agents else list(request.agents or [])
    with ctx.step("preflight", "reading the agents and their servers") as out:
        db = ctx.connect()
        try:
            agents, missing = table.select(db, names)
            if missing:
                raise AgentError(f"no agent named {', '.join(missing)} on this panel")
            servers: dict[int, ServerRow | None] = {}
            for agent in agents:
                if agent.server_id is not None and agent.server_id not in servers:
                    servers[agent.server_id] = table.server(db, agent.server_id)
        finally:
            db.close()
        unfinished = {r.agent_id: r for r in AgentJournal(ctx.profile.journal_dir).unfinished()}
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        for agent in agents:
            server = servers.get(agent.server_id) if agent.server_id is not None else None
            how, problem = _ssh(settings, agent, server)
            problem = table.bad_name(agent) or problem
            if problem:
                problems.append(problem)
            pending = unfinished.get(agent.id)
            rows.append(
                {
                    "id": agent.id,
                    "name": agent.name,
                    "server": server.label if server else None,
                    "server_id": agent.server_id,
                    "last_seen": iso(agent.last_seen),
                    "token_fingerprint": agent.token_fingerprint,
                    "ssh": how,
                    "unfinished": {"rotation_id": pending.rotation_id, "state": pending.state} if pending else None,
                }
            )
        out.detail = f"{len(rows)} agents" + (f" · {len(problems)} problems" if problems else "")
    return {
        "panel": ctx.profile.name,
        "agents": rows,
        "total": len(rows),
        "problems": problems,
        "unfinished": [r.public() for r in unfinished.values()],
        "install_token_provider": settings.install_token_provider,
        "ssh_source": settings.ssh_source,
        "reregister_timeout_s": settings.reregister_timeout_s,
        "parallelism": settings.parallelism,
        "engine_version": __version__,
    }
