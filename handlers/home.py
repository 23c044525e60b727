"""The App Home control room, the "Request a rotation" modal, and key-age reminders.

Pure Block Kit builders (data in, dict out) and the listeners: ``app_home_opened``
publishes the viewer's Home tab; the "Request a rotation" button (on the Home tab and
on a reminder) opens the modal; submitting it creates the request exactly as the
slash command does (``commands.open_request``). The bot side (``bot.home_publisher``) asks
the engines for their ``status`` and publishes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import Ack, App

from handlers import blocks, cards, ops
from handlers import messages as m
from handlers.access import NO_CHANNEL, AccessPolicy, Directory
from handlers.commands import PlanningNow, open_request, request_refusal
from handlers.errors import UserFacingError
from handlers.lanes import Lane
from handlers.parsing import MAX_REASON, MIN_REASON, Parsed, agent_names_text, is_agent_name, take_agent_names
from handlers.ports import HandlerDeps
from handlers.rotation_request import Person, RotationRequest

log = logging.getLogger(__name__)

REQUEST_ROTATION_ACTION = "open_rotation_request"
REQUEST_MODAL = "rotation_request_modal"
REQUEST_REFUSED_MODAL = "rotation_request_refused"
PANEL_BLOCK, PANEL_INPUT = "request_panel", "panel"
KIND_BLOCK, KIND_INPUT = "request_kind", "kind"
AGENTS_BLOCK, AGENTS_INPUT = "request_agents", "agents"
REASON_BLOCK, REASON_INPUT = "request_reason", "reason"
MAX_RUNS_SHOWN = 5
MAX_AGENTS_SHOWN = 10
DAY = 86400.0


@dataclass(frozen=True)
class PanelStatus:
    """What the engine's ``status`` says of one panel (``error`` when it could not say)."""

    panel: str
    key_rotated_at: float | None = None
    agents: tuple[tuple[str, float | None], ...] = ()
    agents_listed: bool = False
    runs: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    unfinished: tuple[str, ...] = ()
    """The engine's one answer to "is anything unfinished?" (its ``verdict``), as lines."""

    @classmethod
    def from_engine(cls, panel: str, result: dict[str, Any]) -> PanelStatus:
        ages = result.get("secret_ages") or {}
        key_at = ages.get("key_rotated_at")
        agents = tuple(
            (str(a["agent"]), _number(a.get("rotated_at")))
            for a in ages.get("agents") or ()
            if isinstance(a, dict) and a.get("agent")
        )
        runs = tuple(r for r in result.get("runs") or () if isinstance(r, dict))
        return cls(
            panel=panel,
            key_rotated_at=float(key_at) if isinstance(key_at, int | float) else None,
            agents=agents,
            agents_listed=ages.get("agents_listed") is True,
            runs=runs,
            unfinished=verdict_lines(result.get("verdict")),
        )

    def secrets(self) -> list[tuple[str, str, float | None]]:
        """(secret id, label, rotated at) of the key and of each agent token the engine knows."""
        out: list[tuple[str, str, float | None]] = [("key", "encryption key", self.key_rotated_at)]
        out += [(f"agent:{name}", f"agent {name}'s token", at) for name, at in self.agents]
        return out


