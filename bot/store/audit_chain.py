"""The audit log's chain as stored: append inside a transaction, read entries and head.

Each entry's ``hash`` is an HMAC-SHA256, under the audit key (``bot.audit_key``,
never stored here), of its sequence number, time, kind, request id, actor,
data and the previous entry's hash; the ``audit_head`` row keeps the last
sequence number and hash. Without the key, an entry can't be changed and
re-signed. Verifying, anchors and exports live in ``bot.audit``, which builds
on this module (never the other way round).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from bot.audit_key import AuditKey
from bot.errors import StoreError
from bot.store.database import Database
from bot.store.sql import Tx

GENESIS = "0" * 64
ENTRY_FIELDS = ("seq", "ts_ms", "kind", "request_id", "actor", "data", "prev_hash", "hash")


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(
    key: AuditKey,
    *,
    seq: int,
    ts_ms: int,
    kind: str,
    request_id: str,
    actor: str,
    data: str,
    prev_hash: str,
) -> str:
    """The entry's HMAC: every stored field but the hash itself."""
    material = canonical([seq, ts_ms, kind, request_id, actor, data, prev_hash])
    return key.mac(material.encode())


def append_in(
    tx: Tx,
    key: AuditKey | None,
    *,
    kind: str,
    request_id: str,
    actor: str,
    data: dict[str, Any],
    ts_ms: int,
) -> dict[str, Any]:
    """Append one entry inside the caller's transaction (the head row is locked first)."""
    if key is None:
        raise StoreError(
            "the state store was opened without the audit key, so it cannot append to the "
            "audit log (set ROTATOR_AUDIT_KEY_FILE)"
        )
    head = tx.one(f"SELECT seq, hash FROM audit_head WHERE id = 1{tx.for_update}")
    prev_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS)
    seq = prev_seq + 1
    text = canonical(data)
    digest = entry_hash(
        key,
        seq=seq,
        ts_ms=ts_ms,
        kind=kind,
        request_id=request_id,
        actor=actor,
        data=text,
        prev_hash=prev_hash,
    )
    tx.execute(
        "INSERT INTO audit_log (seq, ts_ms, kind, request_id, actor, data, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts_ms, kind, request_id, actor, text, prev_hash, digest),
    )
    tx.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    return {"seq": seq, "hash": digest}


class AuditRows(Database):
    """Reading the chain back: its entries in order, and the head the store records."""

    def audit_entries(self, since_ts_ms: int | None = None) -> Iterator[dict[str, Any]]:
        sql = f"SELECT {', '.join(ENTRY_FIELDS)} FROM audit_log"
        params: tuple[Any, ...] = ()
        if since_ts_ms is not None:
            sql += " WHERE ts_ms >= ?"
            params = (since_ts_ms,)
        with self.transaction() as tx:
            rows = tx.all(sql + " ORDER BY seq", params)
        for row in rows:
            entry = dict(zip(ENTRY_FIELDS, row, strict=True))
            entry["seq"], entry["ts_ms"] = int(entry["seq"]), int(entry["ts_ms"])
            yield entry

    def audit_snapshot(self) -> tuple[list[dict[str, Any]], tuple[int, str]]:
        """Every entry and the head, read in one transaction: a bot appending meanwhile
        cannot make the head look ahead of the entries."""
        with self.transaction() as tx:
            head = tx.one("SELECT seq, hash FROM audit_head WHERE id = 1")
            rows = tx.all(f"SELECT {', '.join(ENTRY_FIELDS)} FROM audit_log ORDER BY seq")
        entries = []
        for row in rows:
            entry = dict(zip(ENTRY_FIELDS, row, strict=True))
            entry["seq"], entry["ts_ms"] = int(entry["seq"]), int(entry["ts_ms"])
            entries.append(entry)
        return entries, ((int(head[0]), str(head[1])) if head else (0, GENESIS))

    def audit_head(self) -> tuple[int, str]:
        with self.transaction() as tx:
            row = tx.one("SELECT seq, hash FROM audit_head WHERE id = 1")
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)
