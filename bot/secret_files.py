"""Refuse a file that holds a secret when other users can read it.

Like OpenSSH with a private key whose mode is too open: the bot does not start, and the
message names the file and the command that fixes it. Checked for the audit key, the
enrollment key, and ``ROTATOR_CONFIG`` when it holds a secret (a store password in the
``store`` URL, a ``key_passphrase``). Group access is allowed: the setup script makes
``rotator.toml`` 0640 ``root:<bot group>``, so root owns it and the bot reads it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.errors import SettingsError

#: the permission bits that let any user on the host read or change the file
_OTHERS = stat.S_IROTH | stat.S_IWOTH


def refuse_if_others_can_read(path: Path, setting: str, holds: str) -> None:
    """Raise SettingsError when ``path`` (followed) is readable or writable by other users."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # the reader's own error names a missing or unreadable file
    if mode & _OTHERS:
        raise SettingsError(
            f"{setting}: {path} holds {holds} and other users can read it (mode {mode:04o}); "
            f"the bot refuses it, as ssh refuses a private key anyone can read. "
            f"Fix: `chmod o-rwx {path}` (0600 for the bot's user, or 0640 root:<bot group>)"
        )


def secrets_in_config(raw: Mapping[str, Any]) -> list[str]:
    """What in a parsed ``ROTATOR_CONFIG`` is a secret (empty when nothing is)."""
    found = []
    store = raw.get("store")
    if isinstance(store, str) and store.startswith("mysql://"):
        try:
            if urlsplit(store).password:
                found.append("the store's password")
        except ValueError:
            pass
    for table in ("panels", "local_panels"):
        panels = raw.get(table)
        if isinstance(panels, Mapping) and any(
            isinstance(entry, Mapping) and entry.get("key_passphrase") for entry in panels.values()
        ):
            found.append("an SSH key passphrase")
            break
    return found


def refuse_loose_config(path: Path, raw: Mapping[str, Any]) -> None:
    """``refuse_if_others_can_read`` for the config, when it holds a secret."""
    held = secrets_in_config(raw)
    if held:
        refuse_if_others_can_read(path, "ROTATOR_CONFIG", " and ".join(held))
