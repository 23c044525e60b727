"""A fresh, uniquely named database per test on the shared MariaDB (127.0.0.1:3306).

Several engineers' test sessions share one server, so every database is named
``myo_t_<pid>_<random>`` and dropped at teardown; ``drop_stale_databases``
removes only those left behind by sessions whose process no longer runs.
The schema is ``schema.sql`` next to this file, one ``CREATE TABLE`` per table.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

HOST = "127.0.0.1"
PORT = 3306
ADMIN_USER = "root"
ADMIN_PASSWORD = ""
DB_PREFIX = "myo_t_"
SCHEMA_PATH = Path(__file__).with_name("schema.sql")
_CREATE = re.compile(r"CREATE TABLE\s+`?(\w+)`?", re.IGNORECASE)


def schema_statements() -> dict[str, str]:
    """``{table: CREATE TABLE statement}`` in file order."""
    text = "\n".join(
        line for line in SCHEMA_PATH.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    statements = {}
    for stmt in (s.strip() for s in text.split(";")):
        if stmt:
            match = _CREATE.match(stmt)
            if not match:
                raise ValueError(f"schema.sql holds a statement that is not CREATE TABLE: {stmt}")
            statements[match.group(1)] = stmt
    return statements


ALL_TABLES: tuple[str, ...] = tuple(schema_statements())


def admin_connect(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(
        host=HOST,
        port=PORT,
        user=ADMIN_USER,
        password=ADMIN_PASSWORD,
        database=database,
        charset="utf8mb4",
        autocommit=True,
        ssl_disabled=True,
    )


@dataclass
class TestDatabase:
    """One test's database. ``user``/``password`` is a login limited to it (see ``create``)."""

    __test__ = False  # not a pytest test class

    name: str
    tables: tuple[str, ...]
    user: str = ADMIN_USER
    password: str = field(default=ADMIN_PASSWORD, repr=False)
    host: str = HOST
    port: int = PORT

    def connect(self, **kwargs: Any) -> pymysql.Connection:
        """A connection as the test's own user, autocommit on unless overridden."""
        settings: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.name,
            "charset": "utf8mb4",
            "autocommit": True,
            "ssl_disabled": True,  # loopback; building an SSL context costs ~50 ms per connect
        }
        return pymysql.connect(**(settings | kwargs))

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            return cur.execute(sql, args)

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        batch: int = 5000,
    ) -> int:
        """Bulk insert with ``executemany`` (PyMySQL sends multi-row INSERTs); returns the count.

        One transaction for all rows: 100,000 short rows take about a second.
        """
        cols = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join(["%s"] * len(columns))
        sql = f"INSERT INTO `{table}` ({cols}) VALUES ({marks})"
        count = 0
        with self.connect(autocommit=False) as conn, conn.cursor() as cur:
            chunk: list[Sequence[Any]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= batch:
                    count += cur.executemany(sql, chunk)
                    chunk = []
            if chunk:
                count += cur.executemany(sql, chunk)
            conn.commit()
        return count

    def table_exists(self, table: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (self.name, table),
        )
        return bool(rows)

    def drop(self) -> None:
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            if self.user != ADMIN_USER:
                cur.execute(f"DROP USER IF EXISTS '{self.user}'@'%'")


def create_database(
    *, exclude_tables: Iterable[str] = (), own_user: bool = False
) -> TestDatabase:
    """Create a database with the schema, minus ``exclude_tables``.

    With ``own_user`` a login with a random password and rights on this
    database only is created, so a test's ``.env`` holds a real DB_PASSWORD
    (a secret the engine must read and must not leak).
    """
    exclude = set(exclude_tables)
    unknown = exclude - set(ALL_TABLES)
    if unknown:
        raise ValueError(f"unknown tables to leave out: {sorted(unknown)}")
    suffix = f"{os.getpid()}_{secrets.token_hex(4)}"
    db = TestDatabase(name=DB_PREFIX + suffix, tables=tuple(t for t in ALL_TABLES if t not in exclude))
    statements = schema_statements()
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        try:
            cur.execute(f"USE `{db.name}`")
            for table in db.tables:
                cur.execute(statements[table])
            if own_user:
                db.user = f"myo_u_{suffix}"[:80]
                db.password = secrets.token_hex(16)
                cur.execute(f"CREATE USER '{db.user}'@'%%' IDENTIFIED BY %s", (db.password,))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{db.name}`.* TO '{db.user}'@'%'")
        except BaseException:
            db.drop()
            raise
    return db


def drop_stale_databases() -> list[str]:
    """Drop test databases (and their users) whose creating process is gone."""
    dropped = []
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (DB_PREFIX.replace("_", r"\_") + "%",))
        names = [row[0] for row in cur.fetchall()]
        for name in names:
            pid_text = name[len(DB_PREFIX) :].split("_", 1)[0]
            if pid_text.isdigit() and not Path(f"/proc/{pid_text}").exists():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"DROP USER IF EXISTS 'myo_u_{name[len(DB_PREFIX):]}'@'%'")
                dropped.append(name)
    return dropped
