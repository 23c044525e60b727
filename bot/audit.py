"""The append-only audit log: append, export, and verify against anchors kept outside the store.

The chain itself (HMAC per entry, appending inside a transaction, reading
back) is ``bot.store.audit_chain``; this module builds on it, and the store
never imports this one.

What each check finds:

* an entry changed, even if someone re-hashed the chain: its HMAC no longer
  matches, and only the holder of the audit key (``bot.audit_key``, kept
  outside the store) can compute a new one;
* an entry removed or moved: a gap in sequence numbers or a ``prev_hash``
  that points elsewhere;
* entries removed from the end with the head moved back: only something
  outside the store can tell, so the head is anchored outside it. Every
  request's closing summary in Slack shows ``audit #SEQ DIGEST`` (the chain
  position and the first 16 hex of its HMAC when the summary was posted);
  ``verify`` checks each anchor given (``--anchor SEQ:DIGEST``, or read back
  from the Slack threads) against the log;
* lines cut off an export: each export ends with a head record (first and
  last entry, count) signed with the audit key, so a shortened export has no
  valid head.

Nothing secret is ever written here: requests carry ids, reasons and plans;
engine events carry fingerprints only.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from bot.audit_key import AuditKey
from bot.errors import BotError
from bot.store import Store
from bot.store.audit_chain import GENESIS, append_in, canonical, entry_hash

__all__ = [
    "ANCHOR_DIGITS",
    "GENESIS",
    "Anchor",
    "AuditLog",
    "Export",
    "VerifyReport",
    "append_in",
    "canonical",
    "entry_hash",
    "export_line",
    "read_export",
    "verify_entries",
]

#: hex digits of an entry's HMAC shown in Slack and accepted by ``--anchor`` (64 bits at least)
ANCHOR_DIGITS = 16
ANCHOR_PATTERN = re.compile(r"\baudit #(\d+) ([0-9a-f]{16,64})\b")


@dataclass(frozen=True)
class Anchor:
    """A chain position seen outside the store: entry ``seq`` had an HMAC starting ``digest``."""

    seq: int
    digest: str
    source: str = "the command line"

    @classmethod
    def parse(cls, text: str, source: str = "the command line") -> Anchor:
        """``SEQ:DIGEST`` (``57:3f9a0c1d2e4b5a6f``) or ``audit #57 3f9a0c1d2e4b5a6f``."""
        match = re.fullmatch(r"\s*#?(\d+)[:\s]\s*([0-9a-fA-F]+)\s*", text.removeprefix("audit "))
        if not match or not ANCHOR_DIGITS <= len(match.group(2)) <= 64:
            raise BotError(
                f"--anchor: {text!r} is not SEQ:DIGEST with {ANCHOR_DIGITS} to 64 hex digits "
                "(copy it from a closing summary: `audit #57 3f9a0c1d2e4b5a6f` is 57:3f9a0c1d2e4b5a6f)"
            )
        return cls(int(match.group(1)), match.group(2).lower(), source)

    @classmethod
    def of(cls, seq: int, digest: str, source: str = "the store") -> Anchor:
        return cls(seq, digest[:ANCHOR_DIGITS], source)

    def text(self) -> str:
        """As shown in Slack, and as ``ANCHOR_PATTERN`` reads it back."""
        return f"audit #{self.seq} {self.digest}"

    def __str__(self) -> str:
        return f"{self.seq}:{self.digest} (from {self.source})"


