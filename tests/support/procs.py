"""Waiting on processes and conditions with a deadline, instead of sleeping.

Crash tests run the engine with ``MYOSICAM_ENGINE_FAULT=stop@<point>``
(engine/faults.py): the engine SIGSTOPs itself at that point, the test finds
it here in state ``T`` and then SIGKILLs it (a crash) or SIGCONTs it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def run_bot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` from the repository with exactly ``env``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(
    condition: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy; return that, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def process_table() -> list[tuple[int, str, list[str]]]:
    """(pid, state letter, argv) of every process we can see in /proc."""
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        state = stat.rsplit(")", 1)[1].split()[0]
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        procs.append((int(entry.name), state, argv))
    return procs


def wait_for_stopped(
    predicate_on_cmdline: Callable[[list[str]], bool], timeout: float = 30.0
) -> int:
    """The pid of a process whose argv matches and that is stopped (state ``T``).

    The engine stops itself at a fault point (SIGSTOP); this waits for that
    moment. Raises TimeoutError naming the matching processes and their states.
    """

    def stopped() -> int | None:
        for pid, state, argv in process_table():
            if state == "T" and argv and predicate_on_cmdline(argv):
                return pid
        return None

    try:
        return wait_until(stopped, timeout, what="a stopped matching process")
    except TimeoutError:
        seen = [f"{pid}:{state}" for pid, state, argv in process_table()
                if argv and predicate_on_cmdline(argv)]
        raise TimeoutError(
            f"no matching process stopped within {timeout}s; matching (pid:state): "
            f"{', '.join(seen) or 'none'}"
        ) from None
