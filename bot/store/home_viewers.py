"""Who opened the App Home tab: their tabs are refreshed after each run, by whichever
process or replica ran it, and after a restart too. Someone who has not opened it for
``VIEWER_TTL_S`` is no longer published to."""

from __future__ import annotations

from bot.store.database import Database

VIEWER_TTL_S = 30 * 86400.0


class HomeViewerRows(Database):
    def remember_home_viewer(self, team_id: str, user_id: str) -> None:
        """Record that ``user_id`` opened their Home tab now."""
        now = self.clock()
        with self.transaction() as tx:
            inserted = tx.execute(
                f"{self._backend.insert_ignore} INTO home_viewers (user_id, team_id, seen_at) VALUES (?, ?, ?)",
                (user_id[:32], team_id[:32], now),
            )
            if inserted != 1:
                tx.execute(
                    "UPDATE home_viewers SET team_id = ?, seen_at = ? WHERE user_id = ?",
                    (team_id[:32], now, user_id[:32]),
                )

    def home_viewers(self, within_s: float = VIEWER_TTL_S) -> list[tuple[str, str]]:
        """``(team_id, user_id)`` of everyone who opened their Home tab within ``within_s``."""
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT team_id, user_id FROM home_viewers WHERE seen_at >= ? ORDER BY user_id",
                (self.clock() - within_s,),
            )
        return [(str(team), str(user)) for team, user in rows]
