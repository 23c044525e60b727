"""``/rotate-enroll``: an approver enrolls an authenticator; ``/rotate-enroll reset @user``: an admin
removes a lost one.

Enrolling stores a new TOTP secret (sealed, ``bot.totp``), pending, and sends
it to its owner alone, in a direct message: the ``otpauth://`` link and the same
link as a QR code (a PNG made with ``qrcode``, uploaded with Slack's files v2
upload), through ``StepUp.secret_client``, whose request log is off. A person
can't delete a bot's message, and whoever holds their Slack session could read
it, so the secret lives in Slack only until its owner proves they scanned it:
the message's button opens a modal for the first code, and once that code is
right the bot deletes the message and the file (``chat.delete``,
``files.delete``) and audits it (``step_up.secret_deleted``). Unconfirmed, the
enrollment approves nothing and expires after ``StepUp.pending_s``.

Then, unless ``step_up_enrollment_approval`` is off, an enroll admin other
than its owner approves the enrollment on a message in the rotations channel:
a stolen session of an approver who never enrolled can't enroll and approve
alone. An enrolled approver cannot enroll again (a stolen session could
otherwise swap in its own authenticator): an admin resets the enrollment
first, audited; an admin resetting their own needs its current code.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import qrcode
from qrcode.image.pure import PyPNGImage
from slack_bolt import Ack, App
from slack_sdk.errors import SlackApiError, SlackClientError

from handlers import cards, step_up_modal
from handlers import messages as m
from handlers.access import is_listed, mention, mention_list
from handlers.actions import person_from_interaction
from handlers.errors import new_reference
from handlers.lanes import Lane
from handlers.ports import HandlerDeps
from handlers.rotation_request import Person
from handlers.second_factor import SecretMessages, StepUp, StepUpCheck

log = logging.getLogger(__name__)

QR_FILENAME = "rotator-enrollment.png"
CONFIRM_ACTION = "enroll_first_code"
CONFIRM_MODAL = "enroll_confirm"
APPROVE_ENROLLMENT_ACTION = "enroll_approve"
_USER = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$|^([UW][A-Z0-9]{2,})$")
_CODE = re.compile(r"^[0-9]{6}$")


def qr_png(uri: str) -> bytes:
    """``uri`` as a QR code, a PNG (pure Python: ``qrcode`` with ``pypng``)."""
    image = qrcode.make(uri, image_factory=PyPNGImage, box_size=8, border=4)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()


def target_user(text: str) -> str | None:
    """The user id in ``<@U123|bob>`` (Slack's escaped mention) or a bare ``U123``."""
    match = _USER.match(text.strip())
    return (match.group(1) or match.group(2)) if match else None


def enrollment_dm(uri: str, pending_s: float, origin: str) -> dict[str, Any]:
    """The direct message that carries the secret, with the button for its first code."""
    text = m.enroll_dm(uri, pending_s)
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "actions",
                "block_id": "enroll",
                "elements": [
                    {
                        "type": "button",
                        "action_id": CONFIRM_ACTION,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Type my first code"},
                        "value": origin,
                    }
                ],
            },
        ],
    }


def confirm_modal(origin: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": CONFIRM_MODAL,
        "private_metadata": origin,
        "title": {"type": "plain_text", "text": "Finish enrollment"},
        "submit": {"type": "plain_text", "text": "Confirm"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {
                "type": "input",
                "block_id": step_up_modal.CODE_BLOCK,
                "label": {"type": "plain_text", "text": "6-digit code your authenticator shows now"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": step_up_modal.CODE_INPUT,
                    "min_length": 6,
                    "max_length": 6,
                    "placeholder": {"type": "plain_text", "text": "123456"},
                },
            },
        ],
    }


def approval_message(user_id: str, admins: str) -> dict[str, Any]:
    text = m.enrollment_approval_request(mention(user_id), admins)
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "actions",
                "block_id": "enroll_approval",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE_ENROLLMENT_ACTION,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve enrollment"},
                        "value": user_id,
                    }
                ],
            },
        ],
    }


def delete_secret(step_up_: StepUp, user_id: str, by: str) -> None:
    """Delete the DM message and the QR file that hold ``user_id``'s secret; audit each result."""
    where = step_up_.secret_messages(user_id)
    if where is None:
        return
    client = step_up_.secret_client
    outcome: dict[str, str] = {}
    if where.ts:
        outcome["message"] = _deleted(lambda: client.chat_delete(channel=where.channel, ts=where.ts))
    if where.file_id:
        outcome["file"] = _deleted(lambda: client.files_delete(file=where.file_id))
    if any(v not in ("deleted", "message_not_found", "file_not_found") for v in outcome.values()):
        log.warning("could not delete the enrollment message of %s: %s", user_id, outcome)
    step_up_.secret_deleted(user_id, by, outcome)


