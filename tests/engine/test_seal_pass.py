"""The rotation's one pass, batch by batch: what it proves about each value it stages."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from engine.cipher import Codec, Scheme
from engine.db import ConnectionSettings, Literal, PanelDB, staging_statements, value_digest
from engine.errors import VerificationError
from engine.ops.key.scan import Rewrite, Written, _seal_batch
from engine.ops.key.verify import check_written
from engine.profile import ColumnSpec
from tests.support.mariadb import TestDatabase

SCHEME = Scheme.parse("iv12_tag_ct/hex")


class _TamperingCodec(Codec):
    """Seals like the real one, then flips one bit of the stored text: what a layout bug
    or a corrupted buffer would write."""

    __slots__ = ()

    def seal(self, plaintext: bytes) -> str:
        good = super().seal(plaintext)
        return good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]


def _rows(codec: Codec, n: int) -> list[tuple[int, str]]:
    return [(i, codec.seal(f"pw-{i}".encode())) for i in range(1, n + 1)]


def test_every_staged_value_opens_under_the_new_key_to_its_plaintext() -> None:
    old, new = Codec(SCHEME, secrets.token_hex(32)), Codec(SCHEME, secrets.token_hex(32))
    part = _seal_batch((old, new), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), _rows(old, 5))

    assert (part.staged, part.roundtrip_failed, part.n_neither, part.kept) == (5, 0, 0, 0)
    assert part.written.count == 5
    assert len(part.statements) == 1 and part.statements[0].count("),(") == 4


def test_a_sealed_value_that_does_not_open_again_is_counted_and_stops_the_rotation() -> None:
    key = secrets.token_hex(32)
    old, broken = Codec(SCHEME, secrets.token_hex(32)), _TamperingCodec(SCHEME, key)
    part = _seal_batch((old, broken), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), _rows(old, 4))

    assert part.roundtrip_failed == 4
    rewrite = Rewrite(roundtrip_failed=part.roundtrip_failed, sealed={"t.c": Written()})
    with pytest.raises(VerificationError, match="did not open again under the new key"):
        check_written(db=None, columns=[], rewrite=rewrite)  # type: ignore[arg-type]


def test_values_the_current_key_does_not_open_are_named_and_not_staged() -> None:
    old, new, other = (Codec(SCHEME, secrets.token_hex(32)) for _ in range(3))
    rows = [*_rows(old, 3), (9, other.seal(b"foreign"))]
    part = _seal_batch((old, new), "t.c", "INSERT INTO s (k, new_v) VALUES ", Literal(False), rows)

    assert (part.staged, part.n_neither, part.neither_at) == (3, 1, ["t.c id 9"])


class _RecordingCodec(Codec):
    """Seals like the real one and keeps every text it sealed, in order."""

    __slots__ = ("texts",)

    def __init__(self, scheme: Scheme, key_hex: str) -> None:
        super().__init__(scheme, key_hex)
        self.texts: list[str] = []

    def seal(self, plaintext: bytes) -> str:
        self.texts.append(super().seal(plaintext))
        return self.texts[-1]


def _mixed_rows(old: Codec, new: Codec, other: Codec, keys: list[Any]) -> list[tuple[Any, str]]:
    """Short passwords, multi-KB keys, a value already under ``new`` and one no key opens."""
    rows = []
    for i, pk in enumerate(keys):
        plain = (f"key-{i}-".encode() * 400) if i % 4 == 1 else f"pw-{i}".encode()
        codec = new if i % 7 == 5 else other if i % 11 == 9 else old
        rows.append((pk, codec.seal(plain)))
    return rows


@pytest.mark.parametrize("keys", [list(range(1, 31)), [f"k-{i}'x\\" for i in range(30)]], ids=["int", "str"])
def test_the_one_loop_stages_and_sums_what_the_helpers_would(keys: list[Any]) -> None:
    """``_seal_batch`` writes the INSERTs ``staging_statements`` writes and the sums
    ``Written.add_row`` (``row_checksum``) adds up, for the values it reads and those it stages."""
    old, other = Codec(SCHEME, secrets.token_hex(32)), Codec(SCHEME, secrets.token_hex(32))
    new = _RecordingCodec(SCHEME, secrets.token_hex(32))
    rows = _mixed_rows(old, new, other, keys)
    new.texts.clear()
    literal = Literal(False)
    part = _seal_batch((old, new), "t.c", "INSERT INTO s (k, new_v, read_md5) VALUES ", literal, rows)

    read, written = Written(), Written()
    staged: list[tuple[Any, str | None, str | None]] = []
    texts = iter(new.texts)
    for pk, stored in rows:
        read.add_row(pk, stored)
        if old.open(stored) is not None:
            sealed = next(texts)
        elif new.open(stored) is not None:
            sealed = stored
        else:
            continue
        written.add_row(pk, sealed)
        staged.append((pk, sealed, value_digest(stored)))
    expected = staging_statements("INSERT INTO s (k, new_v, read_md5) VALUES ", staged, literal)
    assert (expected, read, written) == (part.statements, part.read, part.written)
    assert (part.staged, part.kept, part.n_neither) == (len(staged) - 4, 4, 2)


def test_the_one_loop_sums_as_the_server_does(mysql_db: TestDatabase) -> None:
    """What the pass read, summed in the worker, equals the server's fingerprint of the
    column (CRC32 of "key:value"), for int and string keys and multi-KB values; NULL and
    '' count for neither."""
    old, new = Codec(SCHEME, secrets.token_hex(32)), Codec(SCHEME, secrets.token_hex(32))
    mysql_db.execute("CREATE TABLE n (id INT PRIMARY KEY, v TEXT)")
    mysql_db.execute("CREATE TABLE s (code VARCHAR(40) PRIMARY KEY, v TEXT)")
    values = [old.seal(b"k" * 3000 if i % 3 == 0 else f"pw-{i}".encode()) for i in range(40)]
    values[5], values[6] = None, ""  # type: ignore[call-overload]
    mysql_db.insert_rows("n", ["id", "v"], [(i + 1, v) for i, v in enumerate(values)])
    mysql_db.insert_rows("s", ["code", "v"], [(f"c-{i}", v) for i, v in enumerate(values)])
    db = PanelDB(ConnectionSettings(mysql_db.host, mysql_db.port, mysql_db.name, mysql_db.user,
                                    mysql_db.password, None, 5.0))
    try:
        for spec in (ColumnSpec(table="n", column="v"), ColumnSpec(table="s", column="v", primary_key="code")):
            rows = [row for part in db.iter_values(spec, 100) for row in part]
            part = _seal_batch((old, new), spec.label, "INSERT INTO x VALUES ", db.literal(), rows)
            assert db.fingerprint(spec) == part.read.as_tuple()
    finally:
        db.close()


def test_one_scan_per_table_reads_each_column_as_the_per_column_reads_did(mysql_db: TestDatabase) -> None:
    """``iter_rows`` reads a table's columns in one scan: per column, the values it holds
    are exactly what ``iter_values`` reads, and every other row comes as NULL or '' (a
    blank value the server's collation counts as empty too)."""
    mysql_db.execute("CREATE TABLE t (id INT PRIMARY KEY, a TEXT, b TEXT) DEFAULT CHARSET utf8mb4")
    cells = [None, "", "  ", "x", "pw-1", "k" * 3000, "é€"]
    rows = [(i + 1, cells[i % 7], cells[(i * 3) % 7]) for i in range(50)]
    mysql_db.insert_rows("t", ["id", "a", "b"], rows)
    specs = [ColumnSpec(table="t", column="a"), ColumnSpec(table="t", column="b")]
    db = PanelDB(ConnectionSettings(mysql_db.host, mysql_db.port, mysql_db.name, mysql_db.user,
                                    mysql_db.password, None, 5.0))
    try:
        read = [row for part in db.iter_rows(specs, 7) for row in part]
        for i, spec in enumerate(specs, start=1):
            values = [row for part in db.iter_values(spec, 7) for row in part]
            assert values == [(row[0], row[i]) for row in read if row[i]]
            assert {row[i] for row in read if not row[i]} == {None, ""}
        assert [row[0] for row in read] == list(range(1, 51))
    finally:
        db.close()
