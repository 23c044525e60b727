"""Items produced on a thread of their own, a few ahead of the one using them.

The rotation's pass reads the panel's values on a second connection (one consistent
snapshot, no row lock) while its own connection sends the staging INSERTs: PyMySQL
waits on its socket without holding the GIL, so the server reads the next batch while
it writes the previous one. Temporary tables belong to the connection that made them,
so the writes cannot move; the reads can.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.1


def read_ahead(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """Yield ``items`` in order, produced on a thread up to ``depth`` ahead. An error
    raised while producing one is raised here, where it would have been; closing this
    generator (or stopping early) stops the thread after the item it is producing."""
    ready: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own clean-up runs here, on its thread
        put((False, None))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = ready.get()
            if ok:
                yield item  # type: ignore[misc]
            elif item is None:
                return
            else:
                raise item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
