"""Fleet runs, one row per panel (the people offboarded: ``bot.store.offboarded``).

A fleet request (``handlers.ops.fleet``) is one ``rotation_requests`` row; its panels'
runs are rows here, so that panels running in parallel never contend for the request's
compare-and-swap, and a restarted bot knows which panels were not started (``queued``),
which to re-attach (``running``, with the run id and the last event's ``seq``) and which
are done. Each row also keeps the panel's bound plan (its legs), read when a worker takes
the panel, so that a running fleet does not hold every panel's plan. A panel's final
state is written with its audit record in one transaction: one record per panel, tied to
the fleet request (``fleet.panel``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from bot.store.audit_chain import append_in
from bot.store.database import Database
from handlers.ops.fleet_model import PanelRun

_COLUMNS = (
    "fleet_id, panel, position, state, leg, run_id, last_seq, step, old_fp, new_fp, vals, "
    "code, message, started_at, finished_at"
)


def _run(row: tuple[Any, ...]) -> PanelRun:
    return PanelRun(
        fleet_id=str(row[0]),
        panel=str(row[1]),
        position=int(row[2]),
        state=str(row[3]),
        leg=int(row[4]),
        run_id=str(row[5]),
        last_seq=int(row[6]),
        step=str(row[7]),
        old_fingerprint=str(row[8]),
        new_fingerprint=str(row[9]),
        values=int(row[10]),
        code=str(row[11]),
        message=str(row[12]),
        started_at=None if row[13] is None else float(row[13]),
        finished_at=None if row[14] is None else float(row[14]),
    )


class FleetRows(Database):
    def add_fleet_panels(
        self, fleet_id: str, panels: Iterable[tuple[str, int, int, Sequence[dict[str, Any]]]]
    ) -> None:
        """``(panel, position, values, legs)`` of a fleet, queued, each with its bound plan
        (``legs``: the compact plan of each engine run); panels already there are kept."""
        now = self.clock()
        with self.transaction() as tx:
            for panel, position, values, legs in panels:
                tx.execute(
                    f"{self._backend.insert_ignore} INTO fleet_panels ({_COLUMNS}, plan, updated_at) "
                    "VALUES (?, ?, ?, 'queued', 0, '', 0, '', '', '', ?, '', '', NULL, NULL, ?, ?)",
                    (fleet_id, panel, position, values, json.dumps(list(legs), separators=(",", ":")), now),
                )

    def panel_plan(self, fleet_id: str, panel: str) -> list[dict[str, Any]] | None:
        """The bound plan (legs) kept with one panel's row; None: a row written before the
        plans were kept there (the request's own plan has it)."""
        with self.transaction() as tx:
            row = tx.one("SELECT plan FROM fleet_panels WHERE fleet_id = ? AND panel = ?", (fleet_id, panel))
        if row is None or not row[0]:
            return None
        legs = json.loads(str(row[0]))
        return legs if isinstance(legs, list) else None

    def fleet_panels(self, fleet_id: str) -> list[PanelRun]:
        with self.transaction() as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM fleet_panels WHERE fleet_id = ? ORDER BY position",
                (fleet_id,),
            )
        return [_run(row) for row in rows]

    def claim_panel_run(self, fleet_id: str, panel: str) -> bool:
        """``queued -> running`` for one runner only (compare-and-swap on the state)."""
        with self.transaction() as tx:
            changed = tx.execute(
                "UPDATE fleet_panels SET state = 'running', updated_at = ? "
                "WHERE fleet_id = ? AND panel = ? AND state = 'queued'",
                (self.clock(), fleet_id, panel),
            )
        return changed == 1

    def save_panel_run(self, run: PanelRun, *, audit: dict[str, Any] | None = None) -> None:
        """Write ``run``; with ``audit``, its ``fleet.panel`` record in the same transaction."""
        now = self.clock()
        with self.transaction() as tx:
            tx.execute(
                "UPDATE fleet_panels SET state = ?, leg = ?, run_id = ?, last_seq = ?, step = ?, "
                "old_fp = ?, new_fp = ?, vals = ?, code = ?, message = ?, started_at = ?, "
                "finished_at = ?, updated_at = ? WHERE fleet_id = ? AND panel = ?",
                (
                    run.state, run.leg, run.run_id, run.last_seq, run.step[:64],
                    run.old_fingerprint[:32], run.new_fingerprint[:32], run.values, run.code[:64],
                    run.message[:2000], run.started_at, run.finished_at, now, run.fleet_id, run.panel,
                ),
            )  # fmt: skip
            if audit is not None:
                append_in(
                    tx,
                    self.audit_key,
                    kind="fleet.panel",
                    request_id=run.fleet_id,
                    actor="engine",
                    data=audit,
                    ts_ms=int(now * 1000),
                )
