"""The store's common ground: a backend, a clock, transactions and the one error translation.

Errors of ``sqlite3`` and ``pymysql`` are translated once, here, into
``StoreError`` (whose message never carries the URL's password).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

from bot.audit_key import AuditKey
from bot.errors import StoreError
from bot.store.backends import Backend
from bot.store.sql import Tx


class Database:
    def __init__(
        self,
        backend: Backend,
        clock: Callable[[], float] = time.time,
        audit_key: AuditKey | None = None,
    ) -> None:
        self._backend = backend
        self.clock = clock
        #: signs the audit log; without it the store reads but cannot append (``audit_chain``)
        self.audit_key = audit_key

    def migrate(self) -> Self:
        with self._translated("create the tables"):
            conn = self._backend.connection()
            cursor = conn.cursor()
            for statement in self._backend.schema:
                cursor.execute(statement)
            cursor.close()
            self._add_missing_columns(conn)
        return self

    def _add_missing_columns(self, conn: Any) -> None:
        """``schema.ADDED_COLUMNS`` that an older store lacks (two replicas may race: fine)."""
        from bot.store.schema import ADDED_COLUMNS  # schema -> audit_chain -> this module

        for table, column, definition in ADDED_COLUMNS:
            if column in self._columns(conn, table):
                continue
            cursor = conn.cursor()
            try:
                cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except self._backend.errors:
                if column not in self._columns(conn, table):  # not another replica's doing
                    raise
            finally:
                cursor.close()

    @staticmethod
    def _columns(conn: Any, table: str) -> set[str]:
        cursor = conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            cursor.fetchall()
            return {str(d[0]) for d in cursor.description or ()}
        finally:
            cursor.close()

    def close(self) -> None:
        self._backend.close()

    def describe(self) -> str:
        return self._backend.describe()

    def ping(self) -> bool:
        with self._translated("answer a ping"), self.transaction() as tx:
            return tx.one("SELECT 1") is not None

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except self._backend.errors as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else ""
            raise StoreError(
                f"the state store ({self.describe()}) could not {doing}: "
                f"{type(exc).__name__} {code}".rstrip()
            ) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._translated("complete a transaction"), self._backend.transaction() as tx:
            yield tx
