"""Slack deliveries seen: the durable half of retry dedupe (any replica, any restart)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.store.database import Database

DELIVERY_TTL_S = 3600.0


class DeliveryRows(Database):
    def claim_deliveries(self, keys: Sequence[str]) -> list[str]:
        """Record ``keys`` as seen; return those that were already seen (duplicates)."""
        now = self.clock()
        seen: list[str] = []
        with self.transaction() as tx:
            for key in keys:
                inserted = tx.execute(
                    f"{self._backend.insert_ignore} INTO slack_deliveries (delivery_key, seen_at) "
                    "VALUES (?, ?)",
                    (key[:191], now),
                )
                if inserted != 1:
                    seen.append(key)
        return seen

    def purge_deliveries(self, older_than_s: float = DELIVERY_TTL_S) -> int:
        with self.transaction() as tx:
            return tx.execute(
                "DELETE FROM slack_deliveries WHERE seen_at < ?", (self.clock() - older_than_s,)
            )