def anchors_in(text: str, source: str) -> list[Anchor]:
    return [Anchor(int(s), d, source) for s, d in ANCHOR_PATTERN.findall(text)]


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head_hash: str
    head_seq: int = 0
    problems: list[str] = field(default_factory=list)
    anchors_checked: list[Anchor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            lines = [f"audit log NOT verified ({len(self.problems)} problems):"]
            lines += [f"  - {p}" for p in self.problems]
        elif self.anchors_checked:
            newest = max(self.anchors_checked, key=lambda a: a.seq)
            lines = [
                f"audit log verified: {self.entries} entries, head #{self.head_seq} "
                f"{self.head_hash[:ANCHOR_DIGITS]}, matches {len(self.anchors_checked)} "
                f"anchor(s), the newest {newest}"
            ]
        else:
            lines = [
                f"audit log intact but NOT anchored: {self.entries} entries, head "
                f"#{self.head_seq} {self.head_hash[:ANCHOR_DIGITS]}. Entries cut off the end "
                "can't be ruled out without an anchor: give --anchor SEQ:DIGEST (from a "
                "request's closing summary in Slack) or --slack"
            ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass
class Export:
    """An exported file read back: its entries, and its signed head record (None if missing)."""

    entries: list[dict[str, Any]]
    head: dict[str, Any] | None
    after_head: int = 0


def _export_head_mac(key: AuditKey, head: dict[str, Any]) -> str:
    return key.mac(canonical(["rotator-audit-export-head", head]).encode())


def same_mac(expected: str, stored: Any) -> bool:
    """Whether a stored MAC (or chain link) is exactly ``expected``: every digit, compared in
    constant time. Never a prefix: a MAC altered past its 16th digit must fail, though the
    16 digits an anchor shows still match it."""
    if not isinstance(stored, str):
        return False
    return hmac.compare_digest(expected.encode(), stored.encode("utf-8", "surrogatepass"))


def verify_entries(
    entries: Iterable[dict[str, Any]],
    key: AuditKey,
    *,
    head: tuple[int, str] | None = None,
    anchors: Sequence[Anchor] = (),
    export: Export | None = None,
) -> VerifyReport:
    """Re-walk the chain under ``key``.

    ``head`` (seq, hash) is the store's own record of its end; ``anchors`` are
    positions seen outside the store; ``export`` is the file's signed head record,
    for an exported file (whose chain may start after entry 1, with ``--since``).
    """
    problems: list[str] = []
    notes: list[str] = []
    start_seq, start_prev = 1, GENESIS
    export_head = export.head if export else None
    if export is not None:
        if export_head is None:
            problems.append(
                "the export has no head record: lines were cut off its end "
                "(or it was not written by `audit export`)"
            )
        elif not same_mac(_export_head_mac(key, export_head.get("head") or {}), export_head.get("mac")):
            problems.append(
                "the export's head record does not match its HMAC: it was changed, or the "
                "wrong audit key is in use"
            )
            export_head = None
        else:
            if export.after_head:
                problems.append(
                    f"{export.after_head} entries follow the export's head record: lines were added"
                )
            start_seq = int(export_head["head"]["first_seq"]) or 1
            start_prev = str(export_head["head"]["first_prev_hash"])
    expected_seq, prev = start_seq, start_prev
    count = 0
    bad_macs: list[int] = []
    seen: dict[int, str] = {}
    for entry in entries:
        count += 1
        seq = int(entry["seq"])
        data = entry["data"] if isinstance(entry["data"], str) else canonical(entry["data"])
        if seq != expected_seq:
            problems.append(
                f"entry {seq}: expected sequence number {expected_seq} (removed or reordered)"
            )
        if not same_mac(prev, entry["prev_hash"]):
            problems.append(
                f"entry {seq}: does not follow the entry before it (removed or reordered)"
            )
        digest = entry_hash(
            key,
            seq=seq,
            ts_ms=int(entry["ts_ms"]),
            kind=str(entry["kind"]),
            request_id=str(entry["request_id"]),
            actor=str(entry["actor"]),
            data=data,
            prev_hash=str(entry["prev_hash"]),
        )
        if not same_mac(digest, entry["hash"]):
            bad_macs.append(seq)
            problems.append(f"entry {seq}: content does not match its HMAC (changed)")
        seen[seq] = str(entry["hash"])
        expected_seq, prev = seq + 1, str(entry["hash"])
    last_seq = expected_seq - 1
    if count and len(bad_macs) == count and count > 1:
        problems = [p for p in problems if "does not match its HMAC" not in p]
        problems.append(
            f"none of the {count} entries matches its HMAC under audit key {key.fingerprint}: "
            "the wrong key, or the whole log was re-hashed"
        )
    if head is not None:
        head_seq, head_hash = head
        if head_seq != last_seq or (head_seq and not same_mac(prev, head_hash)):
            problems.append(
                f"the log ends at entry {last_seq} but its head records entry {head_seq} "
                "(entries removed at the end, or the head was changed)"
            )
    if export_head is not None:
        recorded = export_head["head"]
        if int(recorded["entries"]) != count or int(recorded["last_seq"]) != last_seq:
            problems.append(
                f"the export holds {count} entries up to entry {last_seq}, but its head record "
                f"says {recorded['entries']} up to entry {recorded['last_seq']}: lines were cut"
            )
        elif count and not same_mac(prev, recorded["last_hash"]):
            problems.append("the export's last entry is not the one its head record names")
    checked: list[Anchor] = []
    for anchor in anchors:
        if anchor.seq > last_seq:
            problems.append(
                f"anchor {anchor} shows the log reached entry {anchor.seq}, but it ends at "
                f"entry {last_seq}: entries were removed from the end"
            )
        elif anchor.seq in seen:
            # an anchor holds the first 16 (to 64) digits, by design: those, and no fewer
            digits = len(anchor.digest)
            if digits >= ANCHOR_DIGITS and same_mac(seen[anchor.seq][:digits], anchor.digest):
                checked.append(anchor)
            else:
                problems.append(
                    f"entry {anchor.seq} does not match anchor {anchor}: the log was rewritten"
                )
        else:
            notes.append(f"anchor {anchor} is before this export's first entry; not checked")
    return VerifyReport(
        ok=not problems,
        entries=count,
        head_hash=prev,
        head_seq=last_seq,
        problems=problems,
        anchors_checked=checked,
        notes=notes,
    )


def export_line(entry: dict[str, Any]) -> str:
    """One JSON Lines record: the stored fields, plus a readable UTC time."""
    record = dict(entry)
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["ts_ms"] / 1000)) + "Z"
    record["data"] = json.loads(entry["data"]) if isinstance(entry["data"], str) else entry["data"]
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def read_export(stream: IO[str], name: str = "the export") -> Export:
    """Entries and the head record of an exported file; a clear error for a line that isn't JSON."""
    entries: list[dict[str, Any]] = []
    head: dict[str, Any] | None = None
    after_head = 0
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise BotError(f"line {number} of {name} is not JSON") from None
        if not isinstance(record, dict):
            raise BotError(f"line {number} of {name} is not an audit record")
        if "export_head" in record:
            head = {"head": record["export_head"], "mac": record.get("mac")}
            continue
        if head is not None:
            after_head += 1
        missing = {"seq", "ts_ms", "kind", "request_id", "actor", "data", "prev_hash", "hash"}
        if missing - set(record):
            raise BotError(f"line {number} of {name} is not an audit record")
        entries.append(record)
    return Export(entries, head, after_head)


