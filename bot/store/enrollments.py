"""Approvers' TOTP enrollments: the sealed secret, its status, the last time step used, tries.

The secret is stored sealed (``bot.enrollment_key``: the key is never in this
database). An enrollment moves ``pending`` (the secret was sent; it expires
unconfirmed after ``pending_until``) -> ``awaiting_approval`` (its owner typed a
first valid code; an enroll admin must approve it) -> ``active`` (it approves
rotations). Without the admin step it goes from ``pending`` straight to
``active``. Each move is a compare-and-swap on the status, audited in the same
transaction.

``use_step`` is a compare-and-swap on the last accepted time step, so a code is
accepted once, by one replica, and no older code after it.

Tries are rows with a time, so every replica counts the same window. A try is
taken (``take_try``) before the code is looked at, under a lock on the
enrollment's row (``FOR UPDATE`` on MySQL; SQLite's ``BEGIN IMMEDIATE`` locks the
whole file): the count, the limit and the insert are one step, so parallel
submissions can't all read "4 failures" and all be checked. A try whose code
was right is handed back (``accept_step``, ``confirm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.store.audit_chain import append_in
from bot.store.database import Database
from bot.store.sql import Tx

PENDING = "pending"
AWAITING_APPROVAL = "awaiting_approval"
ACTIVE = "active"

_FIELDS = (
    "user_id, sealed_secret, enrolled_at, last_step, status, pending_until, dm_channel, dm_ts, "
    "dm_file, approved_by"
)


@dataclass(frozen=True)
class Enrollment:
    user_id: str
    sealed_secret: str
    enrolled_at: float
    last_step: int
    status: str = ACTIVE
    pending_until: float = 0.0
    #: where the secret was sent (the DM message and the QR file), until they are deleted
    dm_channel: str = ""
    dm_ts: str = ""
    dm_file: str = ""
    approved_by: str = ""

    def expired(self, now: float) -> bool:
        """A pending enrollment whose owner did not type a first code in time."""
        return self.status == PENDING and now >= self.pending_until


@dataclass(frozen=True)
class Try:
    """One counted attempt at a code: ``id`` None when the limit was reached (nothing checked)."""

    id: int | None
    #: times of the tries counted in the window, oldest first (this one included)
    counted: tuple[float, ...]


def _enrollment(row: tuple[Any, ...]) -> Enrollment:
    return Enrollment(
        str(row[0]), str(row[1]), float(row[2]), int(row[3]), str(row[4]), float(row[5]),
        str(row[6]), str(row[7]), str(row[8]), str(row[9]),
    )


class EnrollmentRows(Database):
    def _audit(self, tx: Tx, kind: str, actor: str, data: dict[str, Any], now: float) -> None:
        append_in(
            tx, self.audit_key, kind=kind, request_id="", actor=actor, data=data, ts_ms=int(now * 1000)
        )

    def enroll(
        self, user_id: str, sealed_secret: str, *, actor: str, pending_s: float | None = None
    ) -> bool:
        """Store a new enrollment; False if ``user_id`` has one already (nothing changed).

        With ``pending_s`` it is ``pending`` until confirmed, for that long; a pending one
        that expired is replaced (the caller deletes its message first). Without, it is
        ``active`` at once (stores and tests that predate confirmation)."""
        now = self.clock()
        status, until = (ACTIVE, 0.0) if pending_s is None else (PENDING, now + pending_s)
        with self.transaction() as tx:
            tx.execute(
                "DELETE FROM totp_enrollments WHERE user_id = ? AND status = ? AND pending_until <= ?",
                (user_id, PENDING, now),
            )
            inserted = tx.execute(
                f"{self._backend.insert_ignore} INTO totp_enrollments "
                "(user_id, sealed_secret, enrolled_at, last_step, status, pending_until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, sealed_secret, now, -1, status, until),
            )
            if inserted != 1:
                return False
            data = {"user": user_id, "method": "totp"}
            if pending_s is not None:
                data["status"] = PENDING
            self._audit(tx, "step_up.enrolled", actor, data, now)
        return True

    def enrollment(self, user_id: str) -> Enrollment | None:
        with self.transaction() as tx:
            row = tx.one(f"SELECT {_FIELDS} FROM totp_enrollments WHERE user_id = ?", (user_id,))
        return None if row is None else _enrollment(row)

    def enrollments(self) -> list[Enrollment]:
        with self.transaction() as tx:
            rows = tx.all(f"SELECT {_FIELDS} FROM totp_enrollments ORDER BY user_id")
        return [_enrollment(r) for r in rows]

    def record_enrollment_dm(self, user_id: str, channel: str, ts: str, file_id: str) -> None:
        """Where the secret went: the DM message and the QR file, to delete on confirmation."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE totp_enrollments SET dm_channel = ?, dm_ts = ?, dm_file = ? "
                "WHERE user_id = ? AND status = ?",
                (channel, ts, file_id, user_id, PENDING),
            )

    def forget_enrollment_dm(self, user_id: str) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE totp_enrollments SET dm_channel = '', dm_ts = '', dm_file = '' "
                "WHERE user_id = ?",
                (user_id,),
            )

    def take_try(self, user_id: str, *, max_tries: int, window_s: float) -> Try | None:
        """Count one try at a code for ``user_id`` now, if fewer than ``max_tries`` are counted
        in the last ``window_s``; None if ``user_id`` has no enrollment.

        One transaction holds the enrollment's row lock from the count to the insert."""
        now = self.clock()
        with self.transaction() as tx:
            if tx.one(
                f"SELECT status FROM totp_enrollments WHERE user_id = ?{tx.for_update}", (user_id,)
            ) is None:
                return None
            tx.execute(
                "DELETE FROM totp_failures WHERE user_id = ? AND at < ?", (user_id, now - window_s)
            )
            rows = tx.all(
                f"SELECT at FROM totp_failures WHERE user_id = ? ORDER BY at{tx.for_update}",
                (user_id,),
            )
            counted = tuple(float(r[0]) for r in rows)
            if len(counted) >= max_tries:
                return Try(None, counted)
            tx.execute("INSERT INTO totp_failures (user_id, at) VALUES (?, ?)", (user_id, now))
            return Try(tx.last_id, (*counted, now))

    def use_step(self, user_id: str, step: int, try_id: int | None = None) -> bool:
        """Accept time step ``step`` for ``user_id`` once: False if it, or a later one, was used.

        Accepted, the try ``try_id`` is handed back (a right code is not a failure)."""
        with self.transaction() as tx:
            changed = tx.execute(
                "UPDATE totp_enrollments SET last_step = ? "
                "WHERE user_id = ? AND last_step < ? AND status = ?",
                (step, user_id, step, ACTIVE),
            )
            if changed == 1 and try_id is not None:
                tx.execute("DELETE FROM totp_failures WHERE id = ?", (try_id,))
        return changed == 1

    def give_back_try(self, try_id: int) -> None:
        """A try that checked nothing (the key did not open the secret) is not counted."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM totp_failures WHERE id = ?", (try_id,))

    def confirm_enrollment(
        self, user_id: str, step: int, try_id: int | None, *, needs_approval: bool, actor: str
    ) -> bool:
        """The first valid code: ``pending`` -> ``awaiting_approval`` (or ``active``), if still
        pending and not expired; audited. False if it was not (expired, confirmed, reset)."""
        now = self.clock()
        status = AWAITING_APPROVAL if needs_approval else ACTIVE
        with self.transaction() as tx:
            changed = tx.execute(
                "UPDATE totp_enrollments SET status = ?, last_step = ? "
                "WHERE user_id = ? AND status = ? AND pending_until > ? AND last_step < ?",
                (status, step, user_id, PENDING, now, step),
            )
            if changed != 1:
                return False
            if try_id is not None:
                tx.execute("DELETE FROM totp_failures WHERE id = ?", (try_id,))
            self._audit(
                tx, "step_up.confirmed", actor, {"user": user_id, "method": "totp", "status": status}, now
            )
        return True

    def approve_enrollment(self, user_id: str, *, actor: str) -> bool:
        """An enroll admin's approval: ``awaiting_approval`` -> ``active``, audited; False if the
        enrollment was not waiting for one."""
        now = self.clock()
        with self.transaction() as tx:
            changed = tx.execute(
                "UPDATE totp_enrollments SET status = ?, approved_by = ? WHERE user_id = ? AND status = ?",
                (ACTIVE, actor, user_id, AWAITING_APPROVAL),
            )
            if changed != 1:
                return False
            self._audit(tx, "step_up.approved", actor, {"user": user_id, "method": "totp"}, now)
        return True

    def audit_step_up(self, kind: str, *, actor: str, data: dict[str, Any]) -> None:
        """An audit entry about an enrollment that changes no row (a refusal, a deleted message)."""
        now = self.clock()
        with self.transaction() as tx:
            self._audit(tx, kind, actor, data, now)

    def reset_enrollment(
        self, user_id: str, *, actor: str, detail: dict[str, Any] | None = None
    ) -> Enrollment | None:
        """Remove ``user_id``'s enrollment and tries (audited); the removed one, or None."""
        now = self.clock()
        with self.transaction() as tx:
            row = tx.one(
                f"SELECT {_FIELDS} FROM totp_enrollments WHERE user_id = ?{tx.for_update}", (user_id,)
            )
            if row is None:
                return None
            tx.execute("DELETE FROM totp_enrollments WHERE user_id = ?", (user_id,))
            tx.execute("DELETE FROM totp_failures WHERE user_id = ?", (user_id,))
            self._audit(
                tx, "step_up.reset", actor, {"user": user_id, "method": "totp", **(detail or {})}, now
            )
        return _enrollment(row)

    def record_failure(self, user_id: str, *, keep_s: float) -> None:
        """Count one failed code now; failures older than ``keep_s`` are dropped meanwhile."""
        now = self.clock()
        with self.transaction() as tx:
            tx.execute(
                "DELETE FROM totp_failures WHERE user_id = ? AND at < ?", (user_id, now - keep_s)
            )
            tx.execute("INSERT INTO totp_failures (user_id, at) VALUES (?, ?)", (user_id, now))

    def failures_since(self, user_id: str, since: float) -> list[float]:
        """The times of ``user_id``'s counted tries since ``since``, oldest first."""
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT at FROM totp_failures WHERE user_id = ? AND at >= ? ORDER BY at",
                (user_id, since),
            )
        return [float(r[0]) for r in rows]
