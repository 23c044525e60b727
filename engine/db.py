"""The panel's MySQL/MariaDB, through PyMySQL: the one place that speaks SQL.

PyMySQL's exceptions are translated here, once, into ``DatabaseError``.
Writes are batched: each column's new ciphertexts go into a temporary table
by multi-row INSERTs (PyMySQL's ``executemany`` batches only INSERT), with the
MD5 of the value each was sealed from; then one ``UPDATE ... JOIN`` applies them,
under its own row locks, to the rows that still hold what was read.
Reads are keyset-paginated so memory stays flat however many rows there are.

TLS: over a Unix socket or loopback the connection is plain. PyMySQL 2 otherwise
tries TLS ("preferred") on every connection and, to do so, loads the system's CA
store each time: 43 ms per connection measured here, for a channel that never
leaves the host. A remote database keeps PyMySQL's default.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.constants import SERVER_STATUS

from engine.errors import CredentialsRefusedError, DatabaseError, ProfileError
from engine.profile import ColumnSpec, DatabaseSettings

Row = tuple[Any, Any]
#: Multi-row INSERTs are cut at this size, well under MariaDB's 16 MiB max_allowed_packet.
STATEMENT_BYTES = 4 * 1024 * 1024
#: The staging tables' storage engine, first one the server has: a non-transactional
#: temporary table (MariaDB's Aria, else MyISAM) keeps no undo for what is staged and
#: marked applied, which is the connection's own scratch, never the panel's rows.
#: Measured on 100k values of the seed's shape: the locked apply took 1.9-2.2 s with
#: Aria staging, 2.9-3.1 s with InnoDB's (same data, interleaved).
STAGING_ENGINES = (" ENGINE=Aria", " ENGINE=MyISAM", "")


@dataclass(frozen=True)
class Literal:
    """A value as an SQL literal, quoted as PyMySQL quotes it on a connection whose
    server has (or has not) ``NO_BACKSLASH_ESCAPES``. Pure, so a worker process can
    build statements."""

    no_backslash: bool

    def __call__(self, value: Any) -> str:
        if type(value) is int:
            return str(value)
        if isinstance(value, str):
            if self.no_backslash:
                return "'" + value.replace("'", "''") + "'"
            return "'" + pymysql.converters.escape_string(value) + "'"
        if isinstance(value, bytes | bytearray):
            return "X'" + bytes(value).hex() + "'"
        return str(pymysql.converters.escape_item(value, "utf8mb4"))


def row_checksum(pk: Any, value: str) -> int:
    """CRC32 of "key:value", as ``PanelDB.fingerprint`` sums it on the server."""
    return zlib.crc32(f"{pk}:{value}".encode())


def value_digest(stored: Any) -> str | None:
    """MD5 (hex) of a stored value's bytes, as the server's ``MD5(column)`` computes it on
    a utf8mb4 column. It only tells "the row still holds what was read" from "someone
    wrote it since"; a collision would have to be crafted by someone who can already
    write the database."""
    if stored is None:
        return None
    data = stored.encode() if isinstance(stored, str) else bytes(stored)
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def staging_statements(head: str, rows: list[tuple[Any, str | None, str | None]], literal: Literal) -> list[str]:
    """Multi-row INSERTs of (key, new value, MD5 of the value read) after ``head``. New
    values are base64 (or '') and digests hex (no quote, no backslash), so they are
    quoted as they are; None is NULL. Pure: no I/O."""
    statements: list[str] = []
    parts: list[str] = []
    size = 0
    for pk, new, digest in rows:
        key = pk if type(pk) is int else literal(pk)
        value = "NULL" if new is None else f"'{new}'"
        read = "NULL" if digest is None else f"X'{digest}'"
        part = f"({key},{value},{read})"
        parts.append(part)
        size += len(part)
        if size >= STATEMENT_BYTES:
            statements.append(head + ",".join(parts))
            parts, size = [], 0
    if parts:
        statements.append(head + ",".join(parts))
    return statements


@dataclass(frozen=True)
class ConnectionSettings:
    host: str
    port: int
    name: str
    user: str
    password: str
    unix_socket: str | None
    connect_timeout_s: float

    def __repr__(self) -> str:  # never show the password
        return f"ConnectionSettings({self.user}@{self.host}:{self.port}/{self.name})"


def resolve_settings(db: DatabaseSettings, env: dict[str, str]) -> ConnectionSettings:
    """Explicit profile values win; the rest come from the panel's ``.env``."""

    def pick(field: str, default: str | None = None) -> str:
        explicit = getattr(db, field)
        if explicit is not None:
            return str(explicit)
        key = db.env_keys.get(field, "")
        if key and key in env:
            return env[key]
        if default is not None:
            return default
        raise ProfileError(
            f"database {field} is not set: give database.{field} in the profile "
            f"or {key or 'its key'} in .env"
        )

    port_text = pick("port", "3306")
    try:
        port = int(port_text)
    except ValueError:
        raise ProfileError(f"database port {port_text!r} is not a number") from None
    return ConnectionSettings(
        host=pick("host", "127.0.0.1"),
        port=port,
        name=pick("name"),
        user=pick("user"),
        password=pick("password", ""),
        unix_socket=db.unix_socket,
        connect_timeout_s=db.connect_timeout_s,
    )


