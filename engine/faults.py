"""Named pause points, so crash tests can kill the real engine at an exact moment.

With ``MYOSICAM_ENGINE_FAULT=stop@<point>`` in its environment the engine
stops itself (SIGSTOP) when it reaches ``<point>``; the test then SIGKILLs it
(a crash), or cuts its SSH session and lets it continue (SIGCONT). Points are
``state:<STATE>`` right after a state is journaled, ``reencrypt:batch:<n>``
after the n-th batch of the unlocked pass is staged, ``pass:done`` (the pass
over, nothing journaled, no row locked), ``apply:caught-up`` (the panel's saves
since the pass re-staged, still unlocked), ``apply:<table.column>`` before a
column's locked apply, ``apply:done`` (every column applied and re-sealed under
the lock, nothing committed), ``commit:before``
(one restart command: the panel restarted, the commit next), and, with the
restart split, ``restart:stopped`` (the panel stopped, the commit next) and
``commit:done`` (committed, the panel not started yet).
Without the variable this is a no-op; it never changes what the engine does.
"""

from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "MYOSICAM_ENGINE_FAULT"


def checkpoint(point: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    for item in spec.split(","):
        action, _, where = item.partition("@")
        if where == point and action == "stop":
            # To this thread: it stops before its next instruction. os.kill() to the process
            # may be taken by another thread while this one runs on (agents rotate in threads),
            # past the point: a crash "mid-write" then came after the rename.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
