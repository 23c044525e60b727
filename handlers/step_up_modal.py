"""Step-up approval: the modal that asks an approver for their TOTP code, and its answers.

The Approve button of a panel with ``step_up = "totp"`` does not approve: once
every rule of the two-person rule passes (``actions.approve``), it opens this
modal with the click's trigger id. A submission is checked before it is
acknowledged, the rules first (a forged submission with no click before it
meets the same two-person rule) and then the code (``StepUp.verify``: one step
either side, each step once, tries counted first); a refusal is acknowledged
with ``response_action: "errors"`` on the code's block, so the modal stays open
and says why. Only then does ``actions.approve`` count the approval, recorded
as "approved with TOTP" in the audit log and the request's thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from slack_bolt import Ack
from slack_sdk import WebClient

from handlers import blocks, cards
from handlers import messages as m
from handlers.access import mention_list
from handlers.errors import UserFacingError, new_reference
from handlers.ports import HandlerDeps
from handlers.rotation_request import Person, RotationRequest
from handlers.second_factor import StepUpCheck, StepUpVerdict

log = logging.getLogger(__name__)

TOTP_MODAL = "approve_with_totp"
CODE_BLOCK = "totp_code"
CODE_INPUT = "code"
APPROVED_WITH = "TOTP"
_CODE = re.compile(r"^[0-9]{6}$")


def code_modal(request: RotationRequest) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": TOTP_MODAL,
        "private_metadata": request.id,
        "title": {"type": "plain_text", "text": "Approve rotation"},
        "submit": {"type": "plain_text", "text": "Approve"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{blocks.request_headline(request)}\nRequest `{m.esc(request.id)}`",
                },
            },
            {
                "type": "input",
                "block_id": CODE_BLOCK,
                "label": {"type": "plain_text", "text": "6-digit code from your authenticator"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": CODE_INPUT,
                    "min_length": 6,
                    "max_length": 6,
                    "placeholder": {"type": "plain_text", "text": "123456"},
                },
            },
        ],
    }


def code_from_view(body: dict[str, Any]) -> str | None:
    """The typed code if it is 6 digits (spaces ignored), else None."""
    values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
    field = (values.get(CODE_BLOCK) or {}).get(CODE_INPUT) or {}
    code = re.sub(r"\s", "", str(field.get("value") or ""))
    return code if _CODE.match(code) else None


def answer(verdict: StepUpVerdict, admins: str = "") -> str:
    """What the approver is told when their code (or their state) does not allow an approval."""
    if verdict.check == StepUpCheck.NOT_ENROLLED:
        return m.step_up_not_enrolled()
    if verdict.check == StepUpCheck.NOT_CONFIRMED:
        return m.step_up_not_confirmed()
    if verdict.check == StepUpCheck.EXPIRED:
        return m.step_up_expired()
    if verdict.check == StepUpCheck.AWAITING_APPROVAL:
        return m.step_up_awaiting_approval(admins)
    if verdict.check == StepUpCheck.KEY_MISMATCH:
        return m.step_up_key_mismatch()
    if verdict.check == StepUpCheck.ALREADY_CONFIRMED:
        return m.STEP_UP_ALREADY_CONFIRMED
    if verdict.check == StepUpCheck.RATE_LIMITED:
        return m.step_up_rate_limited(verdict.retry_after_s)
    if verdict.check == StepUpCheck.REPLAYED:
        return m.step_up_replayed(verdict.tries_left, verdict.retry_after_s)
    return m.step_up_wrong(verdict.tries_left, verdict.retry_after_s)


_MENTION = re.compile(r"<[@#!]([A-Z0-9]+)(?:\|([^>]*))?>")


def plain(text: str) -> str:
    """A message for a modal's error line, which shows plain text: mentions as ``@U123``,
    no code marks, no emphasis."""
    text = _MENTION.sub(lambda found: "@" + (found.group(2) or found.group(1)), text)
    text = text.replace("`", "").replace("*", "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def modal_error(block_id: str, text: str) -> dict[str, Any]:
    """The acknowledgement that keeps a modal open with ``text`` under ``block_id``."""
    return {"response_action": "errors", "errors": {block_id: plain(text)}}


T = TypeVar("T")


def checked(ack: Ack, doing: str, check: Callable[[], T]) -> T | None:
    """``check()`` before a modal's acknowledgement; if it fails, the modal says so (with a
    reference for the log) instead of Slack's own "we had trouble connecting"."""
    try:
        return check()
    except UserFacingError as exc:
        ref = new_reference()
        log.warning("ref %s: %s refused (%s): %s", ref, doing, exc.code, exc.message)
        ack(**modal_error(CODE_BLOCK, f"{exc.message} Ref {ref}."))
    except Exception:
        ref = new_reference()
        log.exception("ref %s: %s failed", ref, doing)
        ack(**modal_error(CODE_BLOCK, m.unexpected(ref)))
    return None


def ask_for_code(
    deps: HandlerDeps,
    client: WebClient,
    trigger_id: str,
    request: RotationRequest,
    person: Person,
    channel: str,
) -> None:
    """Open the code modal, or say why not (not enrolled; too many wrong codes lately).

    A click on the Home tab has no channel (``channel`` is empty): the answer opens in a
    modal there, where the approver is looking, rather than in a channel they may not read."""
    assert deps.step_up is not None
    verdict = deps.step_up.precheck(person.user_id)
    if verdict.check != StepUpCheck.OK:
        text = answer(verdict, mention_list(deps.step_up.admins))
        if channel:
            cards.tell(client, channel, person.user_id, text)
        else:
            client.views_open(trigger_id=trigger_id, view=notice_modal(text))
        return
    client.views_open(trigger_id=trigger_id, view=code_modal(request))


def notice_modal(text: str) -> dict[str, Any]:
    """A modal that only says ``text`` (no submit button)."""
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Approve rotation"},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }
