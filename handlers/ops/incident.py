"""``/rotate-incident``: after a leaked ``.env``, rotate the DB password, the key and the
agent tokens, in that order, each verified before the next.

Everything the Slack side knows of an incident rotation: its command, its plan and run
requests (the run binds the key, the exact agents and the DB password), and three
messages: the card's plan (the parts in the order they run, with counts, and
what this tool can't rotate with what to do about each), the thread's checklist
(one message, updated in place as parts finish) and the closing summary (a
timeline: each part's start and end, fingerprints, who asked and approved, and
what is left for a human). Data in, dict out; no clock, no Slack call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slack_bolt import App

from engine.protocol.outcome import ManualItem, Outcome, PartResult
from handlers import blocks
from handlers import messages as m
from handlers.ending import Ending
from handlers.ops import Listener, Operation
from handlers.parsing import Parsed, parse_panel_reason
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest, State

OP = "rotate-incident"
COMMAND = "/rotate-incident"
#: Agent names a rotate-incident request lists; more would not fit the engine's 16 KiB request
#: line, and the plan hash binds the exact list anyway (the engine then says plan_mismatch).
INLINE_AGENTS_MAX_CHARS = 8000
HELP_LINES = (
    m.esc(
        "• `/rotate-incident [panel] <reason>`: after a leaked `.env`, rotate the database "
        "password, the key and every agent token, in that order, each verified before the "
        "next; the card lists what a person must rotate elsewhere (`PANEL_LICENSE_KEY`, "
        "other keys at their issuers)."
    ),
)
PARTS: tuple[str, ...] = ("db_password", "key", "agents")
TITLES = {"db_password": "database password", "key": "encryption key", "agents": "agent tokens"}
MAX_AGENT_NAMES = 10
MAX_MANUAL = 15
MAX_ACCOUNTS = 8
SECTION_LIMIT = 3000
PREVIEW_LIMIT = 4000
ICONS = {
    "waiting": ":white_square:",
    "not_started": ":white_square:",
    "running": ":arrows_counterclockwise:",
    "done": ":white_check_mark:",
    "skipped": ":heavy_minus_sign:",
    "rolled_back": ":rotating_light:",
    "failed": ":x:",
    "needs_recover": ":sos:",
}
WORDS = {
    "waiting": "waiting",
    "not_started": "not started, untouched",
    "running": "running…",
    "done": "done, verified",
    "skipped": "skipped",
    "rolled_back": "failed, rolled back",
    "failed": "failed",
    "needs_recover": "failed, NOT rolled back: run recover",
}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": m.fit(text, SECTION_LIMIT)}}


def _part(parts: Iterable[Mapping[str, Any]], name: str) -> PartResult | None:
    """The plan's part ``name``, typed (None: the plan has no such part)."""
    return next((p for p in (PartResult(dict(raw)) for raw in parts) if p.part == name), None)


Manual = Iterable[ManualItem | Mapping[str, Any]]


def manual_lines(manual: Manual) -> list[str]:
    """``PANEL_LICENSE_KEY``: what to do; the other secret-looking keys: their issuer."""
    items = [ManualItem.read(i) for i in manual]
    lines = [f"• `{m.esc(i.name)}`: {m.esc(i.action)}" for i in items[:MAX_MANUAL]]
    if len(items) > MAX_MANUAL:
        lines.append(f"• … and {len(items) - MAX_MANUAL} more keys: rotate at their issuers")
    return lines


def support_message(manual: Manual) -> str:
    licence = next((i for i in map(ManualItem.read, manual) if i.message), None)
    return str(licence.message) if licence else ""


def plan_lines(plan: PlanView) -> str:
    """The card's plan: what will be rotated, in order, and what must be rotated elsewhere."""
    parts = plan.parts
    db = _part(parts, "db_password") or PartResult({})
    lines = [f"*Plan* `{plan.short_hash}` · in this order, each verified before the next:"]
    user = m.esc(m.fit(db.db_user or "?", 80))
    if db.available and db.password_in_env is False:
        lines.append(f"1. the database password of user `{user}`: set in the profile, not `.env`; skipped")
    elif db.available:
        lines.append(f"1. the database password of user `{user}` (from `.env`){accounts_tail(db.accounts)}")
    else:
        lines.append(f"1. the database password of user `{user}`: this engine can't yet, skipped")
    lines.append(
        f"2. the encryption key: {m.plural(plan.total, 'stored credential')} in "
        f"{m.plural(len(plan.columns), 'column')} · current key {m.short_fp(plan.key_fingerprint)}"
    )
    if plan.columns:
        lines.append(f"      {m.column_counts(plan.columns)}")
    agents = _part(parts, "agents")
    if agents and not agents.configured:
        lines.append("3. agent tokens: no `[agents]` section in the profile, skipped")
    else:
        names = m.some_names(plan.agents, MAX_AGENT_NAMES) if plan.agents else "none on this panel"
        lines.append(f"3. {m.plural(len(plan.agents), 'agent token')}: {names}")
    for warning in plan.warnings[:10]:
        lines.append(f"• :warning: {m.esc(warning)}")
    lines.append("*This tool can't rotate these; a person must:*")
    lines += manual_lines(plan.manual)
    lines.append(m.plan_host_line(plan))
    return "\n".join(lines)


