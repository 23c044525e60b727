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
        """Apply, once each and in order, the migrations this database has not had
        (``bot.store.migrations``); refuse a database migrated by a newer bot."""
        from bot.store import migrations  # migrations -> schema -> audit_chain -> this module

        todo = migrations.MIGRATIONS
        migrations.check_order(todo)
        mysql = self._backend.mysql
        with self._translated("create the tables (apply its schema migrations)"), self._backend.migration_lock():
            conn = self._backend.connection()
            cursor = conn.cursor()
            try:
                cursor.execute(migrations.VERSIONS_TABLE[mysql])
                cursor.execute("SELECT version FROM schema_migrations")
                applied = {int(row[0]) for row in cursor.fetchall()}
                newest = migrations.latest(todo)
                if applied and max(applied) > newest:
                    raise StoreError(
                        f"the state store ({self.describe()}) has schema version {max(applied)}, from a newer "
                        f"bot; this bot knows up to {newest}: upgrade this bot (never downgrade a store)"
                    )
                mark = "%s" if mysql else "?"
                for migration in todo:
                    if migration.version in applied:
                        continue
                    for statement in migration.statements(mysql):
                        cursor.execute(statement)
                    self._add_missing_columns(conn, migration.add_columns)
                    cursor.execute(
                        f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({mark}, {mark}, {mark})",
                        (migration.version, migration.name, self.clock()),
                    )
            finally:
                cursor.close()
        return self

    def schema_version(self) -> int:
        """The newest migration applied to this database (0: none)."""
        with self._translated("read its schema version"), self.transaction() as tx:
            row = tx.one("SELECT MAX(version) FROM schema_migrations")
        return int(row[0]) if row and row[0] is not None else 0

    def _add_missing_columns(self, conn: Any, columns: tuple[tuple[str, str, str], ...]) -> None:
        """Columns a migration adds, each unless the table has it already: a store made between
        the column's arrival and versioned migrations has it (same SQL on both dialects)."""
        for table, column, definition in columns:
            if column in self._columns(conn, table):
                continue
            cursor = conn.cursor()
            try:
                cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
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
