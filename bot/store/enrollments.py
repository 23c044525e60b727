"""Approvers' TOTP enrollments: the sealed secret, the last time step used, recent failures.

The secret is stored sealed (``bot.enrollment_key``: the key is never in this
database). ``use_step`` is a compare-and-swap on the last accepted time step, so
a code is accepted once, by one replica, and no older code after it.
Failures are rows with a time, so every replica counts the same window.
Enrolling and resetting each write an audit entry in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.audit_chain import append_in
from bot.store.database import Database


@dataclass(frozen=True)
class Enrollment:
    user_id: str
    sealed_secret: str
    enrolled_at: float
    last_step: int


class EnrollmentRows(Database):
    def enroll(self, user_id: str, sealed_secret: str, *, actor: str) -> bool:
        """Store a new enrollment; False if ``user_id`` is enrolled already (nothing changed)."""
        now = self.clock()
        with self.transaction() as tx:
            inserted = tx.execute(
                f"{self._backend.insert_ignore} INTO totp_enrollments "
                "(user_id, sealed_secret, enrolled_at, last_step) VALUES (?, ?, ?, ?)",
                (user_id, sealed_secret, now, -1),
            )
            if inserted != 1:
                return False
            append_in(
                tx,
                self.audit_key,
                kind="step_up.enrolled",
                request_id="",
                actor=actor,
                data={"user": user_id, "method": "totp"},
                ts_ms=int(now * 1000),
            )
        return True

    def enrollment(self, user_id: str) -> Enrollment | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT user_id, sealed_secret, enrolled_at, last_step FROM totp_enrollments "
                "WHERE user_id = ?",
                (user_id,),
            )
        if row is None:
            return None
        return Enrollment(str(row[0]), str(row[1]), float(row[2]), int(row[3]))

    def use_step(self, user_id: str, step: int) -> bool:
        """Accept time step ``step`` for ``user_id`` once: False if it, or a later one, was used."""
        with self.transaction() as tx:
            changed = tx.execute(
                "UPDATE totp_enrollments SET last_step = ? WHERE user_id = ? AND last_step < ?",
                (step, user_id, step),
            )
        return changed == 1

    def reset_enrollment(self, user_id: str, *, actor: str) -> bool:
        """Remove ``user_id``'s enrollment and failures (audited); False if there was none."""
        now = self.clock()
        with self.transaction() as tx:
            removed = tx.execute("DELETE FROM totp_enrollments WHERE user_id = ?", (user_id,))
            tx.execute("DELETE FROM totp_failures WHERE user_id = ?", (user_id,))
            if removed != 1:
                return False
            append_in(
                tx,
                self.audit_key,
                kind="step_up.reset",
                request_id="",
                actor=actor,
                data={"user": user_id, "method": "totp"},
                ts_ms=int(now * 1000),
            )
        return True

    def record_failure(self, user_id: str, *, keep_s: float) -> None:
        """Count one failed code now; failures older than ``keep_s`` are dropped meanwhile."""
        now = self.clock()
        with self.transaction() as tx:
            tx.execute(
                "DELETE FROM totp_failures WHERE user_id = ? AND at < ?", (user_id, now - keep_s)
            )
            tx.execute("INSERT INTO totp_failures (user_id, at) VALUES (?, ?)", (user_id, now))

    def failures_since(self, user_id: str, since: float) -> list[float]:
        """The times of ``user_id``'s failed codes since ``since``, oldest first."""
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT at FROM totp_failures WHERE user_id = ? AND at >= ? ORDER BY at",
                (user_id, since),
            )
        return [float(r[0]) for r in rows]
