"""The people offboarded: recorded when an offboarding is filed, asked by every surface
(``handlers.ops.fleet.refusal``, the Home tab), listed and restored by an admin
(``python -m bot people``). Each change is audited in the same transaction.

Restoring removes the record only: the TOTP enrollment and approvals revoked at the
offboarding stay revoked (the person enrolls again; voided requests stay voided).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.audit_chain import append_in
from bot.store.database import Database


@dataclass(frozen=True)
class Offboarded:
    """One person's offboarding record: by which request, filed by whom, when."""

    user_id: str
    request_id: str
    actor: str
    at: float


@dataclass(frozen=True)
class Restored:
    """What a restore removed, and its audit record's position (``audit #SEQ``)."""

    record: Offboarded
    audit_seq: int


class OffboardedRows(Database):
    def mark_offboarded(self, user_id: str, *, request_id: str, actor: str) -> bool:
        """Record that ``user_id`` left (audited); False if they were already recorded."""
        now = self.clock()
        with self.transaction() as tx:
            added = tx.execute(
                f"{self._backend.insert_ignore} INTO offboarded_people (user_id, request_id, actor, at) "
                "VALUES (?, ?, ?, ?)",
                (user_id[:32], request_id, actor[:128], now),
            )
            append_in(
                tx,
                self.audit_key,
                kind="person.offboarded",
                request_id=request_id,
                actor=actor,
                data={"user": user_id, "approvals": "revoked", "first_time": added == 1},
                ts_ms=int(now * 1000),
            )
        return added == 1

    def is_offboarded(self, user_id: str) -> bool:
        with self.transaction() as tx:
            return tx.one("SELECT 1 FROM offboarded_people WHERE user_id = ?", (user_id[:32],)) is not None

    def offboarded_people(self) -> list[Offboarded]:
        """Everyone offboarded now, oldest first."""
        with self.transaction() as tx:
            rows = tx.all("SELECT user_id, request_id, actor, at FROM offboarded_people ORDER BY at, user_id")
        return [Offboarded(str(u), str(r), str(a), float(at)) for u, r, a, at in rows]

    def restore_offboarded(self, user_id: str, *, actor: str, reason: str) -> Restored | None:
        """Remove ``user_id``'s offboarding record, audited (``person.restored``, tied to the
        offboarding request, with ``actor`` and ``reason``); None if they were not offboarded
        (nothing written). Their enrollment and approvals are not given back."""
        now = self.clock()
        with self.transaction() as tx:
            row = tx.one(
                f"SELECT user_id, request_id, actor, at FROM offboarded_people WHERE user_id = ?{tx.for_update}",
                (user_id[:32],),
            )
            if row is None or tx.execute("DELETE FROM offboarded_people WHERE user_id = ?", (user_id[:32],)) != 1:
                return None
            record = Offboarded(str(row[0]), str(row[1]), str(row[2]), float(row[3]))
            entry = append_in(
                tx,
                self.audit_key,
                kind="person.restored",
                request_id=record.request_id,
                actor=actor,
                data={
                    "user": record.user_id,
                    "reason": reason,
                    "offboarded_by": record.actor,
                    "offboarded_at": record.at,
                    "enrollment": "not restored",
                    "approvals": "not restored",
                },
                ts_ms=int(now * 1000),
            )
        return Restored(record, int(entry["seq"]))