def accounts_tail(accounts: Sequence[str]) -> str:
    """`` · accounts `u@localhost`, `u@127.0.0.1` ``: every twin the DB password opened."""
    if not accounts:
        return ""
    names = ", ".join(f"`{m.esc(m.fit(str(a), 100))}`" for a in accounts[:MAX_ACCOUNTS])
    more = f" and {len(accounts) - MAX_ACCOUNTS} more" if len(accounts) > MAX_ACCOUNTS else ""
    return f" · {m.plural(len(accounts), 'account')} {names}{more}"


class Checklist:
    """The parts' states as the engine's ``part`` events report them; one thread message."""

    def __init__(self, plan: PlanView) -> None:
        self.states: dict[str, str] = dict.fromkeys(PARTS, "waiting")
        self.details: dict[str, str] = {}
        db = _part(plan.parts, "db_password")
        self.db_user = db.db_user or "" if db else ""

    def update(self, event: dict[str, Any]) -> bool:
        """Take one engine event; True when it changed the checklist."""
        part = event.get("part")
        if event.get("name") != "part" or part not in self.states:
            return False
        state = {"started": "running", "ok": "done", "skipped": "skipped", "failed": "failed"}.get(
            str(event.get("state")), "running"
        )
        self.states[str(part)] = state
        self.details[str(part)] = str(event.get("detail") or "")
        if state == "failed":
            for later in PARTS[PARTS.index(str(part)) + 1 :]:
                self.states[later] = "not_started"
        return True

    def message(self, panel: str) -> dict[str, Any]:
        lines = [f"*Incident checklist* · panel {m.esc(panel)}"]
        for part in PARTS:
            state = self.states[part]
            detail = self.details.get(part) if state in ("done", "skipped", "failed") else ""
            tail = f" · {m.esc(m.fit(detail, 300))}" if detail else ""
            lines.append(f"{ICONS[state]} {TITLES[part]}: {WORDS[state]}{tail}")
        text = "\n".join(lines)
        return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": [_section(text)]}


def _hms(ms: object) -> str:
    if not isinstance(ms, int | float):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def timeline_lines(outcome: Ending | Mapping[str, Any]) -> list[str]:
    """One line per part: icon, title, start → end (UTC), fingerprints or what went wrong."""
    lines = []
    for part in Ending.read(outcome).parts:
        state = part.state or "not_started"
        title = TITLES.get(part.part, part.part)
        line = f"{ICONS.get(state, '•')} {title}: {WORDS.get(state, m.esc(state))}"
        if part.started_at:
            line += f" · {_hms(part.started_at)} → {_hms(part.finished_at)} UTC"
        if part.new_fingerprint and state == "done":
            line += f" · {m.short_fp(part.old_fingerprint)} → {m.short_fp(part.new_fingerprint)}"
        if part.db_user:
            line += f" · user `{m.esc(m.fit(part.db_user, 80))}`" + accounts_tail(part.accounts)
        if part.part == "agents" and state == "done":
            line += f" · {part.rotated or 0} of {part.total or 0} rotated"
        why = part.error or (part.detail if state == "skipped" else "")
        if why:
            line += f" · {m.esc(m.fit(str(why), 300))}"
        lines.append(line)
    return lines


def left_lines(outcome: Ending | Mapping[str, Any], panel: str) -> list[str]:
    """What a person must still do: unfinished parts, then the manual list."""
    ending = Ending.read(outcome)
    lines = []
    for part in ending.left:
        title = TITLES.get(part.part, part.part)
        if part.state == "needs_recover":
            lines.append(f"• {title}: run recover on {m.esc(panel)}, then request again")
        else:
            lines.append(f"• {title}: not rotated; fix the cause above, then `/rotate-incident` again")
    return lines + manual_lines(ending.manual)


