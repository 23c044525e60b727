"""Where engine events go: numbered once, then fanned out to sinks.

An ``Emitter`` stamps each event with the rotation ``id``, a ``seq`` and a
timestamp, then hands it to every sink: the JSON Lines stdout of ``serve``,
the human printer of the CLI, and the on-disk ``EventLog`` that lets a bot
``attach`` after its SSH session dropped. A sink that fails (a closed stdout)
is dropped; the operation carries on, because a rotation that has started must
finish whoever is listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from engine import protocol

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: serve's hello must not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any

    Sink = Callable[[dict[str, Any]], None]

class Emitter:
    def __init__(self, rotation_id: str, sinks: list[Sink] | None = None, first_seq: int = 1) -> None:
        self.rotation_id = rotation_id
        self._sinks: list[Sink] = list(sinks or [])
        self._seq = first_seq - 1
        self.closed = False
        #: the part of a ``rotate-incident`` run the events belong to (stamped as ``part``)
        self.part: str | None = None

    @property
    def seq(self) -> int:
        return self._seq

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        stamped = {"id": self.rotation_id, "seq": self._seq, "ts": protocol.now_ms(), **event}
        if self.part is not None and "part" not in stamped:
            stamped["part"] = self.part
        for sink in list(self._sinks):
            try:
                sink(stamped)
            except (OSError, ValueError):
                self._sinks.remove(sink)
        if event.get("type") in protocol.CLOSING_TYPES:
            self.closed = True
        return stamped

    def step(
        self,
        name: str,
        state: protocol.StepState,
        detail: str = "",
        elapsed_ms: int | None = None,
        **data: Any,
    ) -> dict[str, Any]:
        return self.emit(protocol.step_event(name, state, detail, elapsed_ms, **data))

    def progress(self, name: str, done: int, total: int) -> None:
        self.emit(protocol.progress_event(name, done, total))


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def ms(self) -> int:
        return int((time.monotonic() - self._start) * 1000)


def json_sink(stream: IO[str]) -> Sink:
    """JSON Lines to a text stream, flushed per event so SSH readers see it at once."""

    def write(event: dict[str, Any]) -> None:
        stream.write(protocol.encode_event(event))
        stream.flush()

    return write


class EventLog:
    """Append-only per-rotation event file, read back by ``attach``."""

    def __init__(self, directory: Path, rotation_id: str) -> None:
        self.path = directory / f"{rotation_id}.events.jsonl"

    def sink(self) -> Sink:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "a", encoding="utf-8")

        def write(event: dict[str, Any]) -> None:
            handle.write(protocol.encode_event(event))
            handle.flush()
            os.fsync(handle.fileno())
            if event.get("type") in protocol.CLOSING_TYPES:
                handle.close()

        return write

    def exists(self) -> bool:
        return self.path.exists()

    def replay(
        self,
        after_seq: int,
        follow: bool = True,
        poll_s: float = 0.05,
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events with ``seq > after_seq``; with ``follow``, wait for new ones
        until the closing event (or ``timeout_s`` of silence)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        offset = 0
        buffer = ""
        while True:
            with contextlib.suppress(FileNotFoundError), self.path.open(encoding="utf-8") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset = handle.tell()
                buffer += chunk
            lines = buffer.split("\n")
            buffer = lines.pop()
            got_any = False
            for line in lines:
                if not line.strip():
                    continue
                got_any = True
                event = json.loads(line)
                if event.get("hello"):
                    continue
                if int(event.get("seq", 0)) > after_seq:
                    yield event
                if event.get("type") in protocol.CLOSING_TYPES:
                    return
            if not follow:
                return
            if got_any and timeout_s is not None:
                deadline = time.monotonic() + timeout_s
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(poll_s)