def verdict_lines(verdict: Any) -> tuple[str, ...]:
    """The engine's ``status`` verdict as the CLI says it: RUNNING (do not run recover), or
    each UNFINISHED item with the command to run; nothing when nothing is unfinished."""
    if not isinstance(verdict, dict):
        return ()
    running = verdict.get("running")
    if verdict.get("state") == "running" and isinstance(running, dict):
        since = _number(running.get("since"))
        return (
            f":arrows_counterclockwise: Running: {m.esc(running.get('op') or 'an engine run')} "
            f"(pid {m.esc(running.get('pid'))}), step {m.esc(running.get('step') or 'not known yet')}"
            + (f", since {m.clock_time(since)}" if since else "")
            + ". Let it finish; do not run recover.",
        )
    if verdict.get("state") != "unfinished":
        return ()
    return tuple(
        f":sos: Unfinished {m.esc(item.get('what'))}"
        + (f" `{m.esc(item['rotation_id'])}`" if item.get("rotation_id") else "")
        + f": stopped at {m.esc(item.get('stopped_at'))}. On the panel host run `{m.esc(item.get('command'))}`"
        for item in verdict.get("unfinished") or ()
        if isinstance(item, dict)
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Prefill:
    """What a reminder's button puts in the modal."""

    panel: str | None = None
    op: str | None = None
    agents: tuple[str, ...] = ()
    reason: str = ""

    def to_value(self) -> str:
        return json.dumps(
            {"panel": self.panel, "op": self.op, "agents": list(self.agents), "reason": self.reason},
            separators=(",", ":"),
        )

    @classmethod
    def from_value(cls, value: str) -> Prefill:
        try:
            data = json.loads(value) if value else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        return cls(
            panel=str(data["panel"]) if data.get("panel") else None,
            op=str(data["op"]) if data.get("op") in ops.modal_kinds() else None,
            agents=tuple(str(a) for a in data.get("agents") or () if is_agent_name(str(a))),
            reason=str(data.get("reason") or "")[:MAX_REASON],
        )


# --- ages ---------------------------------------------------------------------------------


def age_text(rotated_at: float | None, now: float) -> str:
    if rotated_at is None:
        return "unknown (no rotation on record)"
    days = max(0.0, now - rotated_at) / DAY
    if days < 1:
        return "rotated today"
    return f"{int(days):,} day{'s' if int(days) != 1 else ''}"


def is_overdue(rotated_at: float | None, now: float, max_age_s: float) -> bool:
    """Only a known age can pass the limit: an unknown one is shown, never guessed."""
    return rotated_at is not None and now - rotated_at > max_age_s


# --- the Home tab -------------------------------------------------------------------------


def _button(text: str, prefill: Prefill | None = None, primary: bool = False) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": REQUEST_ROTATION_ACTION,
        "text": {"type": "plain_text", "text": text},
        "value": (prefill or Prefill()).to_value(),
    }
    if primary:
        button["style"] = "primary"
    return button


def _run_line(run: dict[str, Any]) -> str:
    ok = run.get("ok")
    outcome = "ok" if ok else f"failed ({m.esc(run.get('code') or 'error')})"
    if not ok and run.get("rolled_back"):
        outcome += ", rolled back"
    ts = run.get("ts")
    when = (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(ts) / 1000))
        if isinstance(ts, int | float)
        else "?"
    )
    who = f" · by <@{m.esc(run['requested_by'])}>" if run.get("requested_by") else ""
    return f"`{m.esc(run.get('rotation_id', '?'))}` {m.esc(run.get('op', '?'))}: {outcome} · {when}{who}"


def panel_blocks(
    status: PanelStatus,
    pending: Sequence[RotationRequest],
    *,
    now: float,
    max_age_s: float,
    may_decide: Callable[[RotationRequest], bool],
    may_request: bool = True,
) -> list[dict[str, Any]]:
    """One panel's part of the Home tab (its request button only for those who may request)."""
    max_days = f"{max_age_s / DAY:g}"
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": m.fit(f"Panel {status.panel}", 150)}}
    ]
    if status.error:
        out.append(blocks._section(f":warning: The engine did not answer: {m.esc(status.error)}"))
    else:
        lines = list(status.unfinished)
        known = [(label, at) for _, label, at in status.secrets() if at is not None or label == "encryption key"]
        for label, at in known[: MAX_AGENTS_SHOWN + 1]:
            mark = ":warning:" if is_overdue(at, now, max_age_s) else ":key:"
            late = f" · older than {max_days} days: rotate it" if is_overdue(at, now, max_age_s) else ""
            lines.append(f"{mark} {m.esc(label[:1].upper() + label[1:])}: {age_text(at, now)}{late}")
        if len(known) > MAX_AGENTS_SHOWN + 1:
            lines.append(f"… and {len(known) - MAX_AGENTS_SHOWN - 1} more agents")
        never = [name for name, at in status.agents if at is None]
        if never:
            more = f" and {len(never) - 20} more" if len(never) > 20 else ""
            shown = ", ".join(m.esc(n) for n in never[:20]) + more
            lines.append(f":grey_question: Agent tokens never rotated here, age unknown: {shown}")
        if not status.agents_listed:
            lines.append("The panel's agents could not be listed: other agent tokens' ages are unknown")
        out += blocks._sections("\n".join(lines), most=2)
    for request in pending[:5]:
        touches = ops.panels_of(request)
        several = f" · {len(touches)} panels" if len(touches) > 1 else ""
        out.append(
            blocks._section(
                f":hourglass: Pending `{m.esc(request.id)}` {m.esc(request.op)}{several} "
                f"by {request.requester.mention} · \"{m.esc(request.reason)}\""
            )
        )
        if may_decide(request):
            # unique in the view: a fleet's buttons are under each of its panels
            block_id = f"decide-{request.id}" + (f"-{status.panel}" if several else "")
            out.append({**blocks._buttons(request), "block_id": block_id[:255]})
    finished = [r for r in status.runs if r.get("event") == "finished"][-MAX_RUNS_SHOWN:]
    if finished:
        out.append(blocks._context("*Last runs*\n" + "\n".join(_run_line(r) for r in finished[::-1])))
    elif not status.error:
        out.append(blocks._context("No runs on record yet."))
    if may_request:
        out.append(
            {
                "type": "actions",
                "block_id": f"request-{status.panel}",
                "elements": [_button(f"Request a rotation of {status.panel}"[:75], Prefill(panel=status.panel))],
            }
        )
    out.append({"type": "divider"})
    return out


