"""Rotation requests: one row each, compare-and-swap updates, transitions and their audit entries.

Each request is one row: the few columns the bot queries by, plus the whole
request as JSON. ``update`` writes only if the row still has the version the
caller read, so two clicks, two replicas or a Slack retry cannot both win;
every successful update records a transition and an audit entry in the same
transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from bot import activity
from bot.errors import StoreError
from bot.store.audit_chain import append_in
from bot.store.database import Database
from bot.store.sql import Tx
from handlers.plan_view import PlanView
from handlers.rotation_request import FINAL_STATES, Decision, Person, RotationRequest, State, Transition


def request_to_body(request: RotationRequest) -> str:
    data = {
        "id": request.id,
        "op": request.op,
        "panel": request.panel,
        "reason": request.reason,
        "requester": request.requester.to_dict(),
        "channel_id": request.channel_id,
        "plan": request.plan.to_dict(),
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "state": request.state.value,
        "version": request.version,
        "agents": list(request.agents),
        "all_agents": request.all_agents,
        "message_ts": request.message_ts,
        "approvals": [a.to_dict() for a in request.approvals],
        "decision": request.decision.to_dict() if request.decision else None,
        "started_at": request.started_at,
        "finished_at": request.finished_at,
        "last_seq": request.last_seq,
        "progress": request.progress,
        "outcome": request.outcome,
    }
    return json.dumps(data, default=str)


def request_from_body(body: str, state: str, version: int) -> RotationRequest:
    data = json.loads(body)
    return RotationRequest(
        id=data["id"],
        op=data["op"],
        panel=data["panel"],
        reason=data["reason"],
        requester=Person.from_dict(data["requester"]),
        channel_id=data["channel_id"],
        plan=PlanView.from_dict(data["plan"]),
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        state=State(state),
        version=int(version),
        agents=tuple(data.get("agents") or ()),
        all_agents=bool(data.get("all_agents")),
        message_ts=data.get("message_ts"),
        approvals=tuple(Decision.from_dict(a) for a in data.get("approvals") or ()),
        decision=Decision.from_dict(data["decision"]) if data.get("decision") else None,
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        last_seq=int(data.get("last_seq") or 0),
        progress=dict(data.get("progress") or {}),
        outcome=dict(data.get("outcome") or {}),
    )


class RequestRows(Database):
    """``handlers.ports.RequestStore``: requests and their history."""

    def create(self, request: RotationRequest, *, actor: str) -> bool:
        """Insert a new request; False if its id is taken (the caller picks another)."""
        now = self.clock()
        try:
            self._insert(request, actor, now)
        except StoreError as exc:
            if isinstance(exc.__cause__, self._backend.duplicate_key_errors):
                return False
            raise
        return True

    def _insert(self, request: RotationRequest, actor: str, now: float) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO rotation_requests "
                "(id, state, version, panel, requester, created_at, expires_at, updated_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.id,
                    request.state.value,
                    request.version,
                    request.panel,
                    request.requester.key,
                    request.created_at,
                    request.expires_at,
                    now,
                    request_to_body(request),
                ),
            )
            self._record(tx, request, None, "created", actor, now)
        activity.transition(request, "created", None, actor)

    def get(self, request_id: str) -> RotationRequest | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT body, state, version FROM rotation_requests WHERE id = ?", (request_id,)
            )
        return request_from_body(*row) if row else None

    def update(
        self,
        request: RotationRequest,
        *,
        expected_version: int,
        event: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        record: bool = True,
    ) -> RotationRequest | None:
        """Compare-and-swap: write ``request`` only if the row is still at ``expected_version``.

        ``record=False`` is for bookkeeping that is audited elsewhere (the runner's
        step progress, whose engine events are audited one by one).
        """
        now = self.clock()
        new = request.evolve(version=expected_version + 1)
        with self.transaction() as tx:
            row = tx.one(
                f"SELECT state FROM rotation_requests WHERE id = ? AND version = ?{tx.for_update}",
                (request.id, expected_version),
            )
            if row is None:
                return None
            changed = tx.execute(
                "UPDATE rotation_requests SET state = ?, version = ?, expires_at = ?, "
                "updated_at = ?, body = ? WHERE id = ? AND version = ?",
                (
                    new.state.value,
                    new.version,
                    new.expires_at,
                    now,
                    request_to_body(new),
                    request.id,
                    expected_version,
                ),
            )
            if changed != 1:
                return None
            if record:
                self._record(tx, new, str(row[0]), event, actor, now, detail)
        if record:
            activity.transition(new, event, str(row[0]), actor)
        return new

    def _record(
        self,
        tx: Tx,
        request: RotationRequest,
        from_state: str | None,
        event: str,
        actor: str,
        now: float,
        detail: dict[str, Any] | None = None,
    ) -> None:
        tx.execute(
            "INSERT INTO request_transitions "
            "(request_id, event, from_state, to_state, version, actor, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request.id, event, from_state, request.state.value, request.version, actor, now),
        )
        data: dict[str, Any] = {
            "from": from_state,
            "to": request.state.value,
            "version": request.version,
        }
        if from_state is None:
            data.update(
                op=request.op,
                panel=request.panel,
                agents=list(request.agents),
                all_agents=request.all_agents,
                reason=request.reason,
                requester=request.requester.key,
                plan_hash=request.plan_hash,
                expires_at=request.expires_at,
            )
        if request.message_ts and event == "card_posted":
            data["message_ts"] = request.message_ts
        if detail:
            data["detail"] = detail
        append_in(
            tx,
            self.audit_key,
            kind=f"request.{event}",
            request_id=request.id,
            actor=actor,
            data=data,
            ts_ms=int(now * 1000),
        )

    def list_in_states(self, states: Iterable[State], limit: int = 50) -> list[RotationRequest]:
        values = [State(s).value for s in states]
        marks = ", ".join("?" for _ in values)
        with self.transaction() as tx:
            rows = tx.all(
                f"SELECT body, state, version FROM rotation_requests WHERE state IN ({marks}) "
                "ORDER BY created_at LIMIT ?",
                (*values, limit),
            )
        return [request_from_body(*row) for row in rows]

    def pending_of(self, user_id: str, limit: int = 100) -> list[RotationRequest]:
        """``user_id``'s pending requests (under any team id), oldest first.

        Reads only that person's rows: the per-person cap is checked for every
        command, and must not parse every pending request of everyone to do it.
        """
        pattern = "%/" + user_id.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT body, state, version FROM rotation_requests "
                "WHERE state = ? AND requester LIKE ? ESCAPE '!' ORDER BY created_at LIMIT ?",
                (State.PENDING.value, pattern, limit),
            )
        found = [request_from_body(*row) for row in rows]
        return [r for r in found if r.requester.user_id == user_id]

    def recent_final(self, limit: int = 5) -> list[RotationRequest]:
        values = [s.value for s in FINAL_STATES]
        marks = ", ".join("?" for _ in values)
        with self.transaction() as tx:
            rows = tx.all(
                f"SELECT body, state, version FROM rotation_requests WHERE state IN ({marks}) "
                "ORDER BY updated_at DESC LIMIT ?",
                (*values, limit),
            )
        return [request_from_body(*row) for row in rows]

    def pending_due(self, now: float) -> list[RotationRequest]:
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT body, state, version FROM rotation_requests "
                "WHERE state = ? AND expires_at <= ? ORDER BY expires_at",
                (State.PENDING.value, now),
            )
        return [request_from_body(*row) for row in rows]

    def next_expiry(self) -> float | None:
        with self.transaction() as tx:
            row = tx.one(
                "SELECT MIN(expires_at) FROM rotation_requests WHERE state = ?",
                (State.PENDING.value,),
            )
        return float(row[0]) if row and row[0] is not None else None

    def history(self, request_id: str) -> list[Transition]:
        with self.transaction() as tx:
            rows = tx.all(
                "SELECT request_id, event, from_state, to_state, actor, at "
                "FROM request_transitions WHERE request_id = ? ORDER BY id",
                (request_id,),
            )
        return [
            Transition(
                request_id=r[0], event=r[1], from_state=r[2], to_state=r[3], actor=r[4], at=r[5]
            )
            for r in rows
        ]
