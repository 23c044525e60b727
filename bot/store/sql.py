"""One open transaction, with SQL written once for both backends (``?`` placeholders)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Tx:
    """One open transaction; SQL is written with ``?`` and adapted to the backend."""

    def __init__(self, cursor: Any, mysql: bool) -> None:
        self._cursor = cursor
        self._mysql = mysql
        self.for_update = " FOR UPDATE" if mysql else ""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._mysql:
            sql = sql.replace("?", "%s")
        self._cursor.execute(sql, tuple(params))
        return int(self._cursor.rowcount)

    @property
    def last_id(self) -> int:
        """The id the last ``INSERT`` gave its row (an auto-increment key)."""
        return int(self._cursor.lastrowid)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return [tuple(row) for row in self._cursor.fetchall()]
