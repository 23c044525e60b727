"""The slash commands: each operation's own (``handlers.ops``: /rotate-key, /rotate-agent,
/rotate-incident, /rotate-db-password, /rotate-offboard), /rotate-cancel, /rotate-status,
/rotate-help, /rotate-enroll (``handlers.enroll``).

Each command is acknowledged at once. The acknowledgement answers what needs
no I/O (usage, a missing reason, an unknown panel, the wrong channel, help, and
the secrets this product does not rotate); everything that needs the store,
the engine or Slack's API runs after the acknowledgement (``deps.after_ack``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient

from handlers import blocks, cards, enroll, ops
from handlers import messages as m
from handlers.access import NO_CHANNEL
from handlers.errors import PlanError, new_reference
from handlers.lanes import Lane
from handlers.parsing import Parsed, not_rotated_here
from handlers.ports import HandlerDeps
from handlers.rotation_request import ACTIVE_STATES, Decision, Person, RotationRequest, State

log = logging.getLogger(__name__)

def person_from_command(body: dict[str, Any]) -> Person:
    return Person(team_id=str(body.get("team_id", "")), user_id=str(body["user_id"]))


def open_request(
    deps: HandlerDeps,
    client: WebClient,
    parsed: Parsed,
    person: Person,
    channel: str,
    planning: PlanningNow,
    where: str | None = NO_CHANNEL,
) -> RotationRequest | None:
    """Check who asks, plan, store the request, post its card; tell the person if anything fails.

    Who asks is checked before anything else, so someone who may not request sees the
    refusal alone: no "Asking the engine…" first, and no engine is asked for a plan.
    ``where`` is the channel the command was typed in (``NO_CHANNEL`` from a modal:
    then the person must be a member of a rotations channel, ``AccessPolicy``)."""
    refusal = request_refusal(deps, person, where)
    if refusal:
        cards.tell(client, channel, person.user_id, refusal)
        return None
    with planning.reserve(deps, person) as pending:
        if pending is not None:
            cards.tell(
                client,
                channel,
                person.user_id,
                m.too_many_pending(deps.policy.max_pending_per_user, [r.id for r in pending]),
            )
            return None
        cards.tell(client, channel, person.user_id, m.planning(parsed.op, parsed.panel))
        request = _plan_and_store(deps, client, parsed, person, channel)
    if request is None:
        return None
    return _post(deps, client, request, person, channel)


class PlanningNow:
    """Requests being planned, per person: with the stored pending ones, they count
    against ``AccessPolicy.max_pending_per_user`` (so a burst of commands cannot
    slip past the cap before the first is stored)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: Counter[str] = Counter()

    @contextlib.contextmanager
    def reserve(
        self, deps: HandlerDeps, person: Person
    ) -> Iterator[list[RotationRequest] | None]:
        """Yields None with a slot held for ``person``, or their pending requests if full."""
        user = person.user_id
        with self._lock:
            pending = deps.store.pending_of(user, limit=deps.policy.max_pending_per_user)
            if len(pending) + self._by_user[user] >= deps.policy.max_pending_per_user:
                full = True
            else:
                full = False
                self._by_user[user] += 1
        if full:
            yield pending
            return
        try:
            yield None
        finally:
            with self._lock:
                self._by_user[user] -= 1
                if not self._by_user[user]:
                    del self._by_user[user]


