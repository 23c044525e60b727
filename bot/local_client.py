"""``python -m engine serve`` as a child process: the engine client without SSH.

For tests, for the break-glass path and for installs where bot and engine share
a host. It speaks exactly the protocol the SSH client speaks, and the pieces
both clients need to read an event stream live here too: ``EventStream``
(decode lines, hello first, stop at the closing event) and ``redact`` for the
engine's stderr, which is logged but never parsed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from bot.errors import (
    EngineCrashedError,
    EngineTimeoutError,
    ProtocolMismatchError,
    RemoteEngineError,
)
from engine.hooks import hook_environ
from engine.protocol import (
    CLOSING_TYPES,
    MUTATING_OPS,
    PROTOCOL_VERSION,
    Request,
    decode_event,
    negotiate,
    redact,
)

log = logging.getLogger(__name__)
stderr_log = logging.getLogger("bot.engine_stderr")




def log_engine_stderr(source: str, text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            stderr_log.info("%s: %s", source, redact(line)[:1000])


class EventStream:
    """Checks one session's event lines: JSON events, ``hello`` first, closing last."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.hello: dict[str, Any] | None = None
        self.closing: dict[str, Any] | None = None
        self._lines = 0

    def feed(self, line: bytes) -> dict[str, Any] | None:
        """Decode one stdout line; ``None`` for a blank line or anything after the close."""
        if not line.strip() or self.closing is not None:
            return None
        self._lines += 1
        try:
            event = decode_event(line)
        except (ValueError, UnicodeDecodeError):
            error = ProtocolMismatchError(
                f"{self.source}: line {self._lines} from the engine is not an engine event"
            )
            if self._lines == 1:
                error.first_line = redact(line.decode("utf-8", "replace").strip())[:200]
            raise error from None
        if self.hello is None:
            self._check_hello(event)
            self.hello = event
        elif event["type"] in CLOSING_TYPES:
            self.closing = event
        return event

    def _check_hello(self, event: dict[str, Any]) -> None:
        if event.get("type") != "hello":
            raise ProtocolMismatchError(
                f"{self.source}: the engine did not start with hello (got {event.get('type')!r})"
            )
        try:
            negotiate(event.get("protocol"), event.get("engine"), mine=PROTOCOL_VERSION)
        except ValueError as exc:
            raise ProtocolMismatchError(f"{self.source}: {exc}") from None


def is_mutating(request: Request) -> bool:
    """A request that changes the panel: it outlives its connection, and a client
    that lost it re-attaches instead of giving up."""
    return request.op in MUTATING_OPS and not request.dry_run


def raise_for_closing(event: dict[str, Any]) -> None:
    """A closing ``error`` event becomes ``RemoteEngineError`` (after it was yielded)."""
    if event.get("type") == "error":
        raise RemoteEngineError(event)


class LocalEngineClient:
    """Runs ``python -I -u -m engine --profile P serve`` per request."""

    def __init__(
        self,
        profile_path: Path,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        *,
        event_timeout_s: float = 300.0,
        command: list[str] | None = None,
    ) -> None:
        self.profile_path = Path(profile_path)
        self.python = python
        self.env = dict(env) if env is not None else None
        self.event_timeout_s = event_timeout_s
        self.command = command or [
            python, "-I", "-u", "-m", "engine", "--profile", str(self.profile_path), "serve"
        ]  # fmt: skip

    @property
    def host_key_fingerprint(self) -> str:
        return "local"

    def run(self, request: Request) -> Iterator[dict[str, Any]]:
        """Yield every event as the engine writes it; a closing ``error`` is
        yielded, then raised as ``RemoteEngineError``."""
        stream = EventStream(f"local engine ({request.op} {request.id})")
        # Never the bot's whole environment: its Slack tokens must not reach the engine or its hooks.
        env = hook_environ(
            {"PYTHONUNBUFFERED": "1"},
            source=self.env if self.env is not None else os.environ,
            prefixes=("MYOSICAM_",),
        )
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise EngineCrashedError(f"{stream.source}: cannot start the engine") from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        drain = threading.Thread(target=_drain_stderr, args=(proc.stderr, stream.source))
        drain.daemon = True
        drain.start()
        try:
            try:
                proc.stdin.write(request.to_line().encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the engine exited at once; its stdout says why
            for line in _lines(proc.stdout, self.event_timeout_s, stream.source):
                event = stream.feed(line)
                if event is None:
                    continue
                yield event
                if stream.closing is not None:
                    break
            if stream.closing is None:
                status = proc.wait(timeout=self.event_timeout_s)
                raise EngineCrashedError(
                    f"{stream.source}: the engine exited with status {status} "
                    "without a closing event"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            raise_for_closing(stream.closing)
        finally:
            proc.stdout.close()
            if proc.poll() is None and stream.closing is None and not is_mutating(request):
                proc.kill()  # a read-only op nobody listens to any more
            drain.join(timeout=5)


def _drain_stderr(stream: IO[bytes], source: str) -> None:
    for raw in iter(stream.readline, b""):
        log_engine_stderr(source, raw.decode("utf-8", "replace"))
    stream.close()


def _lines(stdout: IO[bytes], timeout_s: float, source: str) -> Iterator[bytes]:
    """Lines from a pipe as they arrive; ``EngineTimeoutError`` after ``timeout_s`` of silence."""
    fd = stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise EngineTimeoutError(f"{source}: no event from the engine for {timeout_s:g} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            if pending:
                yield pending
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
        if complete:
            deadline = time.monotonic() + timeout_s
