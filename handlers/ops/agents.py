"""``/rotate-agent``: give agents new tokens by re-running their bootstrap.

Everything the Slack side knows of an agent rotation: its command (names or ``--all``),
its plan and run requests (both name the agents), its card's plan lines (each agent,
its server, when it was last seen) and its summary (shared with the key's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slack_bolt import App

from handlers import blocks
from handlers import messages as m
from handlers.ending import Ending
from handlers.ops import Listener, Operation, run_summary
from handlers.parsing import MAX_AGENTS, Parsed, Refusal, reason_of, take_agent_names, take_panel
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest

OP = "rotate-agent"
COMMAND = "/rotate-agent"
MAX_LISTED_AGENTS = 25
HELP_LINES = (
    m.esc(
        "• `/rotate-agent <agent>[,<agent>…]|--all [panel] <reason>`: give agents new "
        "tokens by re-running their bootstrap; the old tokens stop working. Quote a name "
        "with a space, a comma or a quote: `\"Büro 1\",agent-9`."
    ),
)


def parse(text: str, panels: Sequence[str]) -> Parsed | str:
    """``/rotate-agent <agent>[,<agent>...]|--all [panel] <reason>``; a name with a space,
    a comma or a quote in quotes (``handlers.parsing.take_agent_names``)."""
    words = text.split()
    if not words or (words[0] in panels and len(words) == 1):
        return m.needs_agents(COMMAND)
    all_agents = words[0] in ("--all", "all", "*")
    agents: tuple[str, ...] = ()
    if all_agents:
        spec = words.pop(0)
    else:
        taken = take_agent_names(text)
        if taken is None:
            return m.needs_agents(COMMAND)
        agents, rest = tuple(dict.fromkeys(taken[0])), taken[1]
        words, spec = rest.split(), text.strip()[: len(text.strip()) - len(rest)]
        if len(agents) > MAX_AGENTS:
            return f"At most {MAX_AGENTS} agents per request; use `--all` for every agent."
    try:
        panel = take_panel(words, panels, f"{COMMAND} {spec} {panels[0]} <reason>")
        reason = reason_of(words, COMMAND, f"{spec} lost laptop")
    except Refusal as refusal:
        return refusal.message
    return Parsed(op=OP, panel=panel, reason=reason, agents=agents, all_agents=all_agents)


def target(panel: str, agents: Sequence[str], all_agents: bool, shown: int = m.LISTED_NAMES) -> str:
    """``3 agents on panel prod-eu (a, b, c)``; at most ``shown`` names, then "and N more"."""
    if all_agents:
        return f"all agents on panel {m.esc(panel)}"
    return f"{m.plural(len(agents), 'agent')} on panel {m.esc(panel)} ({m.some_names(agents, shown)})"


def plan_fields(agents: Sequence[str], all_agents: bool) -> dict[str, Any]:
    return {"agents": list(agents) if agents else None, "all_agents": all_agents}


def run_fields(request: RotationRequest) -> dict[str, Any]:
    """The run names the exact agents the plan resolved."""
    return {"agents": list(request.plan.agents), "all_agents": request.all_agents}


def plan_lines(plan: PlanView) -> str:
    """Each agent that gets a new token: its name, its server, when it was last seen."""
    rows = list(plan.agent_rows)
    lines = [f"*Plan* `{plan.short_hash}`", f"• {m.plural(len(plan.agents), 'agent')} will get a new token"]
    for row in rows[:MAX_LISTED_AGENTS]:
        name = row.get("name") or row.get("agent") or row.get("id")
        server = row.get("server") or row.get("server_name") or row.get("host") or "?"
        seen = row.get("last_seen") or "never"
        lines.append(
            f"      {m.esc(m.fit(str(name), 80))} on {m.esc(m.fit(str(server), 80))}"
            f" · last seen {m.esc(m.fit(str(seen), 40))}"
        )
    if len(rows) > MAX_LISTED_AGENTS:
        lines.append(f"      … and {len(rows) - MAX_LISTED_AGENTS} more")
    if not rows and plan.agents:
        lines.append(f"      {m.some_names(plan.agents, MAX_LISTED_AGENTS)}")
    return "\n".join([*lines, *blocks.plan_tail(plan)])


def stopped(request: RotationRequest) -> tuple[str, str]:
    """The card's words when some agents were not rotated, or not proven."""
    if Ending.of(request.outcome).code == "agent_unverified":
        return ":grey_question:", "finished, not verified"
    return ":warning:", "finished with failures"


def status_detail(request: RotationRequest) -> str:
    agents = "all agents" if request.all_agents else m.plural(len(request.agents), "agent")
    return f" ({agents})"


def attach(app: App, listener: Listener) -> None:
    app.command("/rotate-agent")(listener)


OPERATION = Operation(
    name=OP,
    commands=(COMMAND,),
    help_lines=HELP_LINES,
    parse=parse,
    attach=attach,
    title="Agent token rotation",
    icon=":robot_face:",
    target=target,
    takes_agents=True,
    modal_label="Agent tokens",
    plan_fields=plan_fields,
    run_fields=run_fields,
    plan_lines=plan_lines,
    summary_blocks=run_summary.summary_blocks,
    summary_text=run_summary.summary_text,
    stopped=stopped,
    status_detail=status_detail,
)
