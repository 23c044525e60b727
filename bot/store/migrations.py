"""Versioned schema migrations of the state store, one ordered list for both dialects.

``schema_migrations`` records each migration applied (version, name, when). At start the
store applies, in order and once each, every migration its database has not had, under a
lock (SQLite: the write transaction; MySQL: ``GET_LOCK``), so replicas starting together
migrate once. A database migrated by a newer bot is refused: that bot's tables may mean
something this one does not know.

Version 1 is the schema every store had before migrations were versioned (0.1.0 and 0.2.0,
all ``CREATE TABLE IF NOT EXISTS``): applied to such a store it changes nothing and records
the version. Version 2 adds the enrollment columns (``schema.ADDED_COLUMNS``) a store may or
may not have, depending on the commit that made it. To change the schema, **append** a
``Migration`` with the next version and its statements for both dialects; never edit one
that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store import schema


@dataclass(frozen=True)
class Migration:
    """Statements per dialect, then columns ``(table, column, definition)`` each added unless
    the table has it already (the same SQL on both dialects)."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    mysql: tuple[str, ...]
    add_columns: tuple[tuple[str, str, str], ...] = ()

    def statements(self, mysql: bool) -> tuple[str, ...]:
        return self.mysql if mysql else self.sqlite


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables of 0.1.0 and 0.2.0", schema.SQLITE, schema.MYSQL),
    Migration(2, "TOTP enrollments: status, confirmation, DM and approver columns", (), (),
              add_columns=schema.ADDED_COLUMNS),
    Migration(3, "fleet runs (a row per panel) and offboarded people", schema.FLEETS_SQLITE, schema.FLEETS_MYSQL),
    Migration(4, "a fleet panel's bound plan in its row", (), (), add_columns=schema.FLEET_PLAN_COLUMNS),
)

LOCK_NAME = "myosicam_rotator_store_migrations"

VERSIONS_TABLE = {
    False: """CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        applied_at DOUBLE NOT NULL)""",
    True: """CREATE TABLE IF NOT EXISTS schema_migrations (
        version INT PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        applied_at DOUBLE NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}


def latest(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    return max(m.version for m in migrations)


def check_order(migrations: tuple[Migration, ...]) -> None:
    """Versions 1, 2, 3 ... with no gap or repeat (two helpers appending the same number)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"store migrations must be numbered 1..{len(versions)} in order, not {versions}")
