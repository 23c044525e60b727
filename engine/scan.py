"""Reading every stored value and asking GCM which key opened it.

The truth of a rotation is what is stored (docs/architecture.md §4 rule 2). ``classify``
sorts every value into old key / new key / neither; ``converge`` re-encrypts
the values under the other key to the target key with compare-and-swap
writes, and never touches a value that neither key opens.

Plaintexts are folded into an order-independent digest (a sum of SHA-256
values modulo 2**256) so that "the same plaintexts before and after" can be
checked for a million rows in constant memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from engine.cipher import Codec
from engine.db import PanelDB, Row
from engine.profile import ColumnSpec

MAX_LISTED = 20
_MOD = 1 << 256


def value_text(stored: Any) -> str:
    return stored.decode("ascii", errors="replace") if isinstance(stored, bytes | bytearray) else str(stored)


class PlainDigest:
    """Order-independent digest of (column, key, plaintext) triples."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def add(self, label: str, pk: Any, plaintext: bytes) -> None:
        h = hashlib.sha256(f"{label}\x00{pk}\x00".encode() + plaintext).digest()
        self.total = (self.total + int.from_bytes(h, "big")) % _MOD
        self.count += 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlainDigest) and (self.total, self.count) == (other.total, other.count)

    def __hash__(self) -> int:
        return hash((self.total, self.count))


@dataclass
class Census:
    """How many values each key opens, per column."""

    target: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    neither: dict[str, int] = field(default_factory=dict)
    neither_at: list[str] = field(default_factory=list)
    digest: PlainDigest = field(default_factory=PlainDigest)

    @property
    def total(self) -> int:
        return sum(self.target.values()) + sum(self.other.values()) + sum(self.neither.values())

    @property
    def n_target(self) -> int:
        return sum(self.target.values())

    @property
    def n_other(self) -> int:
        return sum(self.other.values())

    @property
    def n_neither(self) -> int:
        return sum(self.neither.values())

    def listed_neither(self) -> str:
        shown = ", ".join(self.neither_at[:MAX_LISTED])
        more = self.n_neither - min(len(self.neither_at), MAX_LISTED)
        return shown + (f" and {more} more" if more > 0 else "")


Progress = Callable[[int], None]


def census(
    db: PanelDB,
    columns: list[ColumnSpec],
    target: Codec,
    other: Codec | None,
    batch: int,
    progress: Progress | None = None,
) -> Census:
    """Classify every value; the digest covers values the target key opens."""
    result = Census()
    done = 0
    for spec in columns:
        label = spec.label
        counts = [0, 0, 0]
        for rows in db.iter_values(spec, batch):
            for pk, stored in rows:
                plain = target.open(stored)
                if plain is not None:
                    counts[0] += 1
                    result.digest.add(label, pk, plain)
                elif other is not None and other.open(stored) is not None:
                    counts[1] += 1
                else:
                    counts[2] += 1
                    if len(result.neither_at) < MAX_LISTED:
                        result.neither_at.append(f"{label} id {pk}")
            done += len(rows)
            if progress:
                progress(done)
        result.target[label], result.other[label], result.neither[label] = counts
    return result


@dataclass
class Rewrite:
    """What ``reencrypt`` did, per column."""

    written: dict[str, int] = field(default_factory=dict)
    neither: dict[str, int] = field(default_factory=dict)
    neither_at: list[str] = field(default_factory=list)
    lost_race: int = 0
    digest: PlainDigest = field(default_factory=PlainDigest)

    @property
    def n_written(self) -> int:
        return sum(self.written.values())


@dataclass
class _Batch:
    statements: list[str]
    staged: int
    neither_at: list[str]
    digest: PlainDigest


def _prepare(
    db: PanelDB, spec: ColumnSpec, rows: list[Row], source: Codec, dest: Codec
) -> _Batch:
    """Decrypt, re-seal and build the staging SQL for one batch (no I/O)."""
    label = spec.label
    digest = PlainDigest()
    neither_at: list[str] = []
    out: list[tuple[Any, Any, str]] = []
    for pk, stored in rows:
        plain = source.open(stored)
        if plain is None:
            already = dest.open(stored)
            if already is not None:
                digest.add(label, pk, already)
            else:
                neither_at.append(f"{label} id {pk}")
            continue
        digest.add(label, pk, plain)
        out.append((pk, stored, dest.seal(plain)))
    return _Batch(db.staging_statements(spec, out), len(out), neither_at, digest)


def reencrypt(
    db: PanelDB,
    columns: list[ColumnSpec],
    source: Codec,
    dest: Codec,
    batch: int,
    *,
    lock_rows: bool,
    progress: Progress | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> Rewrite:
    """Inside one transaction (begun here, committed by the caller): every value
    ``source`` opens is sealed under ``dest``; values ``dest`` already opens are
    kept; values neither opens are counted and never touched.

    Rows are read ``FOR UPDATE`` when ``lock_rows``, so a panel write to a row
    waits for our commit instead of racing us. A worker thread does the crypto
    and builds the SQL of batch n while the connection carries batch n-1 and
    reads batch n+1: the server's time and Python's overlap.
    """
    result = Rewrite()
    for spec in columns:
        db.prepare_staging(spec)
    db.begin()
    done = 0
    batches = 0

    def collect(spec: ColumnSpec, prepared: _Batch) -> int:
        nonlocal batches
        db.stage(spec, prepared.statements)
        result.digest.total = (result.digest.total + prepared.digest.total) % _MOD
        result.digest.count += prepared.digest.count
        for where in prepared.neither_at:
            result.neither[spec.label] = result.neither.get(spec.label, 0) + 1
            if len(result.neither_at) < MAX_LISTED:
                result.neither_at.append(where)
        batches += 1
        if after_batch:
            after_batch(batches)
        return prepared.staged

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reencrypt") as worker:
        for spec in columns:
            staged = 0
            pending: Future[_Batch] | None = None
            for rows in db.iter_values(spec, batch, for_update=lock_rows):
                job = worker.submit(_prepare, db, spec, rows, source, dest)
                if pending is not None:
                    staged += collect(spec, pending.result())
                pending = job
                done += len(rows)
                if progress:
                    progress(done)
            if pending is not None:
                staged += collect(spec, pending.result())
            changed = db.apply_staged(spec) if staged else 0
            result.lost_race += staged - changed
            result.written[spec.label] = changed
    return result


def sweep(db: PanelDB, columns: list[ColumnSpec], old: Codec, new: Codec) -> Rewrite:
    """After ``reencrypt`` committed: re-encrypt what was written under the old key
    since. Only rows that differ from what we staged are read, so this costs a
    join on the server, not another pass over every value in Python."""
    result = Rewrite()
    db.begin()
    for spec in columns:
        written = 0
        for pk, stored in db.changed_since_staged(spec):
            plain = old.open(stored)
            if plain is None:
                if new.open(stored) is None:
                    result.neither[spec.label] = result.neither.get(spec.label, 0) + 1
                    if len(result.neither_at) < MAX_LISTED:
                        result.neither_at.append(f"{spec.label} id {pk}")
                continue
            written += db.compare_and_swap(spec, pk, stored, new.seal(plain))
        result.written[spec.label] = written
    return result


def total_values(db: PanelDB, columns: list[ColumnSpec]) -> dict[str, int]:
    return {spec.label: db.count(spec) for spec in columns}
