"""The panel's agents and their servers, as its database holds them.

Table and column names come from the profile (``[agents]``). Reads end their
transaction at once (``rollback``): the connection runs with autocommit off,
and a poll inside one REPEATABLE READ snapshot would never see the agent
re-register.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.db import PanelDB
from engine.profile import AgentSettings
from engine.protocol import fingerprint


@dataclass(frozen=True)
class AgentRow:
    id: int
    name: str
    token: str | None = field(repr=False)
    server_id: int | None
    last_seen: datetime | None

    @property
    def token_fingerprint(self) -> str | None:
        return fingerprint(self.token) if self.token else None


@dataclass(frozen=True)
class ServerRow:
    id: int
    name: str
    host: str
    port: int
    user: str
    credential: str | None = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.user}@{self.host}:{self.port})"


def iso(moment: datetime | None) -> str | None:
    """A DATETIME as ISO 8601 (the panel's clock; UTC unless the profile says otherwise)."""
    return moment.isoformat(timespec="seconds") if moment else None


def iso_exact(moment: datetime | None) -> str | None:
    """A DATETIME as ISO 8601 with microseconds, to compare two readings."""
    return moment.isoformat(timespec="microseconds") if moment else None


class AgentTable:
    def __init__(self, settings: AgentSettings) -> None:
        self.s = settings

    def _read(self, db: PanelDB, sql: str, args: Any = None, doing: str = "reading agents") -> list[tuple[Any, ...]]:
        try:
            return db.query(sql, args, doing=doing)
        finally:
            db.rollback()

    def _select(self) -> str:
        s = self.s
        return (
            f"SELECT `{s.id_column}`, `{s.name_column}`, `{s.token_column}`, `{s.server_column}`, "
            f"`{s.last_seen_column}` FROM `{s.table}`"
        )

    @staticmethod
    def _row(raw: tuple[Any, ...]) -> AgentRow:
        return AgentRow(
            id=int(raw[0]),
            name=str(raw[1]),
            token=str(raw[2]) if raw[2] not in (None, "") else None,
            server_id=int(raw[3]) if raw[3] is not None else None,
            last_seen=raw[4] if isinstance(raw[4], datetime) else None,
        )

    def select(self, db: PanelDB, names: list[str] | None) -> tuple[list[AgentRow], list[str]]:
        """(agents, names not found). ``names=None`` means every agent the profile's
        ``--all`` filter lets through (``all_filter_column``/``all_filter_value`` in SQL,
        ``all_name_pattern`` on the name), by id."""
        s = self.s
        if names is None:
            where, args = "", None
            if s.all_filter_column is not None:
                value = s.all_filter_value
                value = int(value) if isinstance(value, bool) else value
                where, args = f" WHERE `{s.all_filter_column}` = %s", (value,)
            raw = self._read(db, f"{self._select()}{where} ORDER BY `{s.id_column}`", args)
            rows = [self._row(r) for r in raw]
            if s.all_name_pattern is not None:
                pattern = re.compile(s.all_name_pattern)
                rows = [r for r in rows if pattern.fullmatch(r.name)]
            return rows, []
        if not names:
            return [], []
        marks = ", ".join(["%s"] * len(names))
        raw = self._read(db, f"{self._select()} WHERE `{s.name_column}` IN ({marks})", names)
        by_name = {str(r[1]): self._row(r) for r in raw}
        found = [by_name[n] for n in dict.fromkeys(names) if n in by_name]
        missing = [n for n in dict.fromkeys(names) if n not in by_name]
        return found, missing

    def bad_name(self, agent: AgentRow) -> str | None:
        """Why the engine will not work with this agent's name (None: the name is fine).

        Any name the panel accepts is fine: it only ever travels as data (a shell-quoted word,
        an environment variable, a SQL parameter). Two exceptions: a NUL byte, which no
        command line or environment can carry, and, when the profile opts in, a name that
        does not match ``agent_name_pattern``."""
        if "\0" in agent.name:
            return f"agent #{agent.id} has a NUL byte in its name, which no command can be given: rename it"
        pattern = self.s.agent_name_pattern
        if pattern is None or re.fullmatch(pattern, agent.name):
            return None
        return (
            f"agent #{agent.id} has a name the profile's agent_name_pattern refuses: rename it in the "
            "panel, or widen or remove agent_name_pattern in the profile"
        )

    def get(self, db: PanelDB, agent_id: int) -> AgentRow | None:
        raw = self._read(db, f"{self._select()} WHERE `{self.s.id_column}` = %s", (agent_id,))
        return self._row(raw[0]) if raw else None

    def holders(self, db: PanelDB, token: str) -> int:
        """How many agent rows hold ``token``."""
        raw = self._read(
            db,
            f"SELECT COUNT(*) FROM `{self.s.table}` WHERE `{self.s.token_column}` = %s",
            (token,),
            doing="looking for the old token",
        )
        return int(raw[0][0])

    def now(self, db: PanelDB) -> datetime:
        """The database's clock, in the time zone ``last_seen`` is written in."""
        fn = "UTC_TIMESTAMP(6)" if self.s.last_seen_utc else "NOW(6)"
        raw = self._read(db, f"SELECT {fn}", doing="reading the database clock")
        value = raw[0][0]
        if not isinstance(value, datetime):
            value = datetime.fromisoformat(str(value))
        return value

    def server(self, db: PanelDB, server_id: int) -> ServerRow | None:
        s = self.s
        raw = self._read(
            db,
            f"SELECT `{s.server_name_column}`, `{s.server_host_column}`, `{s.server_port_column}`, "
            f"`{s.server_user_column}`, `{s.server_credential_column}` FROM `{s.server_table}` "
            f"WHERE `{s.server_id_column}` = %s",
            (server_id,),
            doing=f"reading server {server_id}",
        )
        if not raw:
            return None
        name, host, port, user, credential = raw[0]
        return ServerRow(
            id=server_id,
            name=str(name or f"server {server_id}"),
            host=str(host or ""),
            port=int(port or 22),
            user=str(user or ""),
            credential=str(credential) if credential not in (None, "") else None,
        )
