"""Connections and transactions, one module per database: ``sqlite`` (default) and ``mysql``.

``Backend`` is what the rest of the store sees: ``transaction()`` yields a
``Tx``; ``errors`` and ``duplicate_key_errors`` name the driver's exceptions so
the store can translate them once (``bot.store.database``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from bot.store.sql import Tx


class Backend:
    """A connection per thread, a transaction per ``transaction()``."""

    mysql = False
    schema: Sequence[str] = ()
    insert_ignore = "INSERT OR IGNORE"
    errors: tuple[type[BaseException], ...] = ()
    duplicate_key_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """Held while migrations run, so that processes sharing the store migrate once."""
        yield

    def connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        conn = self.connection()
        self._begin(conn)
        cursor = conn.cursor()
        try:
            yield Tx(cursor, self.mysql)
        except BaseException:
            with contextlib.suppress(*self.errors):
                conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            with contextlib.suppress(*self.errors):
                cursor.close()

    def discard(self, conn: Any) -> None:
        """Forget a broken connection; this thread's next call opens a new one."""
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        self._local.conn = None
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()
