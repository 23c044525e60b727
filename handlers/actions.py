"""The card's buttons (Approve, Deny) and the deny modal.

The two-person rule lives here, in the state transition and not only in the
UI: an approval counts only from a configured approver who is not the
requester, only once per person (people compared by Slack user id: one person
may click under two team ids), only while the request is pending and not
expired, and only if the compare-and-swap on the stored request wins. A click
that loses a race re-reads and decides again, so two clicks at once can never
approve twice or start two runs.

On a panel with step-up (``handlers.step_up_modal``) a click alone does not count:
``approve`` answers ``needs_code`` and the click opens the TOTP modal; the
approval counts only from ``approve(..., step_up=APPROVED_WITH)`` after the code
was verified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from handlers import blocks, cards, ops, step_up_modal
from handlers import messages as m
from handlers.access import mention_list
from handlers.lanes import Lane
from handlers.ports import HandlerDeps, RequestStore
from handlers.rotation_request import Decision, Person, RotationRequest, State
from handlers.second_factor import StepUpCheck

log = logging.getLogger(__name__)
MAX_RACE_RETRIES = 50


@dataclass(frozen=True)
class ClickOutcome:
    """What a click did: an answer for the clicker, a request to repaint, whether to run it."""

    answer: str | None = None
    changed: RotationRequest | None = None
    start: bool = False
    #: the rules allow this person's approval, but only with a verified step-up code
    needs_code: RotationRequest | None = None


def expire_if_due(
    store: RequestStore, request: RotationRequest, now: float
) -> RotationRequest | None:
    """Expire a pending request whose time has come; returns the stored request if this call did."""
    if request.state != State.PENDING or now < request.expires_at:
        return None
    expired = request.evolve(
        state=State.EXPIRED, decision=Decision(person=None, at=request.expires_at)
    )
    return store.update(expired, expected_version=request.version, event="expired", actor="expiry")


def needs_step_up(deps: HandlerDeps, request: RotationRequest) -> bool:
    """Approving needs a second factor if any panel the request touches asks for one."""
    return deps.step_up is not None and any(map(deps.step_up.required, ops.panels_of(request)))


def approve(
    deps: HandlerDeps, request_id: str, person: Person, *, stepped_up: str = ""
) -> ClickOutcome:
    """Count ``person``'s approval on ``request_id`` if the rules allow it.

    ``stepped_up`` names the verified second factor (``step_up_modal.APPROVED_WITH``); on a
    panel that requires one, nothing counts without it."""
    approvers = deps.policy.approver_mentions
    for _ in range(MAX_RACE_RETRIES):
        request = deps.store.get(request_id)
        if request is None:
            return ClickOutcome(answer=m.unknown_request(request_id))
        if request.approved_by(person):
            return ClickOutcome(answer=m.ALREADY_APPROVED)
        if request.state != State.PENDING:
            return ClickOutcome(answer=cards.no_longer_pending(request))
        now = deps.clock()
        if now >= request.expires_at:
            expired = expire_if_due(deps.store, request, now)
            if expired is None:
                continue
            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)
        if person == request.requester:
            others = deps.policy.approvers_for(person)[0]
            return ClickOutcome(answer=m.self_approval(others))
        if not deps.policy.may_approve(person, deps.directory):
            return ClickOutcome(answer=m.not_an_approver(approvers))
        if refusal := ops.refusal(deps, person, "approve"):
            return ClickOutcome(answer=refusal)
        detail: dict[str, Any] = {}
        if needs_step_up(deps, request):
            if stepped_up != step_up_modal.APPROVED_WITH:
                return ClickOutcome(needs_code=request)
            detail["approved_with"] = stepped_up
        factor = str(detail.get("approved_with", ""))
        approvals = (*request.approvals, Decision(person=person, at=now, factor=factor))
        complete = len(approvals) >= deps.policy.approvals_required
        stored = deps.store.update(
            request.evolve(
                approvals=approvals, state=State.APPROVED if complete else State.PENDING
            ),
            expected_version=request.version,
            event="approved" if complete else "approval_added",
            actor=person.key,
            detail={
                "approvals": len(approvals),
                "required": deps.policy.approvals_required,
                **detail,
            },
        )
        if stored is None:
            continue
        if complete:
            return ClickOutcome(changed=stored, start=True)
        missing = deps.policy.approvals_required - len(approvals)
        return ClickOutcome(answer=m.approval_recorded(missing, approvers), changed=stored)
    raise RuntimeError(f"could not record an approval of {request_id}: too many concurrent changes")


def approve_with_code(
    deps: HandlerDeps, request_id: str, person: Person, code: str
) -> tuple[str | None, ClickOutcome | None]:
    """A step-up code submission: (refusal, outcome). The two-person rule is checked before
    the code (so a forged submission by the requester or a non-approver costs no try and
    approves nothing), then the code, then the approval is counted."""
    request = deps.store.get(request_id)
    if deps.step_up is None or request is None:
        return m.unknown_request(request_id), None
    if not needs_step_up(deps, request):
        return m.unknown_request(request_id), None
    rules = approve(deps, request_id, person)  # without a factor: counts nothing on this panel
    if rules.needs_code is None:
        return rules.answer or m.unknown_request(request_id), rules
    verdict = deps.step_up.verify(person.user_id, code)
    if verdict.check != StepUpCheck.OK:
        return step_up_modal.answer(verdict, mention_list(deps.step_up.admins)), None
    outcome = approve(deps, request_id, person, stepped_up=step_up_modal.APPROVED_WITH)
    if outcome.changed is None or not outcome.changed.approved_by(person):
        return outcome.answer or m.unknown_request(request_id), outcome
    return None, outcome


def may_deny(
    deps: HandlerDeps, request_id: str, person: Person
) -> tuple[str | None, RotationRequest | None]:
    """Before the modal opens: (refusal, None) or (None, the pending request)."""
    request = deps.store.get(request_id)
    if request is None:
        return m.unknown_request(request_id), None
    if request.state != State.PENDING:
        return cards.no_longer_pending(request), None
    if person == request.requester:
        return m.use_cancel(request_id), None
    if not deps.policy.may_approve(person, deps.directory):
        return m.not_an_approver(deps.policy.approver_mentions, verb="deny"), None
    if refusal := ops.refusal(deps, person, "deny"):
        return refusal, None
    return None, request


def deny(deps: HandlerDeps, request_id: str, person: Person, reason: str) -> ClickOutcome:
    for _ in range(MAX_RACE_RETRIES):
        refusal, request = may_deny(deps, request_id, person)
        if request is None:
            return ClickOutcome(answer=refusal)
        now = deps.clock()
        if now >= request.expires_at:
            expired = expire_if_due(deps.store, request, now)
            if expired is None:
                continue
            return ClickOutcome(answer=cards.no_longer_pending(expired), changed=expired)
        denied = request.evolve(
            state=State.DENIED, decision=Decision(person=person, at=now, reason=reason)
        )
        stored = deps.store.update(
            denied, expected_version=request.version, event="denied", actor=person.key
        )
        if stored is not None:
            return ClickOutcome(answer=m.deny_recorded(request_id), changed=stored)
    raise RuntimeError(f"could not record a denial of {request_id}: too many concurrent changes")


def person_from_interaction(body: dict[str, Any]) -> Person:
    user = body.get("user") or {}
    team = user.get("team_id") or (body.get("team") or {}).get("id") or ""
    return Person(team_id=str(team), user_id=str(user["id"]))


def _action_value(body: dict[str, Any]) -> str:
    actions = body.get("actions") or [{}]
    return str(actions[0].get("value", ""))


def _channel(body: dict[str, Any]) -> str:
    return str(
        (body.get("channel") or {}).get("id")
        or (body.get("container") or {}).get("channel_id")
        or ""
    )


def _answer_channel(deps: HandlerDeps, channel: str, request_id: str) -> str:
    """Where to answer a click: its channel, or for a click on the Home tab (which has
    none) the request's own channel, so a refusal is never sent nowhere."""
    if channel:
        return channel
    request = deps.store.get(request_id)
    return request.channel_id if request else ""


