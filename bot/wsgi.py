"""Serving the app over HTTP: ``/slack/events`` through Bolt's WSGI adapter, and ``/healthz``.

Bolt's own ``App.start()`` binds every interface with a single-threaded
server; this one binds the configured address (default 127.0.0.1) and serves
each request on its own thread, so one slow request never holds up the
acknowledgement of another.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
MAX_BODY = 1024 * 1024


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    """wsgiref prints every request to stderr; send it to the debug log instead."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def wsgi_app(
    app: App,
    healthy: Callable[[], bool],
    acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> Callable[..., Iterable[bytes]]:
    """``acknowledging`` wraps each Slack request (``bot.app.AckFirst.acknowledging``)."""
    slack = SlackRequestHandler(app, path=EVENTS_PATH)

    def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            ok = healthy()
            body = json.dumps({"ok": ok}).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = MAX_BODY + 1
        if length > MAX_BODY:
            start_response("413 Payload Too Large", [("Content-Type", "text/plain")])
            return [b"request too large"]
        with acknowledging():
            return slack(environ, start_response)

    return application


class HttpServer:
    """The app on a threaded WSGI server, in a background thread (tests) or the foreground."""

    def __init__(
        self,
        app: App,
        healthy: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.server = make_server(
            host,
            port,
            wsgi_app(app, healthy, acknowledging),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="http",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(5)
