"""The php-fpm stop, begun while the locked apply still runs.

Why: from the apply's first row to the commit, a panel user saving to a row already
applied waits. With the stop after the apply, that wait was the apply *plus* the
stop (php-fpm's own shutdown took about 2 s here); the stop needs nothing from the
apply, so the two can overlap and the wait becomes the longer of the two. Old
workers still running meanwhile read the committed rows, still under the old key
(the apply's writes are invisible until the commit), and the commit still comes after
the last of them is gone, so no worker ever holds one key while the rows are under
the other. Measured with bench/write_stall.py (README, "Benchmarks").

The stop is begun only when the apply is expected to end within the stop's expected
duration (the last stop this host measured, from ``runs.jsonl``), so that the panel is
not down longer than the stop itself would keep it. Begun too early, the panel would be
unavailable while the apply finishes, and a save meeting a stopped panel is lost (the
form answered 502) where a save meeting a locked row only waits; begun too late, saves
wait as they did before. So until a host has measured its own stop (its first rotation
with the restart split), the stop follows the apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import hooks
from engine.errors import EngineError
from engine.runs import RunRecord

#: The expectation until this host has measured a stop of its own: none, so the stop
#: follows the apply (php-fpm's stop took 0.09 s behind nginx with 8 busy clients and
#: 2.0 s with 4 idle static children here: no default fits every host).
DEFAULT_STOP_S = 0.0


@dataclass(frozen=True)
class HostTimings:
    """What this host's latest runs measured (``runs.jsonl``): how long the php-fpm stop
    took, and how fast the locked apply wrote (bytes/s; 0 before any run recorded it)."""

    stop_s: float = DEFAULT_STOP_S
    apply_bytes_per_s: float = 0.0


def _figure(entry: dict[str, Any], name: str) -> float | None:
    value = entry.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def host_timings(journal_dir: Path) -> HostTimings:
    """The latest stop and apply rate this host's runs recorded, each from the newest run that has it."""
    stop_ms = rate = None
    for entry in reversed(RunRecord(journal_dir).recent(20)):
        stop_ms = stop_ms if stop_ms is not None else _figure(entry, "stop_ms")
        rate = rate if rate is not None else _figure(entry, "apply_bytes_per_s")
    return HostTimings(DEFAULT_STOP_S if stop_ms is None else stop_ms / 1000, rate or 0.0)


def apply_ends_within(seconds: float, bytes_left: int, bytes_done: int, applying_s: float,
                      fallback_rate: float) -> bool:
    """Whether an apply with ``bytes_left`` to write is expected to end within ``seconds``:
    at the rate of what it wrote so far, or, before it has written anything,
    ``fallback_rate`` (bytes/s)."""
    if bytes_left <= 0:
        return True
    rate = bytes_done / applying_s if bytes_done > 0 and applying_s > 0 else fallback_rate
    return rate > 0 and bytes_left / rate <= seconds


class ApplyClock:
    """Times the locked apply column by column and begins ``ahead`` (the stop) once the
    rest of the apply fits in the stop this host measured. Before the first column the
    rate is the one this host's last apply measured, else the pass's (which wrote the
    same bytes into the staging tables, and was slower than the apply in
    bench/apply_profile.py: the stop then begins later, never earlier)."""

    def __init__(self, ahead: StopAhead, sizes: dict[str, int], timings: HostTimings, pass_rate: float,
                 on_begin: Callable[[], None]) -> None:
        self.ahead = ahead
        self.sizes = sizes
        self.timings = timings
        self.fallback_rate = timings.apply_bytes_per_s or pass_rate
        self.on_begin = on_begin
        self.done: list[str] = []
        self.started: float | None = None
        #: bytes/s of this apply, once it is over
        self.measured_rate = 0.0

    def at(self, label: str | None, *, may_begin: bool = True) -> None:
        """Before the column ``label``'s apply, or (``None``) once every column is applied."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
        written = sum(self.sizes[name] for name in self.done)
        if label is None and now > self.started:
            self.measured_rate = written / (now - self.started)
        if may_begin and not self.ahead.begun:
            left = sum(size for name, size in self.sizes.items() if name not in self.done)
            if label is None or apply_ends_within(self.timings.stop_s, left, written, now - self.started,
                                                  self.fallback_rate):
                self.on_begin()
                self.ahead.begin(during_apply=label is not None)
        if label is not None:
            self.done.append(label)


class StopAhead:
    """Runs the stop command on a thread of its own once ``begin`` is called; ``wait``
    joins it and returns how long the stop took, or raises the hook's error."""

    def __init__(self, stop: list[str], timeout_s: float,
                 run: Callable[..., str] = hooks.run_command) -> None:
        self._stop = stop
        self._timeout_s = timeout_s
        self._run = run
        self._thread: threading.Thread | None = None
        self._error: EngineError | None = None
        #: how long the stop took, from ``begin`` to its end (ms)
        self.took_ms = 0
        self.begun_at: float | None = None
        #: begun while columns were still to be applied (not once the apply was over)
        self.during_apply = False

    @property
    def begun(self) -> bool:
        return self._thread is not None

    def begin(self, *, during_apply: bool = False) -> None:
        if self._thread is not None:
            return
        self.during_apply = during_apply
        self.begun_at = time.monotonic()
        self._thread = threading.Thread(target=self._stop_panel, name="stop-ahead", daemon=True)
        self._thread.start()

    def _stop_panel(self) -> None:
        assert self.begun_at is not None
        try:
            self._run("stop", self._stop, timeout_s=self._timeout_s)
        except EngineError as exc:
            self._error = exc
        finally:
            self.took_ms = round((time.monotonic() - self.begun_at) * 1000)

    def wait(self) -> int:
        """Begin the stop if it was not, wait for it; its duration in ms."""
        self.begin()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.took_ms

    def settle(self) -> None:
        """On a failure: let a stop in flight end (its error dropped: the rollback restarts
        the panel anyway), so that the restart never races it."""
        if self._thread is not None:
            self._thread.join()