def _translate(exc: Exception, doing: str) -> DatabaseError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if isinstance(exc, pymysql.err.OperationalError) and code in (2003, 2006, 2013, 2055):
        return DatabaseError(f"lost the database connection while {doing} (MySQL error {code})")
    if isinstance(exc, pymysql.err.OperationalError) and code == 1045:
        return CredentialsRefusedError(f"the database refused the panel's credentials while {doing}")
    detail = f"MySQL error {code}" if code else type(exc).__name__
    error = DatabaseError(f"database error while {doing} ({detail})")
    error.mysql_code = code  # type: ignore[attr-defined]  # engine/ops/db_password/accounts.py tells 1130 apart
    return error


def is_local(settings: ConnectionSettings) -> bool:
    """A Unix socket or a loopback address: the connection never leaves the host."""
    if settings.unix_socket or settings.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        return False


class PanelDB:
    """One connection to the panel database, autocommit off."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        try:
            self._conn = pymysql.connect(
                host=settings.host,
                port=settings.port,
                user=settings.user,
                password=settings.password,
                database=settings.name,
                unix_socket=settings.unix_socket,
                connect_timeout=settings.connect_timeout_s,
                # PyMySQL's connect_timeout bounds the TCP connect only: a server that
                # accepts and never greets would hold the engine (and a panel's lock)
                # for ever. The greeting, the login and the session set-up get the same
                # limit; the rotation's own statements none (an apply may take minutes).
                read_timeout=settings.connect_timeout_s,
                write_timeout=settings.connect_timeout_s,
                charset="utf8mb4",
                autocommit=False,
                ssl_disabled=is_local(settings) or None,
            )
            # from here on, no limit: PyMySQL reads these two at each read and write (2.2;
            # 1.1 too); tests/engine/test_db_connection.py fails if that changes
            self._conn._read_timeout = self._conn._write_timeout = None  # type: ignore[attr-defined]
        except pymysql.MySQLError as exc:
            raise _translate(exc, f"connecting to {settings.host}:{settings.port}") from exc
        self._temp_tables: set[str] = set()

    def twin(self) -> PanelDB:
        """A second connection to the same database, a session of its own."""
        return PanelDB(self.settings)

    # -- plumbing -------------------------------------------------------------
    def execute(self, sql: str, args: Any = None, doing: str = "running a query") -> int:
        try:
            with self._conn.cursor() as cur:
                return int(cur.execute(sql, args))
        except pymysql.MySQLError as exc:
            raise _translate(exc, doing) from exc

    def query(self, sql: str, args: Any = None, doing: str = "reading") -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            raise _translate(exc, doing) from exc

    def begin(self) -> None:
        try:
            self._conn.begin()
        except pymysql.MySQLError as exc:
            raise _translate(exc, "starting a transaction") from exc

    def begin_repeatable(self, snapshot: bool = False) -> None:
        """A REPEATABLE READ transaction, whatever the server's default isolation: its
        locking reads lock gaps too, so no row is inserted where it scanned. With
        ``snapshot``, every plain read of it sees the database as it was here, with no
        row lock taken (InnoDB's consistent read)."""
        self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", doing="starting a transaction")
        self.execute(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT" if snapshot else "START TRANSACTION",
            doing="starting a transaction",
        )

    def commit(self) -> None:
        try:
            self._conn.commit()
        except pymysql.MySQLError as exc:
            raise _translate(exc, "committing") from exc

    def rollback(self) -> None:
        """Best effort: a lost connection is rolled back by the server anyway."""
        with contextlib.suppress(pymysql.MySQLError, OSError):
            self._conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    # -- the login's own password ------------------------------------------------
    def account(self) -> tuple[str, bool]:
        """(``CURRENT_USER()``, whether the server is read-only): whose password a change would set."""
        rows = self.query("SELECT CURRENT_USER(), @@read_only", doing="reading the login's account")
        return str(rows[0][0]), bool(rows[0][1])

    def set_own_password(self, password: str) -> str:
        """Change this login's own password, without admin rights; returns the form used.

        MySQL takes ``ALTER USER CURRENT_USER()``. MariaDB 10.11 refuses it to a login
        without CREATE USER (error 1227, measured) and takes ``SET PASSWORD =
        PASSWORD(...)``, which MySQL 8 no longer parses (1064). Errors name codes only:
        a server's message may quote the statement, and so the password.
        """
        forms = (
            ("ALTER USER CURRENT_USER() IDENTIFIED BY %s", "ALTER USER"),
            ("SET PASSWORD = PASSWORD(%s)", "SET PASSWORD"),
        )
        code: int | None = None
        for sql, name in forms:
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql, (password,))
                return name
            except pymysql.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                if code in (1044, 1064, 1142, 1227, 1370):
                    continue  # not this form or not this right: the next form
                if code in (2003, 2006, 2013, 2055):
                    raise DatabaseError(
                        f"lost the database connection while changing the password (MySQL error {code}); "
                        "the server may hold either password"
                    ) from None
                raise DatabaseError(f"the database refused the password change (MySQL error {code})") from None
        raise DatabaseError(
            f"the panel's database login cannot change its own password (MySQL error {code}); "
            "nothing was changed"
        )

    # -- schema ---------------------------------------------------------------
    def existing_columns(self, specs: list[ColumnSpec]) -> tuple[list[ColumnSpec], list[str]]:
        """(columns present, tables missing). A missing column in a present table is an error."""
        rows = self.query(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()",
            doing="reading the schema",
        )
        have: dict[str, set[str]] = {}
        for table, column in rows:
            have.setdefault(str(table), set()).add(str(column))
        present: list[ColumnSpec] = []
        missing: list[str] = []
        for spec in specs:
            if spec.table not in have:
                if spec.table not in missing:
                    missing.append(spec.table)
                continue
            for needed in (spec.column, spec.primary_key):
                if needed not in have[spec.table]:
                    raise ProfileError(
                        f"table {spec.table} has no column {needed}: fix columns in the profile"
                    )
            present.append(spec)
        return present, missing

    def count(self, spec: ColumnSpec) -> int:
        rows = self.query(
            f"SELECT COUNT(*) FROM `{spec.table}` WHERE `{spec.column}` IS NOT NULL AND `{spec.column}` <> ''",
            doing=f"counting {spec.label}",
        )
        return int(rows[0][0])

    # -- streaming reads ------------------------------------------------------
    def iter_values(
        self, spec: ColumnSpec, batch: int, *, for_update: bool = False, limit: int | None = None
    ) -> Iterator[list[Row]]:
        """(primary key, stored value) of non-empty values, in key order, ``batch`` at a time."""
        t, c, pk = spec.table, spec.column, spec.primary_key
        lock = " FOR UPDATE" if for_update else ""
        last: Any = None
        seen = 0
        while True:
            size = batch if limit is None else min(batch, limit - seen)
            if size <= 0:
                return
            where = f"`{c}` IS NOT NULL AND `{c}` <> ''"
            if last is None:
                sql = f"SELECT `{pk}`, `{c}` FROM `{t}` WHERE {where} ORDER BY `{pk}` LIMIT %s{lock}"
                args: tuple[Any, ...] = (size,)
            else:
                sql = (
                    f"SELECT `{pk}`, `{c}` FROM `{t}` WHERE `{pk}` > %s AND {where} "
                    f"ORDER BY `{pk}` LIMIT %s{lock}"
                )
                args = (last, size)
            rows: list[Row] = [(r[0], r[1]) for r in self.query(sql, args, doing=f"reading {spec.label}")]
            if not rows:
                return
            yield rows
            seen += len(rows)
            last = rows[-1][0]
            if len(rows) < size:
                return

    # -- batched writes through a temporary table ------------------------------
    def _temp_name(self, spec: ColumnSpec) -> str:
        return f"rotator_{spec.table}_{spec.column}"[:64]

    def prepare_staging(self, spec: ColumnSpec) -> None:
        """Create the column's temporary table. Call before ``begin``: DDL may commit.

        One row per row of the panel's table: ``new_v`` the value to write (for a row
        that held no value, that very NULL or ''), ``read_md5`` the MD5 of the value
        the pass read (NULL for NULL), ``applied`` set by the apply that wrote it.
        In the first of ``STAGING_ENGINES`` the server has: a non-transactional table,
        so a rollback does not undo what was staged (nothing relies on that: a failed
        apply ends the connection's rotation, and the next one stages afresh)."""
        name = self._temp_name(spec)
        self.execute(f"DROP TEMPORARY TABLE IF EXISTS `{name}`", doing="preparing staging")
        for engine in STAGING_ENGINES:
            try:
                with self._conn.cursor() as cur:
                    cur.execute(
                        f"CREATE TEMPORARY TABLE `{name}` (PRIMARY KEY (k), read_md5 BINARY(16), "
                        f"applied TINYINT NOT NULL DEFAULT 0){engine} "
                        f"SELECT `{spec.primary_key}` AS k, `{spec.column}` AS new_v "
                        f"FROM `{spec.table}` LIMIT 0"
                    )
                break
            except pymysql.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code in (1071, 1286, 3161) and engine:  # key too long, engine unknown or disabled
                    continue
                raise _translate(exc, f"preparing staging for {spec.label}") from exc
        self._temp_tables.add(name)

    def staging_head(self, spec: ColumnSpec, *, replace: bool = False) -> str:
        """The start of the multi-row INSERT (``replace``: REPLACE) that ``staging_statements`` completes."""
        verb = "REPLACE" if replace else "INSERT"
        return f"{verb} INTO `{self._temp_name(spec)}` (k, new_v, read_md5) VALUES "

    def literal(self) -> Literal:
        """SQL literals as this connection quotes them; picklable, so a worker process can use it."""
        status: int = getattr(self._conn, "server_status", 0)
        no_backslash = bool(status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)
        return Literal(no_backslash)

    def stage(self, spec: ColumnSpec, statements: list[str]) -> None:
        try:
            with self._conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        except pymysql.MySQLError as exc:
            raise _translate(exc, f"staging new values for {spec.label}") from exc

    def iter_rows(self, specs: list[ColumnSpec], batch: int) -> Iterator[list[tuple[Any, ...]]]:
        """(primary key, value of each of ``specs``) of every row of their one table, in
        key order, ``batch`` rows at a time: one scan for all of a table's columns. A value
        the server counts as empty (``= ''``: with a PAD SPACE collation, blanks too) comes
        as '', so that a value is there exactly where ``iter_values`` would read it."""
        t, pk = specs[0].table, specs[0].primary_key
        values = ", ".join(f"IF(`{spec.column}` = '', '', `{spec.column}`)" for spec in specs)
        labels = " and ".join(spec.label for spec in specs)
        last: Any = None
        while True:
            after = "" if last is None else f"WHERE `{pk}` > %s "
            args: tuple[Any, ...] = (batch,) if last is None else (last, batch)
            rows = self.query(
                f"SELECT `{pk}`, {values} FROM `{t}` {after}ORDER BY `{pk}` LIMIT %s", args, doing=f"reading {labels}"
            )
            if not rows:
                return
            yield rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def apply_staged(self, spec: ColumnSpec) -> None:
        """One UPDATE ... JOIN: each staged value is written where the row still holds
        the value the pass read (its MD5 as staged); a value saved since is left as it
        is. Its scan locks every row of the table (and, in REPEATABLE READ, the gaps)
        until the commit. The staging rows are kept: ``changed_since_staged`` and
        ``late_rows`` compare against them.

        ``STRAIGHT_JOIN`` keeps the panel's table first in the join. Left to itself,
        MariaDB 10.11 drives the join from the staging table whenever the column
        has NULL or empty rows between the values, and then defers every row's
        update through an internal temporary table: 80k values took 1.2-1.5 s
        that way, 0.23-0.35 s with the table first (measured here, same data).
        One statement per column, also for a table's two columns: one statement
        setting both with ``IF(...)`` took 2.2 s where two took 0.85-0.9 s (50k
        values of the seed's shape, measured here, same run)."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        self.execute(
            f"UPDATE `{t}` AS t STRAIGHT_JOIN `{name}` AS s ON t.`{pk}` = s.k SET t.`{c}` = s.new_v, s.applied = 1 "
            f"WHERE s.new_v <> '' AND UNHEX(MD5(t.`{c}`)) = s.read_md5",
            doing=f"writing new values to {spec.label}",
        )

    def apply_keys(self, spec: ColumnSpec, keys: list[Any]) -> None:
        """Write the staged values of these keys (rows this transaction holds locked)."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        for i in range(0, len(keys), 1000):
            part = keys[i : i + 1000]
            self.execute(
                f"UPDATE `{name}` AS s STRAIGHT_JOIN `{t}` AS t ON t.`{pk}` = s.k SET t.`{c}` = s.new_v "
                f"WHERE s.k IN ({', '.join(['%s'] * len(part))}) AND UNHEX(MD5(t.`{c}`)) <=> s.read_md5",
                part, doing=f"writing new values to {spec.label}",
            )  # fmt: skip

    def not_applied(self, spec: ColumnSpec) -> list[tuple[Any, Any, Any, bool]]:
        """(key, value stored now, staged value, row exists) of the staged values the apply
        did not write (the panel changed the row since), and of rows staged without a
        value that hold one now. Cheaper than ``late_rows``: the panel's table is read by
        key for those rows only. Locked for update."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        values = self.query(
            f"SELECT s.k, t.`{c}`, s.new_v, t.`{pk}` IS NOT NULL FROM `{name}` AS s "
            f"LEFT JOIN `{t}` AS t ON t.`{pk}` = s.k WHERE s.applied = 0 AND s.new_v <> '' FOR UPDATE",
            doing=f"reading {spec.label}",
        )
        filled = self.query(
            f"SELECT s.k, t.`{c}`, s.new_v FROM `{name}` AS s STRAIGHT_JOIN `{t}` AS t ON t.`{pk}` = s.k "
            f"WHERE (s.new_v IS NULL OR s.new_v = '') AND t.`{c}` IS NOT NULL AND t.`{c}` <> '' FOR UPDATE",
            doing=f"reading {spec.label}",
        )
        return [(r[0], r[1], r[2], bool(r[3])) for r in values] + [(r[0], r[1], r[2], True) for r in filled]

    def late_rows(self, spec: ColumnSpec) -> list[tuple[Any, Any, Any, bool]]:
        """(key, value stored now, staged value, row exists) of the rows that do not hold
        their staged value after the apply (the panel saved them since they were staged),
        of rows never staged (inserted since) and of staged rows deleted since. Locked
        for update."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        changed = self.query(
            f"SELECT t.`{pk}`, t.`{c}`, s.new_v FROM `{t}` AS t LEFT JOIN `{name}` AS s ON t.`{pk}` = s.k "
            f"WHERE s.k IS NULL OR NOT (CAST(t.`{c}` AS BINARY) <=> CAST(s.new_v AS BINARY)) FOR UPDATE",
            doing=f"reading {spec.label}",
        )
        return [(r[0], r[1], r[2], True) for r in changed] + self._deleted(spec)

    def _deleted(self, spec: ColumnSpec) -> list[tuple[Any, Any, Any, bool]]:
        t, pk, name = spec.table, spec.primary_key, self._temp_name(spec)
        rows = self.query(
            f"SELECT s.k, s.new_v FROM `{name}` AS s LEFT JOIN `{t}` AS t ON t.`{pk}` = s.k WHERE t.`{pk}` IS NULL",
            doing=f"reading {spec.label}",
        )
        return [(r[0], None, r[1], False) for r in rows]

    def changed_since_read(self, spec: ColumnSpec) -> list[tuple[Any, Any, Any, bool]]:
        """(key, value stored now, staged value, row exists) of the rows that no longer
        hold the value the pass read (its MD5 as staged), of rows never staged (inserted
        since), and of staged rows deleted since. A plain read: nothing is locked, and
        nothing has been applied yet."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        changed = self.query(
            f"SELECT t.`{pk}`, t.`{c}`, s.new_v FROM `{t}` AS t LEFT JOIN `{name}` AS s ON t.`{pk}` = s.k "
            f"WHERE s.k IS NULL OR NOT (UNHEX(MD5(t.`{c}`)) <=> s.read_md5)",
            doing=f"reading {spec.label}",
        )
        return [(r[0], r[1], r[2], True) for r in changed] + self._deleted(spec)

    def unstage(self, spec: ColumnSpec, keys: list[Any]) -> None:
        for i in range(0, len(keys), 1000):
            part = keys[i : i + 1000]
            self.execute(
                f"DELETE FROM `{self._temp_name(spec)}` WHERE k IN ({', '.join(['%s'] * len(part))})",
                part, doing=f"staging {spec.label}",
            )  # fmt: skip

    def fingerprint(self, spec: ColumnSpec, *, locked: bool = False) -> tuple[int, int, int]:
        """(count, total bytes, sum of CRC32 of "key:value") of the column's non-empty
        values, computed by the server: what it stores, row by row, without sending it.
        ``row_checksum`` is the same for one row on this side. ``locked``: a locking
        read, which sees the latest rows (not the transaction's snapshot) and keeps them."""
        return self.fingerprints([spec], locked=locked)[spec.label]

    def keyed_fingerprint(self, spec: ColumnSpec, keys: list[Any]) -> tuple[int, int, int]:
        """``fingerprint`` of the rows with these keys only (rows this transaction holds
        locked), read by key."""
        c, pk = spec.column, spec.primary_key
        has = f"(`{c}` IS NOT NULL AND `{c}` <> '')"
        total = [0, 0, 0]
        for i in range(0, len(keys), 1000):
            part = keys[i : i + 1000]
            row = self.query(
                f"SELECT COALESCE(SUM({has}), 0), COALESCE(SUM(IF({has}, LENGTH(`{c}`), 0)), 0), "
                f"COALESCE(SUM(IF({has}, CRC32(CONCAT(`{pk}`, ':', `{c}`)), 0)), 0) FROM `{spec.table}` "
                f"WHERE `{pk}` IN ({', '.join(['%s'] * len(part))}) FOR UPDATE",
                part, doing=f"checking {spec.label}",
            )[0]  # fmt: skip
            for j in range(3):
                total[j] += int(row[j])
        return total[0], total[1], total[2]

    def fingerprints(self, specs: list[ColumnSpec], *, locked: bool = False) -> dict[str, tuple[int, int, int]]:
        """``fingerprint`` of several columns, one scan per table: a table's two columns
        are summed in one pass over its rows."""
        tables: dict[str, list[ColumnSpec]] = {}
        for spec in specs:
            tables.setdefault(spec.table, []).append(spec)
        out: dict[str, tuple[int, int, int]] = {}
        for table, columns in tables.items():
            sums = []
            for spec in columns:
                c, pk = spec.column, spec.primary_key
                has = f"(`{c}` IS NOT NULL AND `{c}` <> '')"
                sums += [f"COALESCE(SUM({has}), 0)", f"COALESCE(SUM(IF({has}, LENGTH(`{c}`), 0)), 0)",
                         f"COALESCE(SUM(IF({has}, CRC32(CONCAT(`{pk}`, ':', `{c}`)), 0)), 0)"]
            labels = " and ".join(spec.label for spec in columns)
            row = self.query(
                f"SELECT {', '.join(sums)} FROM `{table}`" + (" FOR UPDATE" if locked else ""),
                doing=f"checking {labels}",
            )[0]
            for i, spec in enumerate(columns):
                out[spec.label] = (int(row[3 * i]), int(row[3 * i + 1]), int(row[3 * i + 2]))
        return out

    def changed_since_staged(self, spec: ColumnSpec) -> list[tuple[Any, Any, str | None]]:
        """(key, stored value, staged value or None) of rows whose value is not the one
        we staged for them (written by someone else since), and of rows we never staged
        (given a value since). Locked for update."""
        t, c, pk, name = spec.table, spec.column, spec.primary_key, self._temp_name(spec)
        rows = self.query(
            f"SELECT t.`{pk}`, t.`{c}`, s.new_v FROM `{t}` AS t LEFT JOIN `{name}` AS s ON t.`{pk}` = s.k "
            f"WHERE t.`{c}` IS NOT NULL AND t.`{c}` <> '' "
            f"AND (s.k IS NULL OR NOT (CAST(t.`{c}` AS BINARY) <=> CAST(s.new_v AS BINARY))) FOR UPDATE",
            doing=f"sweeping {spec.label}",
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def compare_and_swap(self, spec: ColumnSpec, pk: Any, old: Any, new: str) -> bool:
        changed = self.execute(
            f"UPDATE `{spec.table}` SET `{spec.column}` = %s WHERE `{spec.primary_key}` = %s "
            f"AND CAST(`{spec.column}` AS BINARY) = CAST(%s AS BINARY)",
            (new, pk, old),
            doing=f"sweeping {spec.label}",
        )
        return changed == 1
