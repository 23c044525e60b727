"""The write-ahead journal of a rotation, on the panel host.

The journal holds both keys of an unfinished rotation (docs/architecture.md §4 rule 1: the
new key is stored before any row is written with it), so it lives in a 0700
folder, the file is 0600 and every write is fsynced and renamed into place.
When a rotation ends (DONE or ROLLED_BACK) the keys are dropped: what stays
is an archive with fingerprints only, plus the key history used to refuse a
key that was used before.

Files in ``journal_dir``::

    lock                  flock'ed by the running engine; holds its pid
    rotation.json         the unfinished rotation (keys inside), if any
    env.backup            the previous .env, 0600, until the rotation ends
    key-history.json      fingerprints of every key this panel has had
    done/<id>.json        finished rotations, fingerprints only
    events/<id>.events.jsonl   every event, for ``attach``
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from engine.envfile import remove_stale_temps, replace_in
from engine.errors import EngineError, LockedError

STATES = (
    "PREFLIGHT",
    "STAGED",
    "REENCRYPTED",
    "DB_VERIFIED",
    "ENV_WRITTEN",
    "RESTARTED",
    "SWEPT",
    "VERIFIED",
    "BACKED_UP",
    "DONE",
    "ROLLING_BACK",
    "ROLLED_BACK",
)
#: From here on, the new key is in .env: recovery finishes the rotation by default.
FORWARD_STATES = frozenset({"ENV_WRITTEN", "RESTARTED", "SWEPT", "VERIFIED", "BACKED_UP", "DONE"})


def _open_private_dir(path: Path) -> int:
    """An fd on a journal folder: not a symlink, owned by root or this engine's user."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if path.is_symlink():
            raise EngineError(
                f"the journal folder {path} is a symbolic link; the engine refuses to keep keys "
                "through it (set journal_dir to the real folder)"
            ) from None
        raise EngineError(f"cannot open the journal folder {path}: {exc.strerror}") from exc
    owner = os.fstat(fd).st_uid
    if owner not in (0, os.geteuid()):
        os.close(fd)
        raise EngineError(
            f"the journal folder {path} is owned by uid {owner}, not root or this engine's user; "
            "refusing to keep keys there"
        )
    return fd


