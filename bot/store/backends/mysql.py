"""MySQL / MariaDB through PyMySQL: the store for several bot replicas."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bot.errors import StoreError
from bot.store import schema
from bot.store.backends import Backend


class MySQLBackend(Backend):
    mysql = True
    schema = schema.MYSQL
    insert_ignore = "INSERT IGNORE"

    def __init__(self, url: str) -> None:
        super().__init__()
        import pymysql

        self._pymysql = pymysql
        self.errors = (pymysql.Error,)
        self.duplicate_key_errors = (pymysql.err.IntegrityError,)
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        database = parts.path.lstrip("/")
        if not database:
            raise StoreError("the MySQL store URL needs a database name: mysql://user@host/db")
        self._params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": database,
            "charset": query.get("charset", "utf8mb4"),
            "autocommit": True,
            "connect_timeout": float(query.get("connect_timeout", 10)),
        }
        if "unix_socket" in query:
            self._params["unix_socket"] = query["unix_socket"]
        self._where = f"mysql://{self._params['host']}:{self._params['port']}/{database}"

    def _connect(self) -> Any:
        """PyMySQL's connect_timeout bounds the TCP connect only: a server that accepts and
        never greets would hold a handler's thread for ever. The greeting and the login get
        the same limit; statements none (the migration lock waits up to 60 s)."""
        limit = self._params["connect_timeout"]
        conn = self._pymysql.connect(**self._params, read_timeout=limit, write_timeout=limit)
        # PyMySQL reads both at each read and write (2.2; 1.1 too); tests/bot/test_store.py
        conn._read_timeout = conn._write_timeout = None  # type: ignore[attr-defined]
        return conn

    def connection(self) -> Any:
        """This thread's connection, replaced if the server dropped it (restart, idle timeout)."""
        conn = super().connection()
        try:
            conn.ping(reconnect=False)
        except self._pymysql.Error:
            self.discard(conn)
            conn = super().connection()
        return conn

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """A named server lock (``GET_LOCK``): replicas starting together migrate one at a time.
        MySQL commits each DDL statement by itself, so every migration must be safe to re-run."""
        from bot.store.migrations import LOCK_NAME

        conn = self.connection()
        with conn.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 60)", (LOCK_NAME,))
            row = cursor.fetchone()
        if not row or row[0] != 1:
            raise StoreError(f"the state store ({self.describe()}): another bot held the migration lock for 60 s")
        try:
            yield
        finally:
            with contextlib.suppress(self._pymysql.Error), conn.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))

    def _begin(self, conn: Any) -> None:
        conn.begin()

    def describe(self) -> str:
        return self._where