def delete_expired_secrets(step_up_: StepUp) -> int:
    """Delete the DMs and QR files of pending enrollments that expired (housekeeping)."""
    users = step_up_.expired_with_secret()
    for user_id in users:
        delete_secret(step_up_, user_id, "expiry")
    return len(users)


def _deleted(call: Any) -> str:
    try:
        call()
    except SlackApiError as exc:
        return str((exc.response or {}).get("error") or "error")
    except (SlackClientError, OSError) as exc:
        return type(exc).__name__
    return "deleted"


def enroll(deps: HandlerDeps, person: Person, channel: str) -> None:
    step_up_ = deps.step_up
    assert step_up_ is not None
    client = deps.client
    if not deps.policy.may_approve(person, deps.directory):
        cards.tell(client, channel, person.user_id, m.enroll_not_approver(deps.policy.approver_mentions))
        return
    admins = mention_list(step_up_.admins)
    status = step_up_.status(person.user_id)
    if status == "expired":
        delete_secret(step_up_, person.user_id, "expiry")
    elif status == "pending":
        cards.tell(client, channel, person.user_id, m.enroll_pending(step_up_.pending_s))
        return
    elif status == "awaiting_approval":
        cards.tell(client, channel, person.user_id, m.enroll_waiting(admins))
        return
    uri = step_up_.enroll(person)
    if uri is None:
        cards.tell(client, channel, person.user_id, m.enroll_already(admins))
        return
    secret_client = step_up_.secret_client
    posted: dict[str, str] = {}
    try:
        sent = secret_client.chat_postMessage(
            channel=person.user_id, **enrollment_dm(uri, step_up_.pending_s, channel)
        )
        posted = {"channel": str(sent["channel"]), "ts": str(sent["ts"])}
        step_up_.sent(person.user_id, SecretMessages(posted["channel"], posted["ts"], ""))
        uploaded = secret_client.files_upload_v2(
            channels=[person.user_id],
            content=qr_png(uri),
            filename=QR_FILENAME,
            title="Rotation approvals: scan with your authenticator",
        )
        files = uploaded.get("files") or [uploaded.get("file") or {}]
        file_id = str(files[0].get("id") or "")
        step_up_.sent(person.user_id, SecretMessages(posted["channel"], posted["ts"], file_id))
    except (SlackApiError, SlackClientError, OSError) as exc:  # OSError: the upload POST
        ref = new_reference()
        log.warning("ref %s: could not send the enrollment to %s: %s", ref, person.user_id, type(exc).__name__)
        delete_secret(step_up_, person.user_id, "bot")
        step_up_.reset(person.user_id, Person(team_id="", user_id="bot"), {"why": "not delivered"})
        cards.tell(client, channel, person.user_id, m.enroll_failed(ref))
        return
    cards.tell(client, channel, person.user_id, m.ENROLL_SENT)


def confirmed(deps: HandlerDeps, person: Person, origin: str) -> None:
    """After the first right code: the secret leaves Slack; an admin is asked to approve."""
    step_up_ = deps.step_up
    assert step_up_ is not None
    delete_secret(step_up_, person.user_id, person.key)
    admins = mention_list(step_up_.admins)
    client = deps.client
    client.chat_postMessage(
        channel=person.user_id, text=m.enroll_confirmed(step_up_.needs_admin_approval, admins)
    )
    if step_up_.needs_admin_approval:
        where = deps.policy.channels[0] if deps.policy.channels else origin
        client.chat_postMessage(channel=where, **approval_message(person.user_id, admins))


def approve_enrollment(deps: HandlerDeps, admin: Person, user_id: str) -> str | None:
    """An enroll admin's click: the refusal to tell them, or None when approved."""
    step_up_ = deps.step_up
    assert step_up_ is not None
    admins = mention_list(step_up_.admins)
    if not is_listed(step_up_.admins, admin, deps.directory):
        return m.enroll_approve_not_admin(admins)
    if admin.user_id == user_id:
        step_up_.refuse(user_id, admin, "approving one's own enrollment")
        return m.enroll_approve_self(admins)
    if not step_up_.approve_enrollment(user_id, admin):
        return m.enroll_approve_not_waiting(mention(user_id))
    return None


def reset(deps: HandlerDeps, person: Person, channel: str, user_id: str, code: str | None = None) -> None:
    step_up_ = deps.step_up
    assert step_up_ is not None
    client = deps.client
    admins = mention_list(step_up_.admins)
    if not is_listed(step_up_.admins, person, deps.directory):
        cards.tell(client, channel, person.user_id, m.enroll_reset_not_admin(admins))
        return
    target = f"<@{user_id}>"
    detail: dict[str, Any] = {}
    if user_id == person.user_id and step_up_.status(user_id) is not None:
        # a stolen session of an admin must not swap the admin's own factor
        verdict = step_up_.verify(user_id, code) if code else None
        if verdict is None or verdict.check != StepUpCheck.OK:
            why = "no code" if verdict is None else verdict.check.value
            step_up_.refuse(user_id, person, f"self-reset without a valid code ({why})")
            text = m.enroll_self_reset_refused(admins)
            if verdict is not None:
                text = f"{step_up_modal.answer(verdict, admins)}\n{text}"
            cards.tell(client, channel, person.user_id, text)
            return
        detail = {"self": True, "with_code": True}
    delete_secret(step_up_, user_id, person.key)
    done = step_up_.reset(user_id, person, detail)
    cards.tell(
        client,
        channel,
        person.user_id,
        m.enroll_reset_done(target) if done else m.enroll_reset_none(target),
    )