def _fsync_dir(path: Path) -> None:
    fd = _open_private_dir(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """0600, fsynced, atomically renamed: a new file under a random name, made with
    ``O_EXCL|O_NOFOLLOW`` relative to the folder's fd (nothing planted is followed)."""
    dir_fd = _open_private_dir(path.parent)
    try:
        replace_in(dir_fd, path.name, data, 0o600)
    finally:
        os.close(dir_fd)


def archived(done_dir: Path, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` finished rotations in ``done_dir`` (secrets dropped), newest first:
    every journal's ``finished()``."""
    if not done_dir.exists():
        return []
    files = sorted(done_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for path in files[:limit]:
        with contextlib.suppress(ValueError, OSError):
            out.append(json.loads(path.read_bytes()))
    return out


@dataclass
class JournalRecord:
    rotation_id: str
    op: str
    state: str
    old_key: str
    new_key: str
    scheme: str
    old_fingerprint: str
    new_fingerprint: str
    started_at: float
    requested_by: str | None = None
    approved_by: list[str] = field(default_factory=list)
    reason: str | None = None
    committed: bool = False
    restarted: bool = False
    trail: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """Everything but the keys."""
        data = asdict(self)
        data.pop("old_key")
        data.pop("new_key")
        return data


class _Record(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]
    rotation_id: str
    state: str
    trail: list[str]

    def public(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Record)


class RecordFiles(Generic[R]):
    """An unfinished rotation's record and ``.env`` backup in the journal folder, and its
    archive without secrets: the one code for the key's journal and the DB password's."""

    dir: Path
    current: Path
    env_backup: Path
    done_dir: Path
    #: The record's dataclass, and what its file holds (named when the file is damaged).
    record_type: type[R]
    holds: str

    def load(self) -> R | None:
        try:
            raw = self.current.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return self.record_type(**json.loads(raw))
        except (ValueError, TypeError):
            raise EngineError(
                f"the journal {self.current} is damaged; it holds {self.holds} of an unfinished "
                "rotation: keep it and contact support"
            ) from None

    def save(self, record: R) -> None:
        if not record.trail or record.trail[-1] != record.state:
            record.trail.append(record.state)
        write_private(self.current, json.dumps(asdict(record)).encode())

    def archive(self, record: R) -> None:
        """``done/<id>.json``: the record without its secrets."""
        self.done_dir.mkdir(mode=0o700, exist_ok=True)
        write_private(self.done_dir / f"{record.rotation_id}.json", json.dumps(record.public()).encode())

    def drop_current(self) -> None:
        """The record and the ``.env`` backup removed (the secrets with them), durably."""
        self.current.unlink(missing_ok=True)
        self.env_backup.unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def save_env_backup(self, data: bytes) -> None:
        write_private(self.env_backup, data)

    def read_env_backup(self) -> bytes | None:
        try:
            return self.env_backup.read_bytes()
        except FileNotFoundError:
            return None


class Journal(RecordFiles[JournalRecord]):
    record_type = JournalRecord
    holds = "the keys"

    def __init__(self, directory: Path, env_path: Path | None = None) -> None:
        self.dir = directory
        self.env_path = env_path
        self.removed_temps: list[str] = []
        self.current = directory / "rotation.json"
        self.env_backup = directory / "env.backup"
        self.history_file = directory / "key-history.json"
        self.done_dir = directory / "done"
        self.events_dir = directory / "events"
        self._lock_fd: int | None = None

    def ensure_dir(self) -> None:
        """Make the folder (0700) or refuse one that is a symlink or another user's."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"cannot create journal_dir {self.dir}: {exc.strerror}") from exc
        fd = _open_private_dir(self.dir)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    # -- lock -----------------------------------------------------------------
    def acquire_lock(self) -> None:
        self.ensure_dir()
        dir_fd = _open_private_dir(self.dir)
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"another engine run (pid {holder}) holds this panel's lock; "
                "wait for it to finish, or look at it with `status`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self.removed_temps = self.remove_stale_temps()

    def remove_stale_temps(self) -> list[str]:
        """The temporary files a killed run left between a write and its rename, removed: in
        every journal folder (key, database password, agents) and, of ``.env`` only, beside it.
        They may hold a new key, password or install token that nothing else would ever
        remove. Called holding the lock, so no run of this engine is writing one now."""
        folders = (self.dir, self.done_dir, self.dir / "agents", self.dir / "agents" / "done")
        removed = [name for folder in folders for name in remove_stale_temps(folder)]
        if self.env_path is not None:
            removed += remove_stale_temps(self.env_path.parent, stem=self.env_path.name)
        return removed

    def lock_holder(self) -> int | None:
        """The pid of the engine run holding this panel's lock now, or None (read-only)."""
        try:
            fd = os.open(self.dir / "lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- the unfinished rotation ---------------------------------------------
    def finish(self, record: JournalRecord) -> None:
        """Archive without keys, remember fingerprints, drop the keys and backup."""
        self.archive(record)
        self.remember(record.old_fingerprint, record.new_fingerprint)
        self.drop_current()

    # -- key history (fingerprints only) -------------------------------------
    def history(self) -> list[str]:
        try:
            data = json.loads(self.history_file.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError:
            return []
        return [str(fp) for fp in data]

    def remember(self, *fingerprints: str) -> None:
        known = self.history()
        for fp in fingerprints:
            if fp not in known:
                known.append(fp)
        write_private(self.history_file, json.dumps(known).encode())

    def finished(self, limit: int = 5) -> list[dict[str, Any]]:
        return archived(self.done_dir, limit)
