"""Key-age reminders sent: one row per panel and secret, so a restart or a second
replica does not repeat a reminder within its interval."""

from __future__ import annotations

from bot.store.database import Database


class ReminderRows(Database):
    def claim_reminder(self, panel: str, secret: str, interval_s: float) -> bool:
        """True if a reminder for ``(panel, secret)`` may go out now, and records it as sent.

        False when one went out less than ``interval_s`` ago (by this process, an
        earlier one, or another replica: the claim is one conditional write).
        """
        now = self.clock()
        with self.transaction() as tx:
            inserted = tx.execute(
                f"{self._backend.insert_ignore} INTO key_reminders (panel, secret, sent_at) "
                "VALUES (?, ?, ?)",
                (panel, secret[:128], now),
            )
            if inserted == 1:
                return True
            updated = tx.execute(
                "UPDATE key_reminders SET sent_at = ? WHERE panel = ? AND secret = ? "
                "AND sent_at <= ?",
                (now, panel, secret[:128], now - interval_s),
            )
            return updated == 1

    def last_reminder(self, panel: str, secret: str) -> float | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT sent_at FROM key_reminders WHERE panel = ? AND secret = ?",
                (panel, secret[:128]),
            )
        return float(row[0]) if row else None
