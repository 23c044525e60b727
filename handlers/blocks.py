"""Pure Block Kit builders: data in, dict out (``text`` fallback plus ``blocks``).

Every message reads well twice: as blocks in the channel, and as its ``text``
in a notification preview, so the fallback carries the headline, the state and
the plan hash. Builders never call Slack and never read a clock: ``now`` is an
argument.

Every message stays within Slack's limits whatever the inputs (50 agents, a
500-character reason, a 300-character panel name): long texts are split into
several sections of at most ``SECTION_LIMIT`` characters, lists name a few
items and count the rest, and the Approve confirmation stays under 300
characters. Slack refuses the whole message otherwise, and the card never
appears. Values from people, the database and the engine are escaped
(``messages.esc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handlers import messages as m
from handlers import ops
from handlers.ending import Ending
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest, State, Transition

APPROVE_ACTION = "approve_rotation"
DENY_ACTION = "deny_rotation"
DENY_MODAL = "deny_rotation_modal"
DENY_REASON_BLOCK = "deny_reason"
DENY_REASON_INPUT = "reason_input"
MAX_LISTED_AGENTS = 25
MAX_COLUMN_LINES = 20
SECTION_LIMIT = 3000  # Slack's limit for a section's text
PREVIEW_LIMIT = 4000  # a message's ``text``: Slack advises at most 4,000 characters
MAX_SECTIONS = 10  # sections one long text may take (a message holds at most 50 blocks)
FIELD_LIMIT = 2000  # Slack's limit for one field of a section
MAX_FIELDS = 10  # fields one section may hold

Message = dict[str, Any]


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": m.fit(text, SECTION_LIMIT)}}


def _sections(text: str, most: int = MAX_SECTIONS) -> list[dict[str, Any]]:
    """``text`` as sections of whole lines, each within Slack's limit, at most ``most``."""
    chunks: list[str] = []
    for line in text.split("\n"):
        line = m.fit(line, SECTION_LIMIT)
        if chunks and len(chunks[-1]) + 1 + len(line) <= SECTION_LIMIT:
            chunks[-1] += "\n" + line
        else:
            chunks.append(line)
    if len(chunks) > most:
        chunks = [*chunks[: most - 1], m.fit(chunks[most - 1], SECTION_LIMIT - 20) + "\n… (cut)"]
    return [_section(chunk) for chunk in chunks if chunk.strip()] or [_section("…")]


def _context(*texts: str) -> dict[str, Any]:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": m.fit(t, SECTION_LIMIT)} for t in texts if t],
    }


def _target(request: RotationRequest, shown: int = m.LISTED_NAMES) -> str:
    return ops.get(request.op).target(request.panel, request.agents, request.all_agents, shown)


def panel_target(panel: str, agents: Sequence[str], all_agents: bool, shown: int) -> str:
    """What a one-panel request targets: ``panel prod-eu``."""
    return f"panel {m.esc(panel)}"


def _headline(request: RotationRequest) -> str:
    return ops.get(request.op).headline(request)


def headline(request: RotationRequest) -> str:
    """``:key: Key rotation requested: panel prod-eu``; once decided or finished, the icon
    and the word say how it ended (``:rotating_light: Key rotation rolled back: …``)."""
    icon, word = _title_state(request)
    return f"{icon} {ops.get(request.op).title} {word}: {_target(request)}"


def _title_state(request: RotationRequest) -> tuple[str, str]:
    state, ending = request.state, Ending.of(request.outcome)
    operation = ops.get(request.op)
    if state == State.FAILED:
        if ending.partial:
            return operation.stopped(request)
        if ending.rolled_back is True:
            return ":rotating_light:", "rolled back"
        if ending.nothing_changed:
            return ":no_entry_sign:", "failed, nothing changed"
        if ending.rolled_back is False:
            return ":sos:", "failed, NOT rolled back"
        return ":sos:", "outcome unknown"
    if state == State.VOIDED and ending.voided_because:
        return ":warning:", "voided"
    return _TITLES.get(state, (operation.icon, "requested"))


_TITLES: dict[State, tuple[str, str]] = {
    State.APPROVED: (":arrow_forward:", "approved"),
    State.RUNNING: (":arrows_counterclockwise:", "running"),
    State.DONE: (":white_check_mark:", "done"),
    State.DENIED: (":no_entry:", "denied"),
    State.EXPIRED: (":hourglass:", "expired"),
    State.CANCELLED: (":x:", "cancelled"),
    State.VOIDED: (":warning:", "voided, plan changed"),
}


