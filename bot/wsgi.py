"""Serving the app over HTTP: ``/slack/events`` through Bolt's WSGI adapter, ``/healthz``, and
with ``--metrics`` Prometheus' ``/metrics`` (bot.metrics).

The server is waitress, chosen over gunicorn and cheroot for what an
unauthenticated client can do to it before any signature is checked:

* waitress reads requests on one event loop and hands a worker thread only a
  *complete* request, so half-sent requests (slowloris) hold a socket, never a
  thread; cheroot reads each request on a pool thread, and gunicorn's sync and
  threaded workers do the same, so a few hundred slow clients starve them.
* it refuses a ``Content-Length`` that is not plain digits (400) and one at or
  over ``max_request_body_size`` (413) as soon as the headers are in, without
  reading the body; gunicorn has no body cap of its own.
* it caps open connections (``connection_limit``) and closes idle ones
  (``channel_timeout``); it is pure Python, runs in-process beside the runner
  and expiry threads and the SQLite store (gunicorn forks workers, which would
  each run their own), works on any OS, and is actively maintained (Pylons).

One thing waitress lacks: its ``channel_timeout`` counts from the last byte
received, so a client that dribbles a byte a second keeps a connection (and a
slot under the cap) for ever. ``DeadlineServer`` adds a deadline for a whole
request: a request still incomplete ``request_timeout_s`` after its first byte
has its connection closed. Once half the connection slots are taken, the
deadline (and the idle timeout) drops to ``busy_timeout_s``: Slack's requests
arrive whole in milliseconds, so only slow clients lose, and a flood of them
can hold the slots for a second at a time, not ten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take from the server (``bot.settings`` fills it from the TOML).

    Slack's requests are a few kilobytes and arrive whole in milliseconds.
    """

    max_body_bytes: int = MAX_BODY
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_connections: int = 200
    threads: int = 8
    busy_timeout_s: float = 1.0


class _TimedParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, noting when the request's first byte arrived."""

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.started = time.monotonic()


class _TimedChannel(HTTPChannel):  # type: ignore[misc]
    parser_class = _TimedParser


class DeadlineServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server, plus a deadline for receiving a whole request."""

    channel_class = _TimedChannel
    limits = HttpLimits()

    def maintenance(self, now: float) -> None:
        """Close requests past their deadline, and idle connections while busy.

        A connection seen while half the slots were taken keeps the short deadline
        after the pressure drops: otherwise closing the first slow clients would
        hand the rest the long one again, and a pass that ran a moment early
        would decide who is cut off.
        """
        super().maintenance(now)
        channels = list(self.active_channels.values())
        limits = self.limits
        busy = len(channels) * 2 >= limits.max_connections
        short = min(limits.request_timeout_s, limits.busy_timeout_s)
        clock = time.monotonic()
        idle_cutoff = now - limits.busy_timeout_s
        closed = 0
        for channel in channels:
            if channel.will_close:
                continue
            if busy:
                channel.seen_busy = True
            deadline = short if getattr(channel, "seen_busy", False) else limits.request_timeout_s
            request = channel.request
            if request is not None and request.started < clock - deadline:
                channel.will_close = True
                closed += 1
            elif busy and request is None and not channel.requests:
                if channel.last_activity < idle_cutoff:
                    channel.will_close = True
        if closed:
            log.info("closed %d connection(s) whose request outlasted its deadline", closed)


def wsgi_app(
    app: App,
    healthy: Callable[[], bool],
    acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    metrics: Callable[..., Iterable[bytes]] | None = None,
) -> Callable[..., Iterable[bytes]]:
    """``acknowledging`` wraps each Slack request (``bot.app.AckFirst.acknowledging``);
    ``metrics``, a WSGI app (``bot.metrics.metrics_app``), answers ``GET /metrics``."""
    slack = SlackRequestHandler(app, path=EVENTS_PATH)

    def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if metrics is not None and path == METRICS_PATH and environ.get("REQUEST_METHOD") == "GET":
            return metrics(environ, start_response)
        if path == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            ok = healthy()
            body = json.dumps({"ok": ok}).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if path != EVENTS_PATH:
            body = b"not found"
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]
        with acknowledging():
            try:
                return slack(environ, start_response)
            except Exception as exc:
                # Bolt parses the body before it checks the signature: a malformed body
                # (bad JSON in ``payload``, say) raises here, signed or not
                log.warning("refused a malformed Slack request (%s)", type(exc).__name__)
                body = b"bad request"
                start_response(
                    "400 Bad Request",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                    sys.exc_info(),
                )
                return [body]

    return application


class HttpServer:
    """The app on waitress, in a background thread (tests) or the foreground."""

    # waitress counts its own listening socket and its wake-up pipe as connections
    _OWN_SOCKETS = 2

    def __init__(
        self,
        app: App,
        healthy: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        acknowledging: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        limits: HttpLimits | None = None,
        metrics: Callable[..., Iterable[bytes]] | None = None,
    ) -> None:
        self.limits = limits or HttpLimits()
        adjustments: dict[str, Any] = {
            "host": host,
            "port": port,
            "threads": self.limits.threads,
            "max_request_body_size": self.limits.max_body_bytes + 1,  # 413 at >= this
            "max_request_header_size": 64 * 1024,
            "channel_timeout": self.limits.idle_timeout_s,
            "cleanup_interval": 0.25,
            "connection_limit": self.limits.max_connections + self._OWN_SOCKETS,
            "asyncore_loop_timeout": 0.2,
            "asyncore_use_poll": True,
            "ident": "rotator",
            "expose_tracebacks": False,
            "clear_untrusted_proxy_headers": True,
        }
        self.server = DeadlineServer(
            wsgi_app(app, healthy, acknowledging, metrics), adj=Adjustments(**adjustments)
        )
        self.server.limits = self.limits
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    @property
    def url(self) -> str:
        return f"http://{self.server.effective_host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        adj = self.server.adj
        try:
            while not self._stopping.is_set():
                wasyncore.loop(
                    timeout=adj.asyncore_loop_timeout,
                    map=self.server._map,
                    use_poll=adj.asyncore_use_poll,
                    count=1,
                )
        finally:
            self.server.task_dispatcher.shutdown(timeout=2)
            wasyncore.close_all(self.server._map)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.server.pull_trigger()
        if self._thread is not None:
            self._thread.join(5)