def _parse(text: str) -> tuple[bool, str | None, str | None]:
    """``""`` -> enroll; ``reset <@U…> [code]`` -> (ok, user, code); anything else -> not ok."""
    words = text.split()
    if not words:
        return True, None, None
    if words[0] != "reset" or len(words) not in (2, 3):
        return False, None, None
    user_id = target_user(words[1])
    code = words[2] if len(words) == 3 else None
    if user_id is None or (code is not None and not _CODE.match(code)):
        return False, None, None
    return True, user_id, code


def register(app: App, deps: HandlerDeps) -> None:
    """Attach ``/rotate-enroll``, the first-code button and modal, and the admin's approval."""

    def rotate_enroll(body: dict[str, Any], ack: Ack) -> None:
        if deps.step_up is None:
            ack(text=m.STEP_UP_OFF)
            return
        ok, user_id, code = _parse(str(body.get("text", "")))
        if not ok:
            ack(text=m.enroll_reset_usage())
            return
        ack()
        person = Person(team_id=str(body.get("team_id", "")), user_id=str(body["user_id"]))
        channel = str(body["channel_id"])

        def run() -> None:
            doing = "enrollment reset" if user_id else "enrollment"
            with cards.reporting_errors(deps.client, channel, person.user_id, doing):
                if user_id:
                    reset(deps, person, channel, user_id, code)
                else:
                    enroll(deps, person, channel)

        deps.after_ack(body, run)

    app.command("/rotate-enroll")(rotate_enroll)

    def first_code_button(body: dict[str, Any], ack: Ack) -> None:
        ack()
        if deps.step_up is None:
            return
        origin = str(((body.get("actions") or [{}])[0]).get("value") or "")

        def open_modal() -> None:
            deps.client.views_open(trigger_id=body["trigger_id"], view=confirm_modal(origin))

        deps.after_ack(body, open_modal, lane=Lane.MODAL)

    app.action(CONFIRM_ACTION)(first_code_button)

    def first_code_submission(body: dict[str, Any], ack: Ack) -> None:
        """Checked before the acknowledgement: a refusal stays in the open modal."""
        step_up_ = deps.step_up
        code = step_up_modal.code_from_view(body)
        if step_up_ is None or code is None:
            ack(**step_up_modal.modal_error(step_up_modal.CODE_BLOCK, m.step_up_code_format()))
            return
        person = person_from_interaction(body)
        origin = str(body["view"].get("private_metadata", ""))
        verdict = step_up_modal.checked(ack, "enrollment", lambda: step_up_.confirm(person, code))
        if verdict is None:  # it failed, and the modal said so
            return
        if verdict.check != StepUpCheck.OK:
            admins = mention_list(step_up_.admins)
            ack(**step_up_modal.modal_error(step_up_modal.CODE_BLOCK, step_up_modal.answer(verdict, admins)))
            if verdict.check == StepUpCheck.EXPIRED:
                deps.defer(lambda: delete_secret(step_up_, person.user_id, "expiry"), Lane.CLICK)
            return
        ack()

        def finish() -> None:
            with cards.reporting_errors(deps.client, person.user_id, person.user_id, "enrollment"):
                confirmed(deps, person, origin)

        deps.defer(finish, Lane.CLICK)

    app.view(CONFIRM_MODAL)(first_code_submission)

    def approve_click(body: dict[str, Any], ack: Ack) -> None:
        ack()
        if deps.step_up is None:
            return
        admin = person_from_interaction(body)
        user_id = str(((body.get("actions") or [{}])[0]).get("value") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        ts = str((body.get("message") or {}).get("ts") or "")

        def run() -> None:
            with cards.reporting_errors(deps.client, channel, admin.user_id, "enrollment approval"):
                refusal = approve_enrollment(deps, admin, user_id)
                if refusal is not None:
                    cards.tell(deps.client, channel, admin.user_id, refusal)
                    return
                line = m.enrollment_approved(mention(user_id), admin.mention)
                if channel and ts:
                    deps.client.chat_update(
                        channel=channel,
                        ts=ts,
                        text=line,
                        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": line}}],
                    )
                deps.client.chat_postMessage(channel=user_id, text=m.enrollment_active(admin.mention))

        deps.after_ack(body, run)

    app.action(APPROVE_ENROLLMENT_ACTION)(approve_click)
