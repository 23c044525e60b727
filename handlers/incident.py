"""What an incident rotation (``/rotate-incident``) looks like in Slack: pure builders.

(The database password's own card and summary, ``/rotate-db-password``, live here too.)

Three messages: the card's plan (the parts in the order they run, with counts, and
what this tool can't rotate with what to do about each), the thread's checklist
(one message, updated in place as parts finish) and the closing summary (a
timeline: each part's start and end, fingerprints, who asked and approved, and
what is left for a human). Data in, dict out; no clock, no Slack call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from handlers import messages as m
from handlers.plan import PlanView
from handlers.ports import RotationRequest, State

OP = "rotate-incident"
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


def _part(parts: Iterable[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((p for p in parts if p.get("part") == name), {})


def manual_lines(manual: Iterable[dict[str, Any]]) -> list[str]:
    """``PANEL_LICENSE_KEY``: what to do; the other secret-looking keys: their issuer."""
    items = list(manual)
    lines = [f"• `{m.esc(i.get('name'))}`: {m.esc(i.get('action'))}" for i in items[:MAX_MANUAL]]
    if len(items) > MAX_MANUAL:
        lines.append(f"• … and {len(items) - MAX_MANUAL} more keys: rotate at their issuers")
    return lines


def support_message(manual: Iterable[dict[str, Any]]) -> str:
    licence = next((i for i in manual if i.get("message")), None)
    return str(licence["message"]) if licence else ""


def plan_lines(plan: PlanView) -> str:
    """The card's plan: what will be rotated, in order, and what must be rotated elsewhere."""
    parts = plan.parts
    db = _part(parts, "db_password")
    lines = [f"*Plan* `{plan.short_hash}` · in this order, each verified before the next:"]
    user = m.esc(m.fit(str(db.get("db_user") or "?"), 80))
    if db.get("available", True) and "env_key" in db and not db.get("env_key"):
        lines.append(f"1. the database password of user `{user}`: set in the profile, not `.env`; skipped")
    elif db.get("available", True):
        lines.append(f"1. the database password of user `{user}` (from `.env`){_accounts_tail(db.get('accounts'))}")
    else:
        lines.append(f"1. the database password of user `{user}`: this engine can't yet, skipped")
    lines.append(
        f"2. the encryption key: {m.plural(plan.total, 'stored credential')} in "
        f"{m.plural(len(plan.columns), 'column')} · current key {m.short_fp(plan.key_fingerprint)}"
    )
    if plan.columns:
        lines.append(f"      {m.column_counts(plan.columns)}")
    agents = _part(parts, "agents")
    if agents and not agents.get("configured", True):
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


def db_plan_lines(plan: PlanView) -> str:
    """The card's plan for ``/rotate-db-password``: which login, and how it is proven."""
    user = m.esc(m.fit(plan.db_user or "?", 80))
    where = f" on {m.esc(m.fit(plan.db_host, 80))}" if plan.db_host else ""
    lines = [
        f"*Plan* `{plan.short_hash}`",
        f"• the database password of user `{user}`{where} gets a new one (`DB_PASSWORD` in `.env`)"
        f" · current password {m.short_fp(plan.password_fingerprint)}",
        "• the user sets its own password (no admin login); php-fpm restarts; the panel and a fresh "
        "login must work with the new password, and the old one must be refused on every route, or it goes back",
    ]
    if plan.db_accounts:
        accounts = ", ".join(f"`{m.esc(m.fit(a, 120))}`" for a in plan.db_accounts[:MAX_ACCOUNTS])
        lines.insert(2, f"• every account the current password opens gets the new one: {accounts}")
    for warning in plan.warnings[:10]:
        lines.append(f"• :warning: {m.esc(warning)}")
    lines.append(m.plan_host_line(plan))
    return "\n".join(lines)


def _accounts_tail(accounts: object) -> str:
    """`` · accounts `u@localhost`, `u@127.0.0.1` ``: every twin the DB password opened."""
    if not isinstance(accounts, list | tuple) or not accounts:
        return ""
    names = ", ".join(f"`{m.esc(m.fit(str(a), 100))}`" for a in accounts[:MAX_ACCOUNTS])
    more = f" and {len(accounts) - MAX_ACCOUNTS} more" if len(accounts) > MAX_ACCOUNTS else ""
    return f" · {m.plural(len(accounts), 'account')} {names}{more}"


