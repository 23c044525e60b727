"""``rotate-agent``: agent token rotation (docs/architecture.md §5): re-run the bootstrap,
verify the old token is dead.

The operation kind's face, as every kind's: ``plan``, ``run``, ``recover``, and for the
CLI ``approved``, ``print_plan`` and ``print_summary``.

Per agent, a journaled state machine::

    PREFLIGHT -> TOKEN_ISSUED -> BOOTSTRAPPED -> REREGISTERED -> OLD_REVOKED -> DONE
                 (or FAILED; an unused install token is revoked either way)

Modules, from the edge inwards:

* ``rows``      the panel's ``agents`` and server tables (the only SQL on agents);
* ``tokens``    single-use install tokens: ``sql`` or ``command`` provider;
* ``remote``    SSH to the agent server (the one engine module that imports paramiko);
* ``commands``  the profile's commands (token provider, checks): argv, secret on stdin;
* ``signing``   a heartbeat signed with a token, in the reference panel's scheme;
* ``tokencheck`` is the old token dead? asked with the new token first (a positive control);
* ``journal``   one journal file per agent under ``journal_dir/agents/``;
* ``batch``     one run over several agents: what they share, each agent's step events;
* ``rotation``  the state machine, several agents with bounded parallelism;
* ``outcome``   what a run reports per agent: rotated, unverified ("could not verify"), failed;
* ``recovery``  ``status`` and ``recover`` for agent rotations a crash left unfinished;
* ``preflight``, ``probe``  read-only: what a rotation would touch; does the profile fit the panel.

(No module is named ``plan`` or ``run``: those are the kind's functions below.)

What the panel must do for all this is written in docs/agents-contract.md.

Tokens (old agent token, install token) live only in memory and in the 0600
journal of an unfinished rotation; events, results, logs and exception
messages name them by fingerprint (first 16 hex of SHA-256), and every token a
run learns (the new one included) is hidden by its exact value from whatever
it emits.
"""

from __future__ import annotations

from typing import IO, Any

from engine import __version__, protocol
from engine.context import Context
from engine.ops.approval import names_a_plan, refuse_mismatch
from engine.protocol import Request


def binding(ctx: Context, names: list[str]) -> dict[str, Any]:
    return protocol.agent_binding(panel=ctx.profile.name, engine_version=__version__, agents=names)


def plan(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.preflight import plan_agents

    data = plan_agents(ctx, request)
    names = [str(row["name"]) for row in data.get("agents") or ()]
    return {**data, "plan_hash": protocol.plan_hash(binding(ctx, names))}


def run(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.agents.rotation import rotate_agents

    if names_a_plan(request):
        exact = _resolve(ctx, request)
        bound = binding(ctx, exact)
        plan = {
            "panel": ctx.profile.name,
            "agents": [{"name": name} for name in bound["agents"]],
            "engine_version": __version__,
            "plan_hash": protocol.plan_hash(bound),
        }
        refuse_mismatch(request, bound, plan)
        # run exactly the approved agents, never a fresh ``--all``
        request = request.replace(agents=tuple(request.agents or ()), all_agents=False)
    return rotate_agents(ctx, request)


def _resolve(ctx: Context, request: Request) -> list[str]:
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


def recover(ctx: Context, *, rollback: bool) -> list[dict[str, Any]]:
    """Close every unfinished agent rotation (its install token revoked); [] when there is none."""
    from engine.ops.agents.recovery import close_agents

    return close_agents(ctx)


# -- the CLI ------------------------------------------------------------------------------


def approved(plan: dict[str, Any]) -> dict[str, Any]:
    names = [str(a.get("name")) for a in plan.get("agents") or []]
    return {"plan_hash": plan.get("plan_hash"), "agents": names, "all_agents": False}


def print_plan(out: IO[str], data: dict[str, Any]) -> None:
    agents = data.get("agents") or []
    out.write(f"Panel {data.get('panel', '')}: {len(agents)} agent{'' if len(agents) == 1 else 's'} "
              "would get a new token\n")  # fmt: skip
    for agent in agents:
        out.write(f"  {agent.get('name')}\n")


def print_summary(out: IO[str], data: dict[str, Any]) -> None:
    from engine.protocol.outcome import Outcome

    read = Outcome.of(protocol.result_event("rotate-agent", **data))
    for agent in read.agents:
        mark = "✔" if agent.ok else ("?" if agent.unverified else "✖")
        detail = agent.outcome
        if agent.ok and agent.new_fingerprint:
            detail += f" · token {agent.old_fingerprint}… → {agent.new_fingerprint}…"
        elif not agent.ok:
            detail += f" at {agent.failed_step}: {agent.error}"
            if agent.old_token_valid:
                detail += " (its old token still works)"
        out.write(f"{mark} {agent.name}: {detail}\n")
    out.write(f"{read.message}\n")
