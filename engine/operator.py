"""Who ran the engine by hand, for the break-glass command's record (issue 22, item 6).

The bot says who asked and approved; on the panel host the person is the one at the
terminal. Run through sudo (as the guide says), that is ``SUDO_USER``; otherwise the
account the engine runs as. The record says ``cli:NAME`` (``cli:NAME via sudo``), so a run
from the command line is never an anonymous "cli".
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,31}$")


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def command_line_operator(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """``cli:alice via sudo`` (root through sudo), else ``cli:`` and the account that runs it.

    ``SUDO_USER`` counts only when running as root (an unprivileged user could set it by
    hand), and only when it names an account the way sudo writes it."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    sudo_user = env.get("SUDO_USER", "")
    if uid == 0 and sudo_user and sudo_user != "root" and _NAME.fullmatch(sudo_user):
        return f"cli:{sudo_user} via sudo"
    return f"cli:{_account(uid)}"