def plan_lines(plan: PlanView) -> str:
    """The plan as the card shows it: what will change, how it was read, where it runs."""
    return ops.get(plan.op).plan_lines(plan)


def plan_tail(plan: PlanView) -> list[str]:
    """The plan's last lines, for every operation: the engine's warnings, where it runs."""
    return [*(f"• :warning: {m.esc(warning)}" for warning in plan.warnings[:10]), m.plan_host_line(plan)]


def _approver_names(request: RotationRequest) -> str:
    """Each approver, marked with the second factor their approval was checked with."""
    return ", ".join(a.approver_label for a in request.approvals if a.person) or "nobody"


def status_lines(
    request: RotationRequest,
    *,
    approvers: str,
    approvals_required: int,
    now: float,
    name_requester: bool = True,
) -> list[str]:
    """The card's state in one or two lines, as SLACK-UX.md shows them.

    ``approvers``: who may approve this request; ``name_requester``: add "(not @requester)"
    (when a user group among them may hold the requester)."""
    state = request.state
    if state == State.PENDING:
        missing = max(1, approvals_required - len(request.approvals))
        lines = []
        if request.approvals:
            lines.append(
                m.partially_approved(
                    _approver_names(request), len(request.approvals), approvals_required
                )
            )
        lines.append(
            m.needs_approvals(
                missing,
                approvers,
                request.requester.mention if name_requester else "",
                request.expires_at,
                now,
            )
        )
        return lines
    approved_at = request.approvals[-1].at if request.approvals else request.created_at
    approved = m.approved_line(_approver_names(request), approved_at)
    if state == State.APPROVED:
        return [f"{approved} · starting…"]
    if state == State.RUNNING:
        return [f"{approved} · {m.running_line(request.progress)}"]
    if state == State.DONE:
        return [approved, m.done_line(Ending.of(request.outcome).duration_ms)]
    if state == State.FAILED:
        return [approved, m.failed_line(request.outcome, request.panel)]
    decision = request.decision
    who = decision.person.mention if decision and decision.person else "someone"
    at = decision.at if decision else request.expires_at
    if state == State.DENIED:
        return [m.denied_line(who, at, decision.reason if decision else "")]
    if state == State.EXPIRED:
        return [m.expired_line(at)]
    if state == State.CANCELLED:
        return [m.cancelled_line(who, at, decision.reason if decision else "")]
    if state == State.VOIDED:
        ending = Ending.of(request.outcome)
        if ending.voided_because:  # not a plan change (offboarding)
            return [f":warning: Voided: {ending.voided_because}"]
        return [approved, m.voided_line(ending.differences)]
    return [str(state)]


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": m.fit(f"*{label}*\n{value}", FIELD_LIMIT)}


def _fields(pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Label/value pairs as sections of fields (two columns), at most 10 fields a section."""
    fields = [_field(label, value) for label, value in pairs if value]
    return [
        {"type": "section", "fields": fields[i : i + MAX_FIELDS]}
        for i in range(0, len(fields), MAX_FIELDS)
    ]


def summary_blocks(request: RotationRequest, *, on_card: bool = False) -> list[dict[str, Any]]:
    """The closing summary as Block Kit: the outcome and, for a failure, the next step;
    then the facts as fields; then the rotation id and its audit anchor.

    ``on_card``: the card's own lines say who asked, why, who approved and how it ended, and
    carry the request id, so there the summary adds the next step and the facts only."""
    return ops.get(request.op).summary_blocks(request, on_card=on_card)


def summary_message(request: RotationRequest) -> Message:
    """The closing summary as its own thread reply: blocks, with the whole summary as the
    notification's text."""
    return {
        "text": m.fit(summary_text(request), PREVIEW_LIMIT),
        "blocks": summary_blocks(request),
    }


def summary_text(request: RotationRequest) -> str:
    """The closing summary, shared by the card and the final thread reply."""
    return ops.get(request.op).summary_text(request)


def request_card(
    request: RotationRequest,
    *,
    approvers: str,
    approvals_required: int,
    now: float,
    name_requester: bool = True,
) -> Message:
    """The request card: who, why, the plan, the state and, while pending, the buttons."""
    return ops.get(request.op).card(
        request,
        approvers=approvers,
        approvals_required=approvals_required,
        now=now,
        name_requester=name_requester,
    )


def one_panel_card(
    request: RotationRequest,
    *,
    approvers: str,
    approvals_required: int,
    now: float,
    name_requester: bool = True,
) -> Message:
    """The card of a one-panel request (``request_card``)."""
    status = status_lines(
        request,
        approvers=approvers,
        approvals_required=approvals_required,
        now=now,
        name_requester=name_requester,
    )
    headline = _headline(request)
    blocks: list[dict[str, Any]] = [
        _section(f"*{headline}*   `[{request.state.value}]`"),
        _section(f"Requested by {request.requester.mention} · {m.quote(request.reason)}"),
        *_sections(plan_lines(request.plan), most=5),
        *_sections("\n".join(status), most=3),
    ]
    if request.state in (State.DONE, State.FAILED):
        blocks += summary_blocks(request, on_card=True)
    if request.state == State.PENDING:
        blocks.append(_buttons(request))
    blocks.append(
        _context(f"Request `{m.esc(request.id)}` · plan hash `{m.esc(request.plan_hash[:16])}`")
    )
    text = (
        f"{headline} by {request.requester.mention} · {status[-1]} · plan {request.plan.short_hash}"
    )
    return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": blocks}


def _buttons(request: RotationRequest) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": request.id,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Approve this rotation?"},
                    "text": {
                        "type": "mrkdwn",
                        "text": m.approve_confirm(
                            request.plan.short_hash, _target(request, shown=3)
                        ),
                    },
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Back"},
                },
            },
            {
                "type": "button",
                "action_id": DENY_ACTION,
                "text": {"type": "plain_text", "text": "Deny"},
                "style": "danger",
                "value": request.id,
            },
        ],
    }


