"""Putting the card and its thread in Slack, and telling one person something.

These are the only Slack writes the handlers (and the bot's runner and expiry
watcher) make. A failed Slack call is logged and reported as ``False``: the
state store, not the card, is the truth, and a later update repaints the card.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from handlers import blocks
from handlers import messages as m
from handlers.access import AccessPolicy
from handlers.errors import UserFacingError, new_reference
from handlers.rotation_request import RotationRequest, State

log = logging.getLogger(__name__)


def card_for(request: RotationRequest, policy: AccessPolicy, now: float) -> dict[str, Any]:
    approvers, name_requester = policy.approvers_for(request.requester)
    return blocks.request_card(
        request,
        approvers=approvers,
        approvals_required=policy.approvals_required,
        now=now,
        name_requester=name_requester,
    )


def post_card(client: WebClient, request: RotationRequest, policy: AccessPolicy, now: float) -> str:
    """Post the request card; returns its ``ts``. Raises ``SlackApiError`` on failure."""
    response = client.chat_postMessage(channel=request.channel_id, **card_for(request, policy, now))
    return str(response["ts"])


def refresh_card(
    client: WebClient, request: RotationRequest, policy: AccessPolicy, now: float
) -> bool:
    if not request.message_ts:
        return False
    try:
        client.chat_update(
            channel=request.channel_id, ts=request.message_ts, **card_for(request, policy, now)
        )
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not update the card of %s: %s", request.id, _slack_error(exc))
        return False
    return True


def post_thread(
    client: WebClient, request: RotationRequest, text: str | blocks.Message
) -> str | None:
    """A reply under the card: a sentence, or a message already built (the summary)."""
    if not request.message_ts:
        return None
    message = blocks.thread_reply(text) if isinstance(text, str) else text
    try:
        response = client.chat_postMessage(
            channel=request.channel_id, thread_ts=request.message_ts, **message
        )
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not reply in the thread of %s: %s", request.id, _slack_error(exc))
        return None
    return str(response.get("ts"))


def tell(client: WebClient, channel: str, user: str, text: str) -> bool:
    """An ephemeral message: only ``user`` sees it."""
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text)
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not tell %s something: %s", user, _slack_error(exc))
        return False
    return True


def direct_message(client: WebClient, user: str, text: str) -> bool:
    try:
        client.chat_postMessage(channel=user, text=text)
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not send a direct message to %s: %s", user, _slack_error(exc))
        return False
    return True


def _slack_error(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "error"))
    return type(exc).__name__


def no_longer_pending(request: RotationRequest) -> str:
    """The answer to a click on a decided request: "… it was approved by @bob at 03:14 UTC"."""
    if request.state in (State.APPROVED, State.RUNNING, State.DONE, State.FAILED):
        names = ", ".join(a.approver_label for a in request.approvals if a.person) or None
        at = request.approvals[-1].at if request.approvals else None
        phrase = m.decided_phrase(request.state.value, names, at)
    elif request.state == State.EXPIRED:
        phrase = m.decided_phrase("expired", None, request.expires_at)
    else:
        decision = request.decision
        who = decision.person.mention if decision and decision.person else None
        phrase = m.decided_phrase(
            request.state.value,
            who,
            decision.at if decision else None,
            decision.reason if decision else "",
        )
    return m.no_longer_pending(phrase)


@contextlib.contextmanager
def reporting_errors(client: WebClient, channel: str, user: str, doing: str) -> Iterator[None]:
    """Turn any failure into a short ephemeral message with a reference id; details to the log."""
    try:
        yield
    except UserFacingError as exc:
        ref = new_reference()
        log.warning("ref %s: %s refused (%s): %s", ref, doing, exc.code, exc.message)
        tell(client, channel, user, f"{exc.message} Ref {ref}.")
    except Exception:
        ref = new_reference()
        log.exception("ref %s: %s failed", ref, doing)
        tell(client, channel, user, m.unexpected(ref))