def _plan_and_store(
    deps: HandlerDeps, client: WebClient, parsed: Parsed, person: Person, channel: str
) -> RotationRequest | None:
    now = deps.clock()
    request_id = deps.new_id(now)
    try:
        plan = deps.planner.plan(
            panel=parsed.panel,
            op=parsed.op,
            agents=parsed.agents,
            all_agents=parsed.all_agents,
            request_id=request_id,
        )
    except PlanError as exc:
        ref = new_reference()
        log.warning(
            "ref %s: plan for %s on %s refused (%s): %s",
            ref,
            request_id,
            parsed.panel,
            exc.code,
            exc.message,
        )
        cards.tell(client, channel, person.user_id, m.plan_failed(parsed.panel, exc.message, ref))
        return None
    request = RotationRequest(
        id=request_id,
        op=parsed.op,
        panel=parsed.panel,
        reason=parsed.reason,
        requester=person,
        channel_id=channel,
        plan=plan,
        created_at=now,
        expires_at=now + deps.policy.expiry_s,
        agents=plan.agents if ops.get(parsed.op).takes_agents else (),
        all_agents=parsed.all_agents,
    )
    for _ in range(20):  # two requests in one second may draw the same id
        if deps.store.create(request, actor=person.key):
            break
        request = request.evolve(id=deps.new_id(now))
    else:
        raise RuntimeError("could not find a free request id")
    return request


def _post(
    deps: HandlerDeps, client: WebClient, request: RotationRequest, person: Person, channel: str
) -> RotationRequest | None:
    request_id = request.id
    try:
        ts = cards.post_card(client, request, deps.policy, deps.clock())
    except Exception:
        ref = new_reference()
        log.exception("ref %s: could not post the card of %s", ref, request_id)
        withdrawn = request.evolve(
            state=State.CANCELLED,
            decision=Decision(person=None, at=deps.clock(), reason="card could not be posted"),
        )
        deps.store.update(
            withdrawn, expected_version=request.version, event="withdrawn", actor="bot"
        )
        cards.tell(client, channel, person.user_id, m.card_not_posted(ref))
        return None
    return _save_ts(deps, request, ts)


def _save_ts(deps: HandlerDeps, request: RotationRequest, ts: str) -> RotationRequest:
    """Save the card's ts with the change that posted it (retrying if a click got in first)."""
    current = request
    for _ in range(20):
        stored = deps.store.update(
            current.evolve(message_ts=ts),
            expected_version=current.version,
            event="card_posted",
            actor="bot",
        )
        if stored is not None:
            deps.on_request_created(stored)
            return stored
        reread = deps.store.get(request.id)
        if reread is None:
            break
        current = reread
    raise RuntimeError(f"could not save the card ts of {request.id}")


def cancel_request(
    deps: HandlerDeps, request_id: str, person: Person
) -> tuple[str, RotationRequest | None]:
    """``/rotate-cancel``: only the requester, only while pending. Returns (answer, changed)."""
    for _ in range(20):
        request = deps.store.get(request_id)
        if request is None:
            return m.unknown_request(request_id), None
        if request.requester != person:
            return m.only_requester_cancels(request.requester.mention), None
        if request.state in (State.APPROVED, State.RUNNING):
            return m.cannot_cancel_running(request_id), None
        if request.state != State.PENDING:
            return cards.no_longer_pending(request), None
        cancelled = request.evolve(
            state=State.CANCELLED, decision=Decision(person=person, at=deps.clock())
        )
        stored = deps.store.update(
            cancelled, expected_version=request.version, event="cancelled", actor=person.key
        )
        if stored is not None:
            return m.cancelled_ack(request_id), stored
    raise RuntimeError(f"could not cancel {request_id}: too many concurrent changes")


def request_refusal(deps: HandlerDeps, person: Person, where: str | None) -> str | None:
    """Why ``person`` may not request a rotation from ``where`` (None: they may)."""
    policy = deps.policy
    if policy.may_request(person, deps.directory, where):
        return ops.refusal(deps, person, "request")
    if not policy.in_scope(person, deps.directory, where):
        return m.outside_channels(policy.channels)
    return m.not_a_requester(policy.requester_mentions)


def may_see_status(deps: HandlerDeps, person: Person, where: str | None) -> bool:
    """Those who may request or approve rotations; nobody else learns of them."""
    return deps.policy.may_see(person, deps.directory, where)


