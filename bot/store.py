"""Durable requests with compare-and-swap updates, Slack delivery dedupe, and the audit log.

Two backends behind one class: SQLite (default; one process) and MySQL /
MariaDB through PyMySQL (several replicas). Each request is one row: the few
columns the bot queries by, plus the whole request as JSON. ``update`` writes
only if the row still has the version the caller read, so two clicks, two
replicas or a Slack retry cannot both win; every successful update records a
transition and an audit entry in the same transaction.

Errors of ``sqlite3`` and ``pymysql`` are translated once, here, into
``StoreError`` (whose message never carries the URL's password).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bot import audit
from bot.errors import StoreError
from handlers.plan import PlanView
from handlers.ports import (
    FINAL_STATES,
    Decision,
    Person,
    RotationRequest,
    State,
    Transition,
)

DELIVERY_TTL_S = 3600.0

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rotation_requests (
        id VARCHAR(64) PRIMARY KEY,
        state VARCHAR(16) NOT NULL,
        version INTEGER NOT NULL,
        panel VARCHAR(64) NOT NULL,
        requester VARCHAR(80) NOT NULL,
        created_at DOUBLE NOT NULL,
        expires_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL,
        body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rotation_requests_state ON rotation_requests (state, expires_at)",
    """CREATE TABLE IF NOT EXISTS request_transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id VARCHAR(64) NOT NULL,
        event VARCHAR(64) NOT NULL,
        from_state VARCHAR(16),
        to_state VARCHAR(16) NOT NULL,
        version INTEGER NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS request_transitions_request ON request_transitions (request_id)",
    """CREATE TABLE IF NOT EXISTS slack_deliveries (
        delivery_key VARCHAR(191) PRIMARY KEY,
        seen_at DOUBLE NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        kind VARCHAR(64) NOT NULL,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        data TEXT NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash CHAR(64) NOT NULL)""",
    f"INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '{audit.GENESIS}')",
)

