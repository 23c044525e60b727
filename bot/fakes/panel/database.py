"""A MariaDB database with the reference panel's schema, made and dropped on a shared server.

Several people (and test sessions, and demos) share one server, so every
database is named ``<prefix><pid>_<random>`` and carries its own login
``<user_prefix><pid>_<random>`` when asked (then the panel's ``.env`` holds a
real ``DB_PASSWORD``). ``drop_stale_databases`` removes only what processes
that no longer run left behind. The schema is ``schema.sql`` beside this
file, one ``CREATE TABLE`` per table, so a caller can leave tables out.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

HOST = "127.0.0.1"
PORT = 3306
ADMIN_USER = "root"
ADMIN_PASSWORD = ""
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

#: The fields of the encrypted tables that hold no secret, as a panel fills them.
PLAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "oscam_installs": ("name",),
    "saved_servers": ("name", "host", "port", "ssh_user"),
    "email_settings": (),
    "email_configurations": ("name",),
}


def plain_values(table: str, row_id: int) -> list[object]:
    """Row ``row_id``'s values for ``PLAIN_FIELDS[table]``."""
    if table == "oscam_installs":
        return [f"oscam-{row_id}"]
    if table == "saved_servers":
        return [f"server-{row_id}", f"10.0.{row_id // 250}.{row_id % 250 + 1}", 22, "oscam"]
    if table == "email_configurations":
        return [f"mail-config-{row_id}"]
    return []


def admin_connect(database: str | None = None) -> pymysql.Connection:
    """The server's administrator (root, no password on these machines), autocommit on."""
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
class PanelDatabase:
    """One database and the login limited to it (the administrator when it has none)."""

    name: str
    tables: tuple[str, ...]
    user: str = ADMIN_USER
    password: str = field(default=ADMIN_PASSWORD, repr=False)
    host: str = HOST
    port: int = PORT

    def connect(self, **kwargs: Any) -> pymysql.Connection:
        """A connection as the database's own login, autocommit on unless overridden."""
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

    def drop(self) -> None:
        """Drop the database and its login; dropping twice is harmless."""
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            if self.user != ADMIN_USER:
                cur.execute(f"DROP USER IF EXISTS '{self.user}'@'%'")


def create_database(
    prefix: str,
    user_prefix: str,
    *,
    exclude_tables: Iterable[str] = (),
    own_user: bool = False,
) -> PanelDatabase:
    """Create ``<prefix><pid>_<random>`` with the schema, minus ``exclude_tables``.

    With ``own_user`` a login with a random password and rights on this
    database only is created as well.
    """
    exclude = set(exclude_tables)
    unknown = exclude - set(ALL_TABLES)
    if unknown:
        raise ValueError(f"unknown tables to leave out: {sorted(unknown)}")
    suffix = f"{os.getpid()}_{secrets.token_hex(4)}"
    db = PanelDatabase(name=prefix + suffix, tables=tuple(t for t in ALL_TABLES if t not in exclude))
    statements = schema_statements()
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        try:
            cur.execute(f"USE `{db.name}`")
            for table in db.tables:
                cur.execute(statements[table])
            if own_user:
                db.user = f"{user_prefix}{suffix}"[:80]
                db.password = secrets.token_hex(16)
                cur.execute(f"CREATE USER '{db.user}'@'%%' IDENTIFIED BY %s", (db.password,))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{db.name}`.* TO '{db.user}'@'%'")
        except BaseException:
            db.drop()
            raise
    return db


def drop_stale_databases(prefix: str, user_prefix: str) -> list[str]:
    """Drop the databases (and logins) named ``<prefix><pid>_…`` whose process is gone."""
    dropped = []
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (prefix.replace("_", r"\_") + "%",))
        for (name,) in cur.fetchall():
            suffix = name[len(prefix) :]
            pid_text = suffix.split("_", 1)[0]
            if pid_text.isdigit() and not Path(f"/proc/{pid_text}").exists():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"DROP USER IF EXISTS '{user_prefix}{suffix}'@'%'")
                dropped.append(name)
    return dropped
