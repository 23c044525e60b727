"""Serving the app over Socket Mode: a websocket the bot opens to Slack, no public URL.

Bolt's handler wraps slack_sdk's built-in client (standard library only). Two
of its habits need a word at the boundary, translated here once:

* a rejected app token comes back from ``apps.connections.open`` as
  ``SlackApiError``; the operator gets one line naming ``SLACK_APP_TOKEN``;
* a websocket that cannot be reached is only logged by the client, which then
  reports "a new session has been established" all the same; we ask
  ``is_connected()`` and report the address that did not answer.

Each envelope is handled inside ``acknowledging`` (``bot.app.AckFirst``), as
HTTP requests are, so background work yields to acknowledgements in flight.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.errors import SocketModeError

log = logging.getLogger(__name__)


class _NoFalseSession(logging.Filter):
    """Drops the SDK's "A new session has been established" when no session was."""

    def __init__(self, connected: Callable[[], bool]) -> None:
        super().__init__()
        self.connected = connected

    def filter(self, record: logging.LogRecord) -> bool:
        claims = str(record.msg).startswith("A new session has been established")
        return not claims or self.connected()


class AcknowledgingHandler(SocketModeHandler):
    """Bolt's handler, with each envelope inside ``acknowledging`` (see ``bot.app.AckFirst``)."""

    def __init__(
        self,
        app: App,
        app_token: str,
        acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        **options: Any,
    ) -> None:
        # the SDK client's own logger, one per handler, so its filter asks this client
        sdk_log = logging.getLogger(f"bot.socket_mode.sdk.{id(self):x}")
        options.setdefault("logger", sdk_log)
        super().__init__(app, app_token, **options)
        sdk_log.addFilter(_NoFalseSession(self.client.is_connected))
        self.acknowledging = acknowledging

    def handle(self, client: Any, req: Any) -> None:
        with self.acknowledging():
            super().handle(client, req)


def _where(url: str | None) -> str:
    """host:port of a websocket URL, without its one-time ticket."""
    if not url:
        return "(no URL)"
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def connect(
    app: App,
    app_token: str,
    acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> AcknowledgingHandler:
    """Open the Socket Mode connection, or raise ``SocketModeError`` saying what to fix."""
    handler = AcknowledgingHandler(app, app_token, acknowledging)
    try:
        handler.connect()  # type: ignore[no-untyped-call]
    except SlackApiError as exc:
        handler.close()  # type: ignore[no-untyped-call]
        error = exc.response.get("error", "error") if exc.response is not None else "error"
        raise SocketModeError(
            f"Slack refused SLACK_APP_TOKEN ({error}): use the app-level token "
            "(xapp-…) with the connections:write scope, from the app's Basic Information page"
        ) from exc
    except (SlackClientError, OSError) as exc:
        handler.close()  # type: ignore[no-untyped-call]
        raise SocketModeError(
            f"could not reach Slack's Web API to open a Socket Mode connection "
            f"({type(exc).__name__}); check the network path to Slack and SLACK_API_URL"
        ) from exc
    if not handler.client.is_connected():
        where = _where(handler.client.wss_uri)
        handler.close()  # type: ignore[no-untyped-call]
        raise SocketModeError(
            f"could not connect to Slack's Socket Mode websocket at {where}: "
            "check outbound access to it (proxy, firewall)"
        )
    log.info("connected to Slack in Socket Mode (%s)", _where(handler.client.wss_uri))
    return handler