def summary_text(request: RotationRequest) -> str:
    """The timeline of the parts, then what is left for a human."""
    ending = Ending.of(request.outcome)
    approvers = [a.approver_label for a in request.approvals if a.person]
    if request.state == State.DONE:
        head = f":white_check_mark: Incident rotation done on panel {m.esc(request.panel)}"
    elif ending.parts:
        head = f":warning: Incident rotation stopped: {m.esc(ending.message or 'see the thread')}"
    else:
        head = f":no_entry_sign: Incident rotation failed: {m.esc(ending.message or 'see the thread')}"
    lines = [
        head,
        f"Requested by {request.requester.mention} · approved by {m.people(approvers)} · "
        f"reason {m.quote(request.reason)}",
        "*Timeline*",
        *timeline_lines(ending),
        "*Left for a human*",
        *left_lines(ending, request.panel),
    ]
    took = m.duration(ending.duration_ms)
    lines.append(f"Rotation `{m.esc(request.id)}`" + (f" · {took}" if took else "") + m.audit_anchor(ending))
    return "\n".join(lines)


def text_sections(text: str) -> list[dict[str, Any]]:
    """A summary's text as at most six sections of whole lines."""
    chunks: list[str] = []
    for line in text.split("\n"):
        if chunks and len(chunks[-1]) + 1 + len(line) <= SECTION_LIMIT:
            chunks[-1] += "\n" + line
        else:
            chunks.append(m.fit(line, SECTION_LIMIT))
    return [_section(c) for c in chunks[:6]]


def summary_blocks(request: RotationRequest, *, on_card: bool = False) -> list[dict[str, Any]]:
    """The summary's sections; in the thread, the message for MyOsicam support to copy."""
    out = text_sections(summary_text(request))
    message = support_message(Ending.of(request.outcome).manual or request.plan.manual)
    if message and not on_card:
        out.append(_section(f"*Message for MyOsicam support* (copy it):\n>{m.esc(m.fit(message, 2000))}"))
    return out


def summary_message(request: RotationRequest) -> dict[str, Any]:
    return {"text": m.fit(summary_text(request), PREVIEW_LIMIT), "blocks": summary_blocks(request)}


# --- the request flow ------------------------------------------------------------------------


def parse(text: str, panels: Sequence[str]) -> Parsed | str:
    """``/rotate-incident [panel] <reason>``: everything a leaked ``.env`` exposed."""
    return parse_panel_reason(text, panels, OP)


def plan_fields(agents: Sequence[str], all_agents: bool) -> dict[str, Any]:
    return {"incident": True}


def plan_extras(result: dict[str, Any]) -> dict[str, Any]:
    """The engine names the agents the run will rotate."""
    return {"agents": tuple(sorted(str(a) for a in result.get("agents") or () if isinstance(a, str)))}


def run_fields(request: RotationRequest) -> dict[str, Any]:
    """The run binds the key and the exact agents, and the DB password by fingerprint."""
    plan = request.plan
    return {
        "key_fingerprint": plan.key_fingerprint or None,
        "agents": _inline_agents(plan.agents),
        "password_fingerprint": plan.password_fingerprint or None,
    }


def _inline_agents(agents: tuple[str, ...]) -> list[str] | None:
    return list(agents) if sum(len(a) + 3 for a in agents) <= INLINE_AGENTS_MAX_CHARS else None


def stopped(request: RotationRequest) -> tuple[str, str]:
    return ":warning:", "stopped"


def key_fingerprints(closing: dict[str, Any]) -> dict[str, str]:
    """The key part's old and new fingerprints."""
    try:
        key = next((p for p in Outcome.of(closing, OP).parts if p.part == "key"), None)
    except ValueError:  # not a closing event: no part to read
        key = None
    if key is None:
        return {}
    return {k: v for k, v in (("old_fingerprint", key.old_fingerprint), ("new_fingerprint", key.new_fingerprint)) if v}


def attach(app: App, listener: Listener) -> None:
    app.command("/rotate-incident")(listener)


OPERATION = Operation(
    name=OP,
    commands=(COMMAND,),
    help_lines=HELP_LINES,
    parse=parse,
    attach=attach,
    title="Incident rotation (DB password, key, agent tokens)",
    icon=":fire_engine:",
    target=blocks.panel_target,
    plan_fields=plan_fields,
    plan_extras=plan_extras,
    run_fields=run_fields,
    plan_lines=plan_lines,
    summary_blocks=summary_blocks,
    summary_text=summary_text,
    stopped=stopped,
    progress=Checklist,
    key_fingerprints=key_fingerprints,
)
