"""Requests signed exactly as Slack signs them, and a sender that posts them to the app.

Slack's signature: ``v0=`` + hex HMAC-SHA256, keyed with the signing secret,
of ``v0:<X-Slack-Request-Timestamp>:<raw body>``. Slash commands are form
bodies; interactions are a form body with one ``payload`` field of JSON;
Events API deliveries (``event_callback``) are a JSON body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode


def signature(secret: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256)
    return "v0=" + digest.hexdigest()


def signed_headers(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(secret, ts, body),
    }


def _trigger_id() -> str:
    """A fresh trigger id per user action, in Slack's shape (Slack retries repeat it).

    Only for a sender with no fake Slack behind it: the fake's ``views.open``
    refuses trigger ids it did not issue.
    """
    return f"{secrets.randbelow(10**10)}.{secrets.token_hex(8)}"


def _user(user: str, team: str) -> dict[str, str]:
    return {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team}


@dataclass
class Sent:
    """One request as sent (so it can be replayed) and the app's answer."""

    body: str
    headers: dict[str, str]
    status: int
    answer: str
    elapsed_s: float

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.answer)) if self.answer.strip().startswith("{") else {}

    @property
    def text(self) -> str:
        data = self.json()
        return str(data.get("text", "")) if data else self.answer


@dataclass
class SlackSender:
    """Plays Slack: slash commands, button clicks and modal submissions, signed.

    Each user action carries a fresh trigger id from ``trigger_ids``; give it
    the fake Web API's ``issue_trigger_id`` so that the fake knows the id and
    when it was issued (it expires 3 s later and opens one modal).
    """

    url: str
    signing_secret: str
    verification_token: str = field(default_factory=lambda: secrets.token_hex(12))
    team_id: str = "T0TEAM"
    channel_id: str = "C0ROTATE"
    app_id: str = "A0ROTATOR"
    trigger_ids: Callable[[], str] = _trigger_id

    def post(
        self,
        body: str,
        *,
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        retry_num: int | None = None,
        secret: str | None = None,
    ) -> Sent:
        sent_headers = headers or signed_headers(secret or self.signing_secret, body, timestamp)
        if retry_num is not None:
            sent_headers = {
                **sent_headers,
                "X-Slack-Retry-Num": str(retry_num),
                "X-Slack-Retry-Reason": "http_timeout",
            }
        request = urllib.request.Request(
            self.url, data=body.encode(), headers=sent_headers, method="POST"
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read().decode()
        return Sent(body, sent_headers, status, answer, time.perf_counter() - started)

    def replay(self, sent: Sent) -> Sent:
        """The very same bytes and headers again (what an eavesdropper would do)."""
        return self.post(sent.body, headers=dict(sent.headers))

    def command_body(
        self,
        command: str,
        text: str,
        user: str,
        channel: str | None = None,
        trigger_id: str | None = None,
    ) -> str:
        channel = channel or self.channel_id
        return urlencode(
            {
                "token": self.verification_token,
                "team_id": self.team_id,
                "team_domain": "fake",
                "channel_id": channel,
                "channel_name": "rotations",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": self.app_id,
                "is_enterprise_install": "false",
                "response_url": "https://hooks.slack.test/commands/T0TEAM/1/xyz",
                "trigger_id": trigger_id or self.trigger_ids(),
            }
        )

    def command(
        self, command: str, text: str, user: str, *, channel: str | None = None, **options: Any
    ) -> Sent:
        return self.post(self.command_body(command, text, user, channel), **options)

    def event_body(self, event: dict[str, Any]) -> str:
        """An Events API ``event_callback`` around ``event``, as Slack sends it (JSON)."""
        return json.dumps(
            {
                "token": self.verification_token,
                "team_id": self.team_id,
                "api_app_id": self.app_id,
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{secrets.token_hex(6).upper()}",
                "event_time": int(time.time()),
                "authorizations": [
                    {"team_id": self.team_id, "user_id": "U0BOT", "is_bot": True}
                ],
                "is_ext_shared_channel": False,
            }
        )

    def app_home_opened(self, user: str, *, tab: str = "home", **options: Any) -> Sent:
        """``user`` opens the app's Home tab (the ``app_home_opened`` event, signed)."""
        event = {
            "type": "app_home_opened",
            "user": user,
            "channel": "D0HOME",
            "tab": tab,
            "event_ts": f"{time.time():.6f}",
        }
        body = self.event_body(event)
        headers = {
            **signed_headers(self.signing_secret, body, options.pop("timestamp", None)),
            "Content-Type": "application/json",
        }
        return self.post(body, headers=headers, **options)

    def _interaction(self, payload: dict[str, Any], **options: Any) -> Sent:
        return self.post(urlencode({"payload": json.dumps(payload)}), **options)

    def click_body(
        self,
        action_id: str,
        value: str,
        user: str,
        message_ts: str,
        *,
        team_id: str | None = None,
        channel: str | None = None,
    ) -> str:
        channel = channel or self.channel_id
        team = team_id or self.team_id
        payload = {
            "type": "block_actions",
            "user": _user(user, team),
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "trigger_id": self.trigger_ids(),
            "team": {"id": team, "domain": "fake"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "rotations"},
            "message": {"type": "message", "ts": message_ts, "text": "card"},
            "response_url": "https://hooks.slack.test/actions/T0TEAM/1/xyz",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "decision",
                    "text": {"type": "plain_text", "text": action_id},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        return urlencode({"payload": json.dumps(payload)})

    def click_in_home(self, action_id: str, value: str, user: str, **options: Any) -> Sent:
        """A button on ``user``'s Home tab: the payload's container is the view, no channel."""
        payload = json.loads(
            urllib.parse.parse_qs(self.click_body(action_id, value, user, ""))["payload"][0]
        )
        payload["container"] = {"type": "view", "view_id": "V0HOME"}
        payload["view"] = {"id": "V0HOME", "type": "home", "team_id": self.team_id}
        for key in ("channel", "message", "response_url"):
            payload.pop(key, None)
        return self._interaction(payload, **options)

    def click(
        self,
        action_id: str,
        value: str,
        user: str,
        message_ts: str,
        *,
        team_id: str | None = None,
        **options: Any,
    ) -> Sent:
        return self.post(
            self.click_body(action_id, value, user, message_ts, team_id=team_id), **options
        )

    def submit_view(
        self,
        callback_id: str,
        private_metadata: str,
        values: dict[str, dict[str, Any]],
        user: str,
        **options: Any,
    ) -> Sent:
        """``values``: block id -> action id -> typed text, or a whole element state (a dict,
        e.g. ``{"type": "static_select", "selected_option": {"value": "x"}}``)."""
        state = {
            block: {
                action: value
                if isinstance(value, dict)
                else {"type": "plain_text_input", "value": value}
                for action, value in actions.items()
            }
            for block, actions in values.items()
        }
        payload = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "fake"},
            "user": _user(user, self.team_id),
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "trigger_id": self.trigger_ids(),
            "view": {
                "id": "V0VIEW",
                "team_id": self.team_id,
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": private_metadata,
                "state": {"values": state},
                "hash": "1.abc",
                "app_id": self.app_id,
            },
            "response_urls": [],
            "is_enterprise_install": False,
        }
        return self._interaction(payload, **options)
