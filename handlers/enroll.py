"""``/rotate-enroll``: an approver enrolls an authenticator; ``/rotate-enroll reset @user``: an admin
removes a lost one.

Enrolling stores a new TOTP secret (sealed, ``bot.step_up``) and sends it to its
owner alone, in a direct message: the ``otpauth://`` link and the same link as a
QR code (a PNG made with ``qrcode``, uploaded with Slack's files v2 upload). That
message goes through ``StepUp.secret_client``, whose request log is off. An
enrolled approver cannot enroll again (a stolen Slack session could otherwise
swap in its own authenticator): an admin resets the enrollment first, which is
audited.
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

from handlers import cards
from handlers import messages as m
from handlers.ports import HandlerDeps, Person, is_listed, mention_list, new_reference

log = logging.getLogger(__name__)

QR_FILENAME = "rotator-enrollment.png"
_USER = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$|^([UW][A-Z0-9]{2,})$")


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


def enroll(deps: HandlerDeps, person: Person, channel: str) -> None:
    step_up = deps.step_up
    assert step_up is not None
    client = deps.client
    if not deps.policy.may_approve(person, deps.directory):
        cards.tell(client, channel, person.user_id, m.enroll_not_approver(deps.policy.approver_mentions))
        return
    uri = step_up.enroll(person)
    if uri is None:
        cards.tell(client, channel, person.user_id, m.enroll_already(mention_list(step_up.admins)))
        return
    secret_client = step_up.secret_client
    try:
        secret_client.chat_postMessage(channel=person.user_id, text=m.enroll_dm(uri))
        secret_client.files_upload_v2(
            channels=[person.user_id],
            content=qr_png(uri),
            filename=QR_FILENAME,
            title="Rotation approvals: scan with your authenticator",
        )
    except (SlackApiError, SlackClientError, OSError) as exc:  # OSError: the upload POST
        ref = new_reference()
        log.warning("ref %s: could not send the enrollment to %s: %s", ref, person.user_id, type(exc).__name__)
        step_up.reset(person.user_id, Person(team_id="", user_id="bot"))
        cards.tell(client, channel, person.user_id, m.enroll_failed(ref))
        return
    cards.tell(client, channel, person.user_id, m.ENROLL_SENT)


def reset(deps: HandlerDeps, person: Person, channel: str, user_id: str) -> None:
    step_up = deps.step_up
    assert step_up is not None
    client = deps.client
    if not is_listed(step_up.admins, person, deps.directory):
        cards.tell(client, channel, person.user_id, m.enroll_reset_not_admin(mention_list(step_up.admins)))
        return
    target = f"<@{user_id}>"
    done = step_up.reset(user_id, person)
    cards.tell(
        client,
        channel,
        person.user_id,
        m.enroll_reset_done(target) if done else m.enroll_reset_none(target),
    )


def register(app: App, deps: HandlerDeps) -> None:
    """Attach ``/rotate-enroll`` to ``app``."""

    def rotate_enroll(body: dict[str, Any], ack: Ack) -> None:
        if deps.step_up is None:
            ack(text=m.STEP_UP_OFF)
            return
        words = str(body.get("text", "")).split()
        user_id = None
        if words:
            user_id = target_user(" ".join(words[1:])) if words[0] == "reset" else None
            if user_id is None:
                ack(text=m.enroll_reset_usage())
                return
        ack()
        person = Person(team_id=str(body.get("team_id", "")), user_id=str(body["user_id"]))
        channel = str(body["channel_id"])

        def run() -> None:
            doing = "enrollment reset" if user_id else "enrollment"
            with cards.reporting_errors(deps.client, channel, person.user_id, doing):
                if user_id:
                    reset(deps, person, channel, user_id)
                else:
                    enroll(deps, person, channel)

        deps.after_ack(body, run)

    app.command("/rotate-enroll")(rotate_enroll)
