"""Expires pending requests on time, including those whose time passed while the bot was down.

One thread sleeps until the earliest ``expires_at`` among pending requests
(or ``max_wait_s``), expires what is due with a compare-and-swap (so a click
racing the expiry either approves first or finds the request expired), and
repaints the card. It runs a sweep at start, which is what expires requests
that ran out during a restart. A new request wakes it up early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bot.store import Store
from handlers.actions import expire_if_due
from handlers.rotation_request import RotationRequest

log = logging.getLogger(__name__)


class ExpiryWatcher:
    def __init__(
        self,
        store: Store,
        on_expired: Callable[[RotationRequest], None],
        *,
        clock: Callable[[], float] = time.time,
        max_wait_s: float = 30.0,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_every_s: float = 600.0,
    ) -> None:
        self.store = store
        self.on_expired = on_expired
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.housekeeping = housekeeping
        self.housekeeping_every_s = housekeeping_every_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def expire_due(self) -> list[RotationRequest]:
        """Expire every pending request whose time has come; returns those this call expired."""
        now = self.clock()
        expired = []
        for request in self.store.pending_due(now):
            stored = expire_if_due(self.store, request, now)
            if stored is None:
                continue  # a click got there first
            expired.append(stored)
            try:
                self.on_expired(stored)
            except Exception:
                log.exception("could not report the expiry of %s", stored.id)
        return expired

    def notify(self) -> None:
        """A request was created: recompute the next deadline."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="expiry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _next_wait(self) -> float:
        upcoming = self.store.next_expiry()
        if upcoming is None:
            return self.max_wait_s
        return min(max(upcoming - self.clock(), 0.01), self.max_wait_s)

    def _loop(self) -> None:
        last_housekeeping = time.monotonic()
        while not self._stop.is_set():
            wait = self.max_wait_s
            try:
                self.expire_due()
                wait = self._next_wait()
                if (
                    self.housekeeping
                    and time.monotonic() - last_housekeeping > self.housekeeping_every_s
                ):
                    self.housekeeping()
                    last_housekeeping = time.monotonic()
            except Exception:
                log.exception("expiry sweep failed; trying again in %.0f s", wait)
            self._wake.wait(wait)
            self._wake.clear()
