"""The engine's own record of every run: ``<journal>/runs.jsonl``, append-only, 0600.

The bot keeps an audit log too, but the bot's key can neither write nor rewrite
this file: no protocol operation writes it except by running, and each run adds
its own lines (one when it starts, one with its outcome). It lives on the panel
host, written by the engine's user (root in production), so it records who the
bot said asked and approved, why, the plan hash the run named, and what came of
it, even if the bot's host is compromised later. ``status`` shows the latest
entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

FILE_NAME = "runs.jsonl"
_TAIL_BYTES = 512 * 1024  # ``recent`` reads no more of a long record than this


class RunRecord:
    def __init__(self, journal_dir: Path) -> None:
        self.path = journal_dir / FILE_NAME

    def append(self, entry: dict[str, Any]) -> None:
        """One JSON line, appended and fsynced; never follows a symlink."""
        line = json.dumps({"ts": int(time.time() * 1000), **entry}, separators=(",", ":"))
        data = (line + "\n").encode()  # bounded by the request's own limits
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{self.path} is not a regular file")
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` entries, oldest first (unreadable lines skipped)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            lines = handle.read().splitlines()[-limit:]
        out = []
        for raw in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
                if isinstance(value, dict):
                    out.append(value)
        return out
