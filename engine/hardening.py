"""Process hardening at engine start: no core dumps while the engine holds keys.

A core file of an engine mid-rotation would hold both keys and every
plaintext it re-encrypted. ``RLIMIT_CORE`` 0 stops the kernel writing one
(inherited by hooks); ``PR_SET_DUMPABLE`` 0 also keeps other processes of the
same user from attaching to it or reading its memory through ``/proc``.
"""

from __future__ import annotations

import resource
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def no_core_dumps() -> None:
    """Best effort: a limit or a call the platform refuses is not a reason to stop."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def dumpable() -> int:
    """``PR_GET_DUMPABLE`` of this process (Linux), for tests and ``status``."""
    import ctypes

    return int(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