def thread_reply(text: str) -> Message:
    return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": _sections(text)}


def deny_modal(request_id: str, headline: str) -> dict[str, Any]:
    """The modal that asks why, opened by the Deny button."""
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": request_id,
        "title": {"type": "plain_text", "text": "Deny rotation"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            _section(f"{headline}\nRequest `{m.esc(request_id)}`"),
            {
                "type": "input",
                "block_id": DENY_REASON_BLOCK,
                "label": {
                    "type": "plain_text",
                    "text": "Why? The requester and the channel see this.",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": DENY_REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


def request_headline(request: RotationRequest) -> str:
    return _headline(request)


def status_report(
    active: Sequence[RotationRequest],
    recent: Sequence[RotationRequest],
    *,
    approvals_required: int,
    now: float,
) -> Message:
    """``/rotate-status``: pending and running requests, then the last finished ones."""
    lines = []
    for request in active:
        what = f"{m.esc(request.op)} {m.esc(request.panel)}{ops.get(request.op).status_detail(request)}"
        state = request.state.value.capitalize()
        row = f"*{state}*  `{m.esc(request.id)}`  {what}  by {request.requester.mention}"
        if request.state == State.PENDING:
            missing = max(1, approvals_required - len(request.approvals))
            left = m.minutes_left(request.expires_at, now)
            row += f"  {left}  needs {m.plural(missing, 'approval')}"
        else:
            row += f"  approved by {_approver_names(request)}  {m.running_line(request.progress)}"
        lines.append(row)
    if not lines:
        lines.append("No pending or running requests.")
    if recent:
        finished = ", ".join(f"`{m.esc(r.id)}` {m.esc(r.panel)} {_final_word(r)}" for r in recent)
        lines.append(f"Last {len(recent)} finished: {finished}")
    text = "\n".join(lines)
    return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": _sections(text)}


def _final_word(request: RotationRequest) -> str:
    if request.state == State.DONE:
        return "verified"
    if request.state == State.FAILED:
        return "rolled back" if Ending.of(request.outcome).rolled_back else "failed"
    return request.state.value


def history_report(request: RotationRequest, transitions: Sequence[Transition]) -> Message:
    """``/rotate-status <id>``: one request's history, oldest first."""
    lines = [f"*{_headline(request)}* `[{request.state.value}]` · `{m.esc(request.id)}`"]
    for t in transitions:
        arrow = f"{t.from_state} → {t.to_state}" if t.from_state else t.to_state
        actor = m.esc(t.actor)
        who = f" by <@{actor.split('/', 1)[1]}>" if "/" in actor else f" ({actor})"
        lines.append(f"• {m.clock_time(t.at)} {m.esc(t.event)}: {m.esc(arrow)}{who}")
    text = "\n".join(lines)
    return {"text": m.fit(text, PREVIEW_LIMIT), "blocks": _sections(text)}
