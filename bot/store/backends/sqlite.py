"""SQLite: the default store, for one bot process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from bot.errors import StoreError
from bot.store import schema
from bot.store.backends import Backend
from bot.store.sql import Tx


class SQLiteBackend(Backend):
    """One connection, one transaction at a time within this process.

    SQLite serialises writers anyway; letting threads queue on a Python lock
    instead of SQLite's busy handler (which sleeps in steps of up to 100 ms)
    keeps a Slack acknowledgement from waiting behind a sleeping retry. Other
    processes on the same file still meet SQLite's own locking.
    """

    schema = schema.SQLITE
    errors = (sqlite3.Error,)
    duplicate_key_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._one = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the state store ({self.describe()}) is closed")
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._one, super().transaction() as tx:
            yield tx

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """One write transaction: another process opening the same file waits (SQLite's DDL is
        transactional, so a migration that fails leaves nothing half done)."""
        with self._one:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()

    def close(self) -> None:
        with self._one:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> sqlite3.Connection:
        try:
            _make_private(self.path)
        except OSError as exc:
            raise StoreError(
                f"the state store ({self.describe()}) could not be made private (0600): "
                f"{exc.strerror}"
            ) from None
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def describe(self) -> str:
        return f"sqlite://{self.path}"


def _make_private(path: Path) -> None:
    """Create the database file 0600, and tighten an existing one and its -wal/-shm to 0600.

    SQLite creates the -wal and -shm files with the database file's mode, so a
    private database keeps its journal private too. Requests and the audit log
    name people, panels and reasons: only the bot's user reads them.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            side = path.with_name(path.name + suffix)
            if side.stat().st_mode & 0o077:
                side.chmod(0o600)