class AuditLog:
    """Append, export and verify, on top of a ``Store`` opened with the audit key."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def key(self) -> AuditKey:
        if self.store.audit_key is None:
            raise BotError("the audit key is needed: set ROTATOR_AUDIT_KEY_FILE")
        return self.store.audit_key

    def append(
        self, kind: str, request_id: str, actor: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        with self.store.transaction() as tx:
            return append_in(
                tx,
                self.store.audit_key,
                kind=kind,
                request_id=request_id,
                actor=actor,
                data=data,
                ts_ms=int(self.store.clock() * 1000),
            )

    def anchor(self) -> Anchor:
        """The chain's current head, as a request's closing summary shows it."""
        seq, digest = self.store.audit_head()
        return Anchor.of(seq, digest)

    def export(self, out: IO[str], since: float | None = None) -> int:
        """Write the entries, then a head record signed with the audit key; returns the count."""
        key = self.key
        entries = list(self.store.audit_entries(since_ts_ms=int(since * 1000) if since else None))
        for entry in entries:
            out.write(export_line(entry))
        head = {
            "first_seq": entries[0]["seq"] if entries else 0,
            "first_prev_hash": entries[0]["prev_hash"] if entries else GENESIS,
            "last_seq": entries[-1]["seq"] if entries else 0,
            "last_hash": entries[-1]["hash"] if entries else GENESIS,
            "entries": len(entries),
            "since_ts_ms": int(since * 1000) if since else None,
        }
        record = {"export_head": head, "mac": _export_head_mac(key, head)}
        out.write(json.dumps(record, sort_keys=True) + "\n")
        return len(entries)

    def verify(self, anchors: Sequence[Anchor] = ()) -> VerifyReport:
        entries, head = self.store.audit_snapshot()
        return verify_entries(entries, self.key, head=head, anchors=anchors)
