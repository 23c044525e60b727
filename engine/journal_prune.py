"""Pruning the journal folder's per-run files after ``journal_keep_days`` (issue 22, item 3).

Every run leaves ``events/<id>.events.jsonl`` (for ``attach``) and an archive in ``done/``
(``agents/done/`` for agent tokens); without pruning they grow for ever. After each
mutating run, files there older than the profile's ``journal_keep_days`` (default 90) are
removed. Kept always: ``runs.jsonl`` (the host's record of every run), ``key-history.json``
(which refuses a key used before), every unfinished journal, and the events of a run still
going (its ``.running`` file is locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

#: (folder under journal_dir, file name patterns pruned there)
PRUNED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("events", ("*.events.jsonl", "*.running")),
    ("done", ("*.json",)),
    ("agents/done", ("*.json",)),
)


def _still_running(running: Path) -> bool:
    """True while an engine holds the lock on ``<id>.running``."""
    try:
        fd = os.open(running, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def prune_journal(journal_dir: Path, keep_days: float, now: float | None = None) -> list[Path]:
    """Remove per-run files older than ``keep_days``; return what was removed."""
    cutoff = (time.time() if now is None else now) - keep_days * 86400
    removed: list[Path] = []
    for folder, patterns in PRUNED:
        where = journal_dir / folder
        if where.is_symlink() or not where.is_dir():
            continue
        for pattern in patterns:
            for path in sorted(where.glob(pattern)):
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if info.st_mtime >= cutoff or not path.is_file() or path.is_symlink():
                    continue
                run_id = path.name.split(".")[0]
                if folder == "events" and _still_running(where / f"{run_id}.running"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed
