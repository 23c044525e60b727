"""Named pause points, so crash tests can kill the real engine at an exact moment.

With ``MYOSICAM_ENGINE_FAULT=stop@<point>`` in its environment the engine
stops itself (SIGSTOP) when it reaches ``<point>``; the test then SIGKILLs it
(a crash), or cuts its SSH session and lets it continue (SIGCONT). Points are
``state:<STATE>`` right after a state is journaled, ``reencrypt:batch:<n>``
after the n-th batch is written inside the transaction, ``commit:before``
(one restart command: the panel restarted, the commit next), and, with the
restart split, ``restart:stopped`` (the panel stopped, the commit next) and
``commit:done`` (committed, the panel not started yet).
Without the variable this is a no-op; it never changes what the engine does.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "MYOSICAM_ENGINE_FAULT"


def checkpoint(point: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    for item in spec.split(","):
        action, _, where = item.partition("@")
        if where == point and action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