def status_message(deps: HandlerDeps, request_id: str | None) -> dict[str, Any]:
    if request_id:
        request = deps.store.get(request_id)
        if request is None:
            return {"text": m.unknown_request(request_id)}
        return blocks.history_report(request, deps.store.history(request_id))
    active = deps.store.list_in_states(ACTIVE_STATES)
    return blocks.status_report(
        active,
        deps.store.recent_final(5),
        approvals_required=deps.policy.approvals_required,
        now=deps.clock(),
    )


def register(app: App, deps: HandlerDeps) -> None:
    """Attach the slash commands to ``app``.

    Each listener acknowledges first (from the request's own thread, with no
    I/O), then hands the rest to ``deps.after_ack``, which runs it once per
    Slack delivery on the bot's worker threads.
    """
    panels = list(deps.panels)
    client = deps.client
    planning = PlanningNow()

    def _precheck(body: dict[str, Any], parser: Any) -> Parsed | str:
        if not deps.policy.channel_allowed(str(body.get("channel_id", ""))):
            return m.wrong_channel(deps.policy.channels)
        result: Parsed | str = parser(str(body.get("text", "")), panels)
        return result

    def _rotation_command(parser: Any) -> Any:
        def rotation_command(body: dict[str, Any], ack: Ack) -> None:
            parsed = _precheck(body, parser)
            if isinstance(parsed, str):
                ack(text=parsed)
                return
            ack()  # who asks is checked first, after the acknowledgement (it may ask Slack)
            person = person_from_command(body)
            channel = str(body["channel_id"])

            def open_rotation_request() -> None:
                with cards.reporting_errors(
                    client, channel, person.user_id, f"{parsed.op} request"
                ):
                    open_request(deps, client, parsed, person, channel, planning, channel)

            deps.after_ack(body, open_rotation_request, lane=Lane.PLAN)

        return rotation_command

    for operation in ops.operations().values():
        if operation.parse is not None and operation.attach is not None:  # the shared request flow
            command = operation.commands[0]
            operation.attach(app, ops.route(command, deps, _rotation_command(operation.parse)))

    def rotate_cancel(body: dict[str, Any], ack: Ack) -> None:
        words = str(body.get("text", "")).split()
        if len(words) != 1:
            ack(text=m.cancel_usage())
            return
        ack()
        person = person_from_command(body)
        channel = str(body["channel_id"])

        def cancel() -> None:
            with cards.reporting_errors(client, channel, person.user_id, "cancel"):
                answer, changed = cancel_request(deps, words[0], person)
                if changed is not None:
                    cards.refresh_card(client, changed, deps.policy, deps.clock())
                cards.tell(client, channel, person.user_id, answer)

        deps.after_ack(body, cancel)

    app.command("/rotate-cancel")(rotate_cancel)

    def rotate_status(body: dict[str, Any], ack: Ack) -> None:
        channel = str(body.get("channel_id", ""))
        if not deps.policy.channel_allowed(channel):
            ack(text=m.status_wrong_channel(deps.policy.channels))
            return
        ack()
        words = str(body.get("text", "")).split()
        person = person_from_command(body)

        def status() -> None:
            with cards.reporting_errors(client, channel, person.user_id, "status"):
                if not may_see_status(deps, person, channel):
                    cards.tell(
                        client,
                        channel,
                        person.user_id,
                        m.status_not_allowed(
                            deps.policy.requester_mentions, deps.policy.approver_mentions
                        ),
                    )
                    return
                message = status_message(deps, words[0] if words else None)
                client.chat_postEphemeral(channel=channel, user=person.user_id, **message)

        deps.after_ack(body, status)

    app.command("/rotate-status")(rotate_status)

    def rotate_help(body: dict[str, Any], ack: Ack) -> None:
        special = not_rotated_here(str(body.get("text", "")).split())
        ack(
            text=special
            or m.help_text(
                panels,
                deps.policy.approver_mentions,
                deps.policy.approvals_required,
                deps.policy.expiry_s / 60,
                step_up=deps.step_up is not None,
                extra=ops.help_lines(),
            )
        )

    app.command("/rotate-help")(rotate_help)
    enroll.register(app, deps)
    ops.register(app, deps)
