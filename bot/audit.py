"""The append-only, hash-chained audit log: append, export and verify.

The chain itself (hashing, appending inside a transaction, reading back) is
stored by ``bot.store.audit_chain``; this module builds on it and the store
never imports this one.

Each entry's hash covers its sequence number, time, kind, request id, actor,
data and the previous entry's hash; the store also keeps the head (last
sequence number and hash). So ``verify`` finds an entry that was changed
(its hash no longer matches), removed (a gap, or a ``prev_hash`` that points
at nothing, or a head past the end) or reordered (sequence numbers and
``prev_hash`` links no longer agree). Entries are appended in the same
transaction as the state change they record.

Nothing secret is ever written here: requests carry ids, reasons and plans;
engine events carry fingerprints only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from bot.store import Store
from bot.store.audit_chain import GENESIS, append_in, canonical, entry_hash

__all__ = [
    "GENESIS",
    "AuditLog",
    "VerifyReport",
    "append_in",
    "canonical",
    "entry_hash",
    "export_line",
    "read_export",
    "verify_entries",
]


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head_hash: str
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"audit log verified: {self.entries} entries, head {self.head_hash[:16]}"
        return f"audit log BROKEN ({len(self.problems)} problems):\n  " + "\n  ".join(self.problems)


def verify_entries(
    entries: Iterable[dict[str, Any]], head: tuple[int, str] | None = None
) -> VerifyReport:
    """Re-walk the chain; ``head`` (seq, hash) is the store's record of its end."""
    problems: list[str] = []
    expected_seq, prev = 1, GENESIS
    count = 0
    for entry in entries:
        count += 1
        seq = int(entry["seq"])
        data = entry["data"] if isinstance(entry["data"], str) else canonical(entry["data"])
        if seq != expected_seq:
            problems.append(
                f"entry {seq}: expected sequence number {expected_seq} (removed or reordered)"
            )
        if entry["prev_hash"] != prev:
            problems.append(
                f"entry {seq}: does not follow the entry before it (removed or reordered)"
            )
        digest = entry_hash(
            seq=seq,
            ts_ms=int(entry["ts_ms"]),
            kind=str(entry["kind"]),
            request_id=str(entry["request_id"]),
            actor=str(entry["actor"]),
            data=data,
            prev_hash=str(entry["prev_hash"]),
        )
        if digest != entry["hash"]:
            problems.append(f"entry {seq}: content does not match its hash (changed)")
        expected_seq, prev = seq + 1, str(entry["hash"])
    if head is not None:
        head_seq, head_hash = head
        if head_seq != expected_seq - 1 or (head_seq and head_hash != prev):
            problems.append(
                f"the log ends at entry {expected_seq - 1} but its head records entry {head_seq} "
                "(entries removed at the end, or the head was changed)"
            )
    return VerifyReport(ok=not problems, entries=count, head_hash=prev, problems=problems)


def export_line(entry: dict[str, Any]) -> str:
    """One JSON Lines record: the stored fields, plus a readable UTC time."""
    record = dict(entry)
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["ts_ms"] / 1000)) + "Z"
    record["data"] = json.loads(entry["data"]) if isinstance(entry["data"], str) else entry["data"]
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def read_export(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield json.loads(line)


class AuditLog:
    """Append, export and verify, on top of a ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(
        self, kind: str, request_id: str, actor: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        with self.store.transaction() as tx:
            return append_in(
                tx,
                kind=kind,
                request_id=request_id,
                actor=actor,
                data=data,
                ts_ms=int(self.store.clock() * 1000),
            )

    def export(self, out: IO[str], since: float | None = None) -> int:
        written = 0
        for entry in self.store.audit_entries(since_ts_ms=int(since * 1000) if since else None):
            out.write(export_line(entry))
            written += 1
        return written

    def verify(self) -> VerifyReport:
        return verify_entries(self.store.audit_entries(), head=self.store.audit_head())