def register(app: App, deps: HandlerDeps) -> None:
    """Attach the buttons and the deny modal to ``app`` (ack first, then ``deps.after_ack``)."""
    client = deps.client

    def approve_rotation(body: dict[str, Any], ack: Ack) -> None:
        ack()
        person = person_from_interaction(body)
        request_id = _action_value(body)
        clicked_in = _channel(body)

        def approve_once() -> None:
            channel = _answer_channel(deps, clicked_in, request_id)
            with cards.reporting_errors(client, channel, person.user_id, f"approve {request_id}"):
                outcome = approve(deps, request_id, person)
                if outcome.needs_code is not None:
                    step_up_modal.ask_for_code(
                        deps, client, body["trigger_id"], outcome.needs_code, person, clicked_in
                    )
                    return
                report(outcome, person, channel)

        # with step-up on, a click may open a modal: Slack's trigger id lives 3 s
        deps.after_ack(
            body, approve_once, lane=Lane.MODAL if deps.step_up is not None else Lane.CLICK
        )

    def report(outcome: ClickOutcome, person: Person, channel: str) -> None:
        if outcome.changed is not None:
            cards.refresh_card(client, outcome.changed, deps.policy, deps.clock())
        if outcome.answer:
            cards.tell(client, channel, person.user_id, outcome.answer)
        if outcome.start and outcome.changed is not None:
            deps.start_rotation(outcome.changed.id)

    app.action(blocks.APPROVE_ACTION)(approve_rotation)

    def code_submission(body: dict[str, Any], ack: Ack) -> None:
        """Checked before the acknowledgement, so a refusal stays in the open modal."""
        code = step_up_modal.code_from_view(body)
        if code is None:
            ack(**step_up_modal.modal_error(step_up_modal.CODE_BLOCK, m.step_up_code_format()))
            return
        person = person_from_interaction(body)
        request_id = str(body["view"].get("private_metadata", ""))
        checked = step_up_modal.checked(
            ack, f"approve {request_id}", lambda: approve_with_code(deps, request_id, person, code)
        )
        if checked is None:  # it failed, and the modal said so
            return
        refusal, outcome = checked
        if refusal is not None or outcome is None:
            ack(**step_up_modal.modal_error(step_up_modal.CODE_BLOCK, refusal or m.unknown_request(request_id)))
            if outcome is not None and outcome.changed is not None:  # it expired meanwhile
                changed = outcome.changed

                def repaint() -> None:
                    cards.refresh_card(client, changed, deps.policy, deps.clock())

                deps.defer(repaint, Lane.CLICK)
            return
        ack()
        approved = outcome

        def announce() -> None:
            channel = approved.changed.channel_id if approved.changed else ""
            with cards.reporting_errors(client, channel, person.user_id, f"approve {request_id}"):
                if approved.changed is not None:
                    cards.post_thread(client, approved.changed, m.approved_with_totp(person.mention))
                report(approved, person, channel)

        deps.defer(announce, Lane.CLICK)

    app.view(step_up_modal.TOTP_MODAL)(code_submission)

    def deny_rotation(body: dict[str, Any], ack: Ack) -> None:
        ack()
        person = person_from_interaction(body)
        request_id = _action_value(body)
        clicked_in = _channel(body)

        def open_deny_modal() -> None:
            channel = _answer_channel(deps, clicked_in, request_id)
            with cards.reporting_errors(client, channel, person.user_id, f"deny {request_id}"):
                refusal, request = may_deny(deps, request_id, person)
                if request is None:
                    cards.tell(client, channel, person.user_id, refusal or "")
                    return
                client.views_open(
                    trigger_id=body["trigger_id"],
                    view=blocks.deny_modal(request_id, blocks.request_headline(request)),
                )

        deps.after_ack(body, open_deny_modal, lane=Lane.MODAL)

    app.action(blocks.DENY_ACTION)(deny_rotation)

    def deny_submission(body: dict[str, Any], ack: Ack) -> None:
        reason = _deny_reason(body)
        if not reason:
            ack(
                response_action="errors",
                errors={blocks.DENY_REASON_BLOCK: "Say why, so that the requester can act on it."},
            )
            return
        ack()
        person = person_from_interaction(body)
        request_id = str(body["view"].get("private_metadata", ""))

        def record_denial() -> None:
            request = deps.store.get(request_id)
            channel = request.channel_id if request else ""
            with cards.reporting_errors(client, channel, person.user_id, f"deny {request_id}"):
                outcome = deny(deps, request_id, person, reason)
                if outcome.changed is not None:
                    cards.refresh_card(client, outcome.changed, deps.policy, deps.clock())
                    if outcome.changed.state == State.DENIED:
                        cards.post_thread(
                            client,
                            outcome.changed,
                            f"{outcome.changed.requester.mention} "
                            + m.denied_line(person.mention, deps.clock(), reason),
                        )
                elif outcome.answer and channel:
                    cards.tell(client, channel, person.user_id, outcome.answer)

        deps.after_ack(body, record_denial)

    app.view(blocks.DENY_MODAL)(deny_submission)


def _deny_reason(body: dict[str, Any]) -> str:
    values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
    field = (values.get(blocks.DENY_REASON_BLOCK) or {}).get(blocks.DENY_REASON_INPUT) or {}
    return str(field.get("value") or "").strip()[:500]