def _db_summary_text(request: RotationRequest) -> str:
    outcome = request.outcome
    approvers = [a.approver_label for a in request.approvals if a.person]
    user = m.esc(m.fit(str(outcome.get("db_user") or request.plan.db_user or "?"), 80))
    if request.state == State.DONE:
        routes = [str(r.get("route")) for r in outcome.get("routes") or ()
                  if isinstance(r, dict) and r.get("old") == "refused"]  # fmt: skip
        everywhere = f" on {m.esc(m.fit(', '.join(routes), 300))}" if routes else ""
        head = (
            f":white_check_mark: Database password rotated on panel {m.esc(request.panel)} · user `{user}` · "
            f"{m.short_fp(outcome.get('old_fingerprint'))} → {m.short_fp(outcome.get('new_fingerprint'))}"
            f"{_accounts_tail(outcome.get('accounts'))} · the new password works, the old one is refused{everywhere}"
        )
    elif outcome.get("rolled_back") is True:
        head = (f":rotating_light: Database password rotation failed and was rolled back: the old password "
                f"of `{user}` works again{_accounts_tail(outcome.get('accounts'))}. "
                f"What failed: {m.esc(outcome.get('message') or '?')}")  # fmt: skip
    elif outcome.get("nothing_changed"):
        what = m.esc(outcome.get("message") or "?")
        head = f":no_entry_sign: Database password rotation failed before any change: {what}"
    else:
        head = (f":sos: Database password rotation failed and was NOT rolled back: run recover on "
                f"{m.esc(request.panel)}. What failed: {m.esc(outcome.get('message') or '?')}")  # fmt: skip
    took = m.duration(outcome.get("duration_ms"))
    return "\n".join([
        head,
        f"Requested by {request.requester.mention} · approved by {m.people(approvers)} · "
        f"reason {m.quote(request.reason)}",
        f"Rotation `{m.esc(request.id)}`" + (f" · {took}" if took else "") + m.audit_anchor(outcome),
    ])  # fmt: skip


class Checklist:
    """The parts' states as the engine's ``part`` events report them; one thread message."""

    def __init__(self, plan: PlanView) -> None:
        self.states: dict[str, str] = dict.fromkeys(PARTS, "waiting")
        self.details: dict[str, str] = {}
        db = _part(plan.parts, "db_password")
        self.db_user = str(db.get("db_user") or "")

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


def timeline_lines(outcome: dict[str, Any]) -> list[str]:
    """One line per part: icon, title, start → end (UTC), fingerprints or what went wrong."""
    lines = []
    for part in outcome.get("parts") or []:
        state = str(part.get("state") or "not_started")
        title = TITLES.get(str(part.get("part")), str(part.get("part")))
        line = f"{ICONS.get(state, '•')} {title}: {WORDS.get(state, m.esc(state))}"
        if part.get("started_at"):
            line += f" · {_hms(part.get('started_at'))} → {_hms(part.get('finished_at'))} UTC"
        if part.get("new_fingerprint") and state == "done":
            line += f" · {m.short_fp(part.get('old_fingerprint'))} → {m.short_fp(part['new_fingerprint'])}"
        if part.get("db_user"):
            line += f" · user `{m.esc(m.fit(str(part['db_user']), 80))}`" + _accounts_tail(part.get("accounts"))
        if part.get("part") == "agents" and state == "done":
            line += f" · {part.get('rotated', 0)} of {part.get('total', 0)} rotated"
        why = part.get("error") or (part.get("detail") if state == "skipped" else "")
        if why:
            line += f" · {m.esc(m.fit(str(why), 300))}"
        lines.append(line)
    return lines


def left_lines(outcome: dict[str, Any], panel: str) -> list[str]:
    """What a person must still do: unfinished parts, then the manual list."""
    lines = []
    for part in outcome.get("left") or []:
        title = TITLES.get(str(part.get("part")), str(part.get("part")))
        if part.get("state") == "needs_recover":
            lines.append(f"• {title}: run recover on {m.esc(panel)}, then request again")
        else:
            lines.append(f"• {title}: not rotated; fix the cause above, then `/rotate-incident` again")
    return lines + manual_lines(outcome.get("manual") or [])


def summary_text(request: RotationRequest) -> str:
    if request.op == "rotate-db-password":
        return _db_summary_text(request)
    outcome = request.outcome
    approvers = [a.approver_label for a in request.approvals if a.person]
    if request.state == State.DONE:
        head = f":white_check_mark: Incident rotation done on panel {m.esc(request.panel)}"
    elif outcome.get("parts"):
        head = f":warning: Incident rotation stopped: {m.esc(outcome.get('message') or 'see the thread')}"
    else:
        head = f":no_entry_sign: Incident rotation failed: {m.esc(outcome.get('message') or 'see the thread')}"
    lines = [
        head,
        f"Requested by {request.requester.mention} · approved by {m.people(approvers)} · "
        f"reason {m.quote(request.reason)}",
        "*Timeline*",
        *timeline_lines(outcome),
        "*Left for a human*",
        *left_lines(outcome, request.panel),
    ]
    took = m.duration(outcome.get("duration_ms"))
    lines.append(f"Rotation `{m.esc(request.id)}`" + (f" · {took}" if took else "") + m.audit_anchor(outcome))
    return "\n".join(lines)


def summary_blocks(request: RotationRequest, *, on_card: bool = False) -> list[dict[str, Any]]:
    text = summary_text(request)
    chunks: list[str] = []
    for line in text.split("\n"):
        if chunks and len(chunks[-1]) + 1 + len(line) <= SECTION_LIMIT:
            chunks[-1] += "\n" + line
        else:
            chunks.append(m.fit(line, SECTION_LIMIT))
    out = [_section(c) for c in chunks[:6]]
    message = support_message(request.outcome.get("manual") or request.plan.manual)
    if message and not on_card and request.op == OP:
        out.append(_section(f"*Message for MyOsicam support* (copy it):\n>{m.esc(m.fit(message, 2000))}"))
    return out


def summary_message(request: RotationRequest) -> dict[str, Any]:
    return {"text": m.fit(summary_text(request), PREVIEW_LIMIT), "blocks": summary_blocks(request)}
