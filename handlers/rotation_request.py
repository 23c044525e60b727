"""A rotation request, from a slash command to its final state, and the people in it.

``RotationRequest`` is what the store keeps and every builder reads: its operation and
panel, who asked and why, the approved plan (``PlanView``), the approvals, the decision
and the outcome. ``Person`` is one Slack user, ``Decision`` one approval or refusal,
``Transition`` one line of a request's history.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from handlers.plan_view import PlanView


class State(enum.StrEnum):
    """Where a request is. Only ``pending`` takes approvals; the last five are final."""

    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    VOIDED = "voided"


ACTIVE_STATES: frozenset[State] = frozenset({State.PENDING, State.APPROVED, State.RUNNING})
FINAL_STATES: frozenset[State] = frozenset(State) - ACTIVE_STATES


@dataclass(frozen=True)
class Person:
    """A Slack user; one person is one user id, whatever team id the request carried.

    Under Enterprise Grid a slash command carries the workspace it was typed
    in and a click carries the user's home team, so the same person comes with
    different team ids. User ids are unique across an organisation: the
    two-person rule (self-approval, duplicate approvals, counting) compares
    them alone. ``team_id`` is kept for the record (``key``, the audit actor).
    """

    team_id: str = field(compare=False)
    user_id: str

    @property
    def mention(self) -> str:
        return f"<@{self.user_id}>"

    @property
    def key(self) -> str:
        return f"{self.team_id}/{self.user_id}"

    def to_dict(self) -> dict[str, str]:
        return {"team_id": self.team_id, "user_id": self.user_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Person:
        return cls(team_id=str(data.get("team_id", "")), user_id=str(data["user_id"]))


@dataclass(frozen=True)
class Decision:
    """Who approved, denied, cancelled (or the clock, for an expiry), when and why;
    ``factor`` names the second factor an approval was made with (``"TOTP"``), if any."""

    person: Person | None
    at: float
    reason: str = ""
    factor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "person": self.person.to_dict() if self.person else None,
            "at": self.at,
            "reason": self.reason,
            **({"factor": self.factor} if self.factor else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        person = data.get("person")
        return cls(
            person=Person.from_dict(person) if person else None,
            at=float(data["at"]),
            reason=str(data.get("reason", "")),
            factor=str(data.get("factor", "")),
        )

    @property
    def approver_label(self) -> str:
        """The approver as a card shows them: ``<@U2> (with TOTP)`` when a second factor was checked."""
        mention = self.person.mention if self.person else "nobody"
        return mention + (f" (with {self.factor})" if self.factor else "")


@dataclass(frozen=True)
class RotationRequest:
    """One request from a slash command to its final state, as the store keeps it.

    ``version`` is the compare-and-swap counter: every update names the version
    it read and loses if someone else wrote first. ``progress`` is the current
    engine step (for the card), ``outcome`` the closing summary.
    """

    id: str
    op: str
    panel: str
    reason: str
    requester: Person
    channel_id: str
    plan: PlanView
    created_at: float
    expires_at: float
    state: State = State.PENDING
    version: int = 1
    agents: tuple[str, ...] = ()
    all_agents: bool = False
    message_ts: str | None = None
    approvals: tuple[Decision, ...] = ()
    decision: Decision | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_seq: int = 0
    progress: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_hash(self) -> str:
        return self.plan.hash

    def approved_by(self, person: Person) -> bool:
        return any(a.person == person for a in self.approvals)

    def evolve(self, **changes: Any) -> RotationRequest:
        return replace(self, **changes)


@dataclass(frozen=True)
class Transition:
    """One row of a request's history (``/rotate-status <id>``)."""

    request_id: str
    event: str
    from_state: str | None
    to_state: str
    actor: str
    at: float


def new_request_id(now: float) -> str:
    """``r-20261126-031402-7f3a``: sortable, readable in a thread, unique enough with 16 bits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"r-{stamp}-{secrets.token_hex(2)}"
