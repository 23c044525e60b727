"""A fresh, uniquely named database per test on the shared MariaDB (127.0.0.1:3306).

The reference panel's database comes from the product (``bot.fakes.panel.database``);
tests name theirs ``myo_t_<pid>_<random>`` (logins ``myo_u_…``) and add a few
helpers for asserting on them. ``drop_stale_databases`` removes only those left
behind by sessions whose process no longer runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.fakes.panel import database as panel_db
from bot.fakes.panel.ctl import parse_env
from bot.fakes.panel.database import ADMIN_USER, ALL_TABLES, PanelDatabase, admin_connect

__all__ = ["ALL_TABLES", "TestDatabase", "admin_connect", "create_database", "drop_stale_databases"]

DB_PREFIX = "myo_t_"
USER_PREFIX = "myo_u_"


@dataclass
class TestDatabase(PanelDatabase):
    """One test's database. ``user``/``password`` is a login limited to it (see ``create``)."""

    __test__ = False  # not a pytest test class
    #: The panel's ``.env``, once a sandbox has one: its DB_PASSWORD is the login's password
    #: from then on (rotate-db-password changes it; ``password`` stays the original).
    env_path: Path | None = field(default=None, repr=False)

    def connect(self, **kwargs: Any) -> Any:
        if self.env_path is not None and self.user != ADMIN_USER and "password" not in kwargs:
            try:  # a test may have broken .env on purpose: then the original password
                kwargs["password"] = parse_env(self.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]
            except (OSError, UnicodeDecodeError, KeyError):
                pass
        return super().connect(**kwargs)

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


def create_database(
    *, exclude_tables: Iterable[str] = (), own_user: bool = False
) -> TestDatabase:
    """Create a database with the schema, minus ``exclude_tables``.

    With ``own_user`` a login with a random password and rights on this
    database only is created, so a test's ``.env`` holds a real DB_PASSWORD
    (a secret the engine must read and must not leak).
    """
    made = panel_db.create_database(
        DB_PREFIX, USER_PREFIX, exclude_tables=exclude_tables, own_user=own_user
    )
    return TestDatabase(**vars(made))


def drop_stale_databases() -> list[str]:
    """Drop test databases (and their users) whose creating process is gone."""
    return panel_db.drop_stale_databases(DB_PREFIX, USER_PREFIX)
