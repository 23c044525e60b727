"""The fleet's data: what a fleet request keeps of each panel's plan, and a panel's run.

``handlers.ops.fleet`` files and plans a fleet, ``handlers.ops.fleet_views`` shows it,
``bot.fleet_runner`` runs it and ``bot.store.fleets`` keeps each panel's run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handlers import messages as m
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest

OP = "rotate-fleet"

PANEL_ICONS = {
    "queued": "⏳",
    "running": "▶",
    "verified": "✔",
    "rolled_back": "✖",
    "failed": ":sos:",
    "refused": "⊘",
    "skipped": "⏭",
}
PANEL_WORDS = {
    "queued": "queued",
    "running": "running",
    "verified": "verified",
    "rolled_back": "rolled back",
    "failed": "failed, NOT rolled back",
    "refused": "refused, nothing changed",
    "skipped": "not started",
}
FINAL_PANEL_STATES = frozenset({"verified", "rolled_back", "failed", "refused", "skipped"})


#: What a panel's run needs of each leg's plan (the run request names it; the engine re-checks
#: the rest): kept per panel with the fleet request, and in the panel's ``fleet_panels`` row
#: once it runs; the rest of the plan is not kept.
LEG_FIELDS = (
    "panel", "op", "engine_version", "host_key_fingerprint", "agents", "all_agents", "panel_host",
    "key_fingerprint", "scheme", "total", "engine_plan_hash", "password_fingerprint",
)  # fmt: skip


def compact_leg(plan: PlanView) -> dict[str, Any]:
    data = plan.to_dict()
    return {name: data[name] for name in LEG_FIELDS if data.get(name) not in (None, "", [], 0, False)}


def fleet_label(n: int) -> str:
    return m.plural(n, "panel")


def members(plan: PlanView) -> list[dict[str, Any]]:
    return list(plan.fleet.get("members") or ())


def runnable(plan: PlanView) -> list[dict[str, Any]]:
    """The panels this request runs: those that could be planned."""
    return [mem for mem in members(plan) if not mem.get("error")]


def leg_plans(legs: Sequence[Mapping[str, Any]]) -> list[PlanView]:
    """A panel's bound plan, one ``PlanView`` per engine run (``compact_leg``'s fields)."""
    return [PlanView.from_dict(dict(leg)) for leg in legs]


def panels_of(request: RotationRequest) -> tuple[str, ...]:
    return tuple(mem["panel"] for mem in runnable(request.plan))


@dataclass(frozen=True)
class PanelRun:
    """One panel of a running fleet, as the store keeps it (``bot.store.fleets``)."""

    fleet_id: str
    panel: str
    position: int
    state: str = "queued"
    leg: int = 0
    run_id: str = ""
    last_seq: int = 0
    step: str = ""
    old_fingerprint: str = ""
    new_fingerprint: str = ""
    values: int = 0
    code: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_PANEL_STATES

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.finished_at or time.time()) - self.started_at)


def count_runs(runs: Sequence[PanelRun]) -> dict[str, int]:
    return dict(Counter(r.state for r in runs))