def key_age_order(status: PanelStatus) -> tuple[bool, float, str]:
    """Oldest key first: a key never rotated here (age unknown) before any known age."""
    known = status.key_rotated_at is not None
    return known, status.key_rotated_at or 0.0, status.panel


def _nobody(request: RotationRequest) -> bool:
    return False


def home_view(
    statuses: Sequence[PanelStatus],
    pending: Sequence[RotationRequest],
    *,
    now: float,
    max_age_s: Callable[[str], float],
    may_decide: Callable[[RotationRequest], bool],
    may_request: bool = True,
    barred: str | None = None,
) -> dict[str, Any]:
    """The whole Home tab, panels by key age, oldest first (at most 100 blocks: panels past
    that are summarised). ``barred``: why the viewer may not act (``ops.barred``), said
    where the request button would be; they get no button then."""
    body: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Rotation control room"}}
    ]
    if barred:  # the same rule as a click on a button from before: no button at all
        body.append({**blocks._section(m.esc(barred)), "block_id": "barred"})
        may_request, may_decide = False, _nobody
    elif may_request:
        body.append(
            {
                "type": "actions",
                "block_id": "request",
                "elements": [_button("Request a rotation", primary=True)],
            }
        )
    body.append(blocks._context(f"Updated {m.clock_time(now)}"))
    left_out = 0
    # a request is shown under each panel it touches: a fleet's under every one of its panels
    touched = [(r, frozenset(ops.panels_of(r))) for r in pending]
    for status in sorted(statuses, key=key_age_order):
        part = panel_blocks(
            status,
            [r for r, panels in touched if status.panel in panels],
            now=now,
            max_age_s=max_age_s(status.panel),
            may_decide=may_decide,
            may_request=may_request,
        )
        if len(body) + len(part) > 98:
            left_out += 1
            continue
        body += part
    if left_out:
        body.append(blocks._context(f"{left_out} more panels do not fit here: use `/rotate-status`."))
    return {"type": "home", "blocks": body}


def home_refusal(policy: AccessPolicy, directory: Directory, person: Person) -> str | None:
    """Why ``person``'s Home tab shows no panel and no request (None: it shows them).

    The Home tab is in no channel, so the rule is checked with ``NO_CHANNEL``: with
    ``channels`` set, only their members see what ``/rotate-status`` would show them."""
    if policy.may_see(person, directory, NO_CHANNEL):
        return None
    return m.not_allowed(
        policy.requester_mentions,
        policy.approver_mentions,
        policy.channels,
        policy.in_scope(person, directory, NO_CHANNEL),
    )


def not_allowed_view(text: str) -> dict[str, Any]:
    return {
        "type": "home",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Rotation control room"}},
            blocks._section(text),
        ],
    }