_MYSQL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rotation_requests (
        id VARCHAR(64) PRIMARY KEY,
        state VARCHAR(16) NOT NULL,
        version INT NOT NULL,
        panel VARCHAR(64) NOT NULL,
        requester VARCHAR(80) NOT NULL,
        created_at DOUBLE NOT NULL,
        expires_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL,
        body MEDIUMTEXT NOT NULL,
        INDEX rotation_requests_state (state, expires_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS request_transitions (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        request_id VARCHAR(64) NOT NULL,
        event VARCHAR(64) NOT NULL,
        from_state VARCHAR(16),
        to_state VARCHAR(16) NOT NULL,
        version INT NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL,
        INDEX request_transitions_request (request_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS slack_deliveries (
        delivery_key VARCHAR(191) PRIMARY KEY,
        seen_at DOUBLE NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        kind VARCHAR(64) NOT NULL,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        data MEDIUMTEXT NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash CHAR(64) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    f"INSERT IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '{audit.GENESIS}')",
)


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

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return [tuple(row) for row in self._cursor.fetchall()]


class _Backend:
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


class _SQLiteBackend(_Backend):
    """One connection, one transaction at a time within this process.

    SQLite serialises writers anyway; letting threads queue on a Python lock
    instead of SQLite's busy handler (which sleeps in steps of up to 100 ms)
    keeps a Slack acknowledgement from waiting behind a sleeping retry. Other
    processes on the same file still meet SQLite's own locking.
    """

    schema = _SQLITE_SCHEMA
    errors = (sqlite3.Error,)
    duplicate_key_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._one = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the state store ({self.describe()}) is closed")
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._one, super().transaction() as tx:
            yield tx

    def close(self) -> None:
        with self._one:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def describe(self) -> str:
        return f"sqlite://{self.path}"


class _MySQLBackend(_Backend):
    mysql = True
    schema = _MYSQL_SCHEMA
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
        return self._pymysql.connect(**self._params)

    def connection(self) -> Any:
        """This thread's connection, replaced if the server dropped it (restart, idle timeout)."""
        conn = super().connection()
        try:
            conn.ping(reconnect=False)
        except self._pymysql.Error:
            self.discard(conn)
            conn = super().connection()
        return conn

    def _begin(self, conn: Any) -> None:
        conn.begin()

    def describe(self) -> str:
        return self._where


def _request_to_body(request: RotationRequest) -> str:
    data = {
        "id": request.id,
        "op": request.op,
        "panel": request.panel,
        "reason": request.reason,
        "requester": request.requester.to_dict(),
        "channel_id": request.channel_id,
        "plan": request.plan.to_dict(),
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "state": request.state.value,
        "version": request.version,
        "agents": list(request.agents),
        "all_agents": request.all_agents,
        "message_ts": request.message_ts,
        "approvals": [a.to_dict() for a in request.approvals],
        "decision": request.decision.to_dict() if request.decision else None,
        "started_at": request.started_at,
        "finished_at": request.finished_at,
        "last_seq": request.last_seq,
        "progress": request.progress,
        "outcome": request.outcome,
    }
    return json.dumps(data, default=str)


def _request_from_body(body: str, state: str, version: int) -> RotationRequest:
    data = json.loads(body)
    return RotationRequest(
        id=data["id"],
        op=data["op"],
        panel=data["panel"],
        reason=data["reason"],
        requester=Person.from_dict(data["requester"]),
        channel_id=data["channel_id"],
        plan=PlanView.from_dict(data["plan"]),
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        state=State(state),
        version=int(version),
        agents=tuple(data.get("agents") or ()),
        all_agents=bool(data.get("all_agents")),
        message_ts=data.get("message_ts"),
        approvals=tuple(Decision.from_dict(a) for a in data.get("approvals") or ()),
        decision=Decision.from_dict(data["decision"]) if data.get("decision") else None,
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        last_seq=int(data.get("last_seq") or 0),
        progress=dict(data.get("progress") or {}),
        outcome=dict(data.get("outcome") or {}),
    )


class Store:
    """The bot's state: requests, their transitions, Slack deliveries seen, the audit log."""

    def __init__(self, backend: _Backend, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self.clock = clock

    # --- lifecycle ---------------------------------------------------------------------

    def migrate(self) -> Store:
        with self._translated("create the tables"):
            conn = self._backend.connection()
            cursor = conn.cursor()
            for statement in self._backend.schema:
                cursor.execute(statement)
            cursor.close()
        return self

    def close(self) -> None:
        self._backend.close()

    def describe(self) -> str:
        return str(self._backend.describe())  # type: ignore[attr-defined]

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

    # --- requests (handlers.ports.RequestStore) ----------------------------------------

    def create(self, request: RotationRequest, *, actor: str) -> bool:
        """Insert a new request; False if its id is taken (the caller picks another)."""
        now = self.clock()
        try:
            self._insert(request, actor, now)
        except StoreError as exc:
            if isinstance(exc.__cause__, self._backend.duplicate_key_errors):
                return False
            raise
        return True

    def _insert(self, request: RotationRequest, actor: str, now: float) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO rotation_requests "
                "(id, state, version, panel, requester, created_at, expires_at, updated_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.id,
                    request.state.value,
                    request.version,
                    request.panel,
                    request.requester.key,
                    request.created_at,
                    request.expires_at,
                    now,
                    _request_to_body(request),
                ),
            )
            self._record(tx, request, None, "created", actor, now)

    def get(self, request_id: str) -> RotationRequest | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT body, state, version FROM rotation_requests WHERE id = ?", (request_id,)
            )
        return _request_from_body(*row) if row else None

    def update(
        self,
        request: RotationRequest,
        *,
        expected_version: int,
        event: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        record: bool = True,
    ) -> RotationRequest | None:
        """Compare-and-swap: write ``request`` only if the row is still at ``expected_version``.

        ``record=False`` is for bookkeeping that is audited elsewhere (the runner's
        step progress, whose engine events are audited one by one).
        """
        now = self.clock()
        new = request.evolve(version=expected_version + 1)
        with self.transaction() as tx:
            row = tx.one(
                f"SELECT state FROM rotation_requests WHERE id = ? AND version = ?{tx.for_update}",
                (request.id, expected_version),
            )
            if row is None:
                return None
            changed = tx.execute(
                "UPDATE rotation_requests SET state = ?, version = ?, expires_at = ?, "
                "updated_at = ?, body = ? WHERE id = ? AND version = ?",
                (
                    new.state.value,
                    new.version,
                    new.expires_at,
                    now,
                    _request_to_body(new),
                    request.id,
                    expected_version,
                ),
            )
            if changed != 1:
                return None
            if record:
                self._record(tx, new, str(row[0]), event, actor, now, detail)
        return new

    def _record(
        self,
        tx: Tx,
        request: RotationRequest,
        from_state: str | None,
        event: str,
        actor: str,
        now: float,
        detail: dict[str, Any] | None = None,
    ) -> None:
        tx.execute(
            "INSERT INTO request_transitions "
            "(request_id, event, from_state, to_state, version, actor, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request.id, event, from_state, request.state.value, request.version, actor, now),
        )
        data: dict[str, Any] = {
            "from": from_state,
            "to": request.state.value,
            "version": request.version,
        }
        if from_state is None:
            data.update(
                op=request.op,
                panel=request.panel,
                agents=list(request.agents),
                all_agents=request.all_agents,
                reason=request.reason,
                requester=request.requester.key,
                plan_hash=request.plan_hash,
                expires_at=request.expires_at,
            )
        if request.message_ts and event == "card_posted":
            data["message_ts"] = request.message_ts
        if detail:
            data["detail"] = detail
        audit.append_in(
            tx,
            kind=f"request.{event}",
            request_id=request.id,
            actor=actor,
            data=data,
            ts_ms=int(now * 1000),
        )

    def list_in_states(self, states: Iterable[State], limit: int = 50) -> list[RotationRequest]:
        values = [State(s).value for s in states]
        marks = ", ".join("?" for _ in values)
        with self.transaction() as tx:
            rows = tx.all(
                f"SELECT body, state, version FROM rotation_requests WHERE state IN ({marks}) "
                "ORDER BY created_at LIMIT ?",
                (*values, limit),
            )
        return [_request_from_body(*row) for row in rows]

    def recent_final(self, limit: int = 5) -> list[RotationRequest]:
        values = [s.value for s in FINAL_STATES]
        marks = ", ".join("?" for _ in values)
        with self.transaction() as tx:
            rows = tx.all(
                f"SELECT body, state, version FROM rotation_requests WHERE state IN ({marks}) "
                "ORDER BY updated_at DESC LIMIT ?",
                (*values, limit),
            )
        return [_request_from_body(*row) for row in rows]

    def pending_due(self, now: float) -> list[RotationRequest]:
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT body, state, version FROM rotation_requests "
                "WHERE state = ? AND expires_at <= ? ORDER BY expires_at",
                (State.PENDING.value, now),
            )
        return [_request_from_body(*row) for row in rows]

    def next_expiry(self) -> float | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT MIN(expires_at) FROM rotation_requests WHERE state = ?",
                (State.PENDING.value,),
            )
        return float(row[0]) if row and row[0] is not None else None

    def history(self, request_id: str) -> list[Transition]:
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT request_id, event, from_state, to_state, actor, at "
                "FROM request_transitions WHERE request_id = ? ORDER BY id",
                (request_id,),
            )
        return [
            Transition(
                request_id=r[0], event=r[1], from_state=r[2], to_state=r[3], actor=r[4], at=r[5]
            )
            for r in rows
        ]

    # --- Slack deliveries --------------------------------------------------------------

    def claim_deliveries(self, keys: Sequence[str]) -> list[str]:
        """Record ``keys`` as seen; return those that were already seen (duplicates)."""
        now = self.clock()
        seen: list[str] = []
        with self.transaction() as tx:
            for key in keys:
                inserted = tx.execute(
                    f"{self._backend.insert_ignore} INTO slack_deliveries (delivery_key, seen_at) "
                    "VALUES (?, ?)",
                    (key[:191], now),
                )
                if inserted != 1:
                    seen.append(key)
        return seen

    def purge_deliveries(self, older_than_s: float = DELIVERY_TTL_S) -> int:
        with self.transaction() as tx:
            return tx.execute(
                "DELETE FROM slack_deliveries WHERE seen_at < ?", (self.clock() - older_than_s,)
            )

    # --- audit -------------------------------------------------------------------------

    def audit_entries(self, since_ts_ms: int | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT seq, ts_ms, kind, request_id, actor, data, prev_hash, hash FROM audit_log"
        params: tuple[Any, ...] = ()
        if since_ts_ms is not None:
            sql += " WHERE ts_ms >= ?"
            params = (since_ts_ms,)
        with self.transaction() as tx:
            rows = tx.all(sql + " ORDER BY seq", params)
        names = ("seq", "ts_ms", "kind", "request_id", "actor", "data", "prev_hash", "hash")
        for row in rows:
            entry = dict(zip(names, row, strict=True))
            entry["seq"], entry["ts_ms"] = int(entry["seq"]), int(entry["ts_ms"])
            yield entry

    def audit_head(self) -> tuple[int, str]:
        with self.transaction() as tx:
            row = tx.one("SELECT seq, hash FROM audit_head WHERE id = 1")
        return (int(row[0]), str(row[1])) if row else (0, audit.GENESIS)


def open_store(url: str, clock: Callable[[], float] = time.time) -> Store:
    """``sqlite:///abs/path.db``, ``sqlite://relative.db`` or ``mysql://user:pw@host:port/db``."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = "/" + path.lstrip("/")
        backend: _Backend = _SQLiteBackend(Path(path))
    elif url.startswith(("mysql://", "mysql+pymysql://")):
        backend = _MySQLBackend(url)
    else:
        raise StoreError("the store URL must start with sqlite:// or mysql://")
    return Store(backend, clock).migrate()