def refusal_modal(text: str) -> dict[str, Any]:
    """What the "Request a rotation" button opens for someone who may not request."""
    return {
        "type": "modal",
        "callback_id": REQUEST_REFUSED_MODAL,
        "title": {"type": "plain_text", "text": "Request a rotation"},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": [blocks._section(text)],
    }


# --- the modal ----------------------------------------------------------------------------


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text[:75]}, "value": value}


def _input(block_id: str, label: str, element: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": label},
        "element": element,
    }


def request_modal(panels: Sequence[str], prefill: Prefill) -> dict[str, Any]:
    panel_select: dict[str, Any] = {
        "type": "static_select",
        "action_id": PANEL_INPUT,
        "options": [_option(p, p) for p in panels[:100]],
    }
    if prefill.panel in panels:
        panel_select["initial_option"] = _option(prefill.panel or "", prefill.panel or "")
    kinds = ops.modal_kinds()
    kind: dict[str, Any] = {
        "type": "static_select",
        "action_id": KIND_INPUT,
        "options": [_option(k, t) for k, t in kinds.items()],
        "initial_option": _option(prefill.op or "rotate-key", kinds[prefill.op or "rotate-key"]),
    }
    agents: dict[str, Any] = {"type": "plain_text_input", "action_id": AGENTS_INPUT, "max_length": 2000}
    if prefill.agents:
        agents["initial_value"] = agent_names_text(prefill.agents)
    reason: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": REASON_INPUT,
        "multiline": True,
        "max_length": MAX_REASON,
    }
    if prefill.reason:
        reason["initial_value"] = prefill.reason
    return {
        "type": "modal",
        "callback_id": REQUEST_MODAL,
        "title": {"type": "plain_text", "text": "Request a rotation"},
        "submit": {"type": "plain_text", "text": "Request"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _input(PANEL_BLOCK, "Panel", panel_select),
            _input(KIND_BLOCK, "What to rotate", kind),
            {**_input(AGENTS_BLOCK, "Agents (comma separated; empty: all)", agents), "optional": True},
            _input(REASON_BLOCK, "Reason", reason),
        ],
    }


def parse_submission(values: dict[str, Any], panels: Sequence[str]) -> Parsed | dict[str, str]:
    """The modal's state -> ``Parsed``, or Slack's per-block errors."""

    def read(block: str, action: str) -> str:
        state = (values.get(block) or {}).get(action) or {}
        selected = state.get("selected_option") or {}
        return str(selected.get("value") or state.get("value") or "").strip()

    errors: dict[str, str] = {}
    panel, op = read(PANEL_BLOCK, PANEL_INPUT), read(KIND_BLOCK, KIND_INPUT)
    reason, agents_text = read(REASON_BLOCK, REASON_INPUT), read(AGENTS_BLOCK, AGENTS_INPUT)
    if panel not in panels:
        errors[PANEL_BLOCK] = "Pick one of the panels."
    if op not in ops.modal_kinds():
        errors[KIND_BLOCK] = "Pick what to rotate."
    if len(reason) < MIN_REASON:
        errors[REASON_BLOCK] = "Say why, e.g. \"key older than a year\"."
    elif len(reason) > MAX_REASON:
        errors[REASON_BLOCK] = m.reason_too_long(MAX_REASON)
    taken = take_agent_names(agents_text) if agents_text else ((), "")
    names = tuple(dict.fromkeys(taken[0])) if taken else ()
    takes_agents = op in ops.modal_kinds() and ops.get(op).takes_agents
    if takes_agents and (taken is None or taken[1].strip()):
        errors[AGENTS_BLOCK] = "Separate the names with commas; put a name with a space, a comma or a quote in quotes."
    if errors:
        return errors
    if not takes_agents:
        return Parsed(op=op, panel=panel, reason=reason)
    return Parsed(op=op, panel=panel, reason=reason, agents=names, all_agents=not names)


# --- reminders ----------------------------------------------------------------------------


def reminder_message(
    panel: str, secret: str, label: str, rotated_at: float, now: float, max_age_s: float
) -> blocks.Message:
    days = int((now - rotated_at) / DAY)
    text = (
        f":alarm_clock: {label.capitalize()} of panel {panel} was last rotated {days:,} days ago, "
        f"more than the {max_age_s / DAY:g} days allowed. The rotator never rotates by itself: "
        "request a rotation when it suits you."
    )
    agent = secret.removeprefix("agent:") if secret.startswith("agent:") else None
    prefill = Prefill(
        panel=panel,
        op="rotate-agent" if agent else "rotate-key",
        agents=(agent,) if agent else (),
        reason=f"{label} older than {max_age_s / DAY:g} days (reminder)",
    )
    return {
        "text": m.fit(m.esc(text), blocks.PREVIEW_LIMIT),
        "blocks": [
            blocks._section(m.esc(text)),
            {
                "type": "actions",
                "block_id": "reminder",
                "elements": [_button("Request rotation", prefill, primary=True)],
            },
        ],
    }


# --- listeners ----------------------------------------------------------------------------


@dataclass
class HomePorts:
    """What the bot gives the Home listeners: publishing a person's Home tab, and the
    channel where requests made from Slack's Home tab or a reminder are posted."""

    publish: Callable[[Person], None]
    channel: Callable[[], str | None]
    planning: PlanningNow = field(default_factory=PlanningNow)


def register(app: App, deps: HandlerDeps, ports: HomePorts) -> None:
    client = deps.client

    @app.event("app_home_opened")
    def home_opened(body: dict[str, Any], event: dict[str, Any], ack: Ack) -> None:
        ack()
        if event.get("tab", "home") != "home":
            return
        person = Person(team_id=str(body.get("team_id", "")), user_id=str(event.get("user", "")))
        # building the tab asks every engine for its status: the engine lane, not the clicks'
        deps.after_ack(body, lambda: ports.publish(person), lane=Lane.PLAN)

    def open_request_modal(body: dict[str, Any], ack: Ack) -> None:
        ack()
        actions = body.get("actions") or [{}]
        prefill = Prefill.from_value(str(actions[0].get("value") or ""))
        user = body.get("user") or {}
        person = Person(team_id=str(user.get("team_id", "")), user_id=str(user.get("id", "")))

        def open_modal() -> None:
            # a button outlives the right to use it (a Home tab published earlier, a reminder)
            try:
                refusal = request_refusal(deps, person, NO_CHANNEL)
            except UserFacingError as exc:
                refusal = exc.message
            view = refusal_modal(refusal) if refusal else request_modal(list(deps.panels), prefill)
            client.views_open(trigger_id=body["trigger_id"], view=view)

        deps.after_ack(body, open_modal, lane=Lane.MODAL)

    app.action(REQUEST_ROTATION_ACTION)(open_request_modal)

    def request_submitted(body: dict[str, Any], ack: Ack) -> None:
        values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
        parsed = parse_submission(values, list(deps.panels))
        channel = ports.channel()
        if isinstance(parsed, dict):
            ack(response_action="errors", errors=parsed)
            return
        if channel is None:
            ack(response_action="errors", errors={PANEL_BLOCK: m.fit(NO_ROTATIONS_CHANNEL, 150)})
            return
        user = body.get("user") or {}
        person = Person(team_id=str(user.get("team_id", "")), user_id=str(user.get("id", "")))
        # The rule again, on submission: the modal may have been opened before the person left
        # the channel or group, or the submission forged. Checked before the acknowledgement
        # (the one lookup here, usually answered by the directory's cache warmed when the
        # modal opened), because an answer in the modal is the only one an outsider can get:
        # a refusal posted in the rotations channel would not reach them.
        try:
            refusal = request_refusal(deps, person, NO_CHANNEL)
        except UserFacingError as exc:
            refusal = exc.message
        if refusal:
            ack(response_action="errors", errors={PANEL_BLOCK: m.fit(refusal, 150)})
            return
        ack()

        def create() -> None:
            with cards.reporting_errors(client, channel, person.user_id, f"{parsed.op} request"):
                open_request(deps, client, parsed, person, channel, ports.planning, NO_CHANNEL)

        deps.after_ack(body, create, lane=Lane.PLAN)

    app.view(REQUEST_MODAL)(request_submitted)


NO_ROTATIONS_CHANNEL = "No rotations channel is configured (channels in the bot's settings)."
