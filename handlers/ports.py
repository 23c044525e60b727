"""The ports through which ``bot`` serves the handlers.

``handlers`` may not import ``bot`` (the dependency direction is
``bot -> handlers -> engine.protocol``), yet a button click needs the state
store, the engine's plan and the run of an approved request. So the shapes of those
services (``RequestStore``, ``Planner``; ``access.Directory``, ``second_factor.StepUp``)
live in ``handlers``, and ``bot.app`` injects the implementations through ``HandlerDeps``.
The data they carry is in ``handlers.rotation_request``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_sdk import WebClient

from handlers.access import AccessPolicy, Directory
from handlers.lanes import Lane, run_now
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest, State, Transition, new_request_id
from handlers.second_factor import StepUp


class RequestStore(Protocol):
    """Durable requests with compare-and-swap updates (``bot.store`` implements it)."""

    def create(self, request: RotationRequest, *, actor: str) -> bool:
        """Insert a new request; False if its id is already taken."""
        ...

    def get(self, request_id: str) -> RotationRequest | None: ...

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
        """Write ``request`` if the stored version is still ``expected_version``.

        Returns the stored request (version + 1), or ``None`` if another writer
        won; the caller then re-reads and decides again.
        """
        ...

    def list_in_states(self, states: Iterable[State], limit: int = 50) -> list[RotationRequest]: ...

    def pending_of(self, user_id: str, limit: int = 100) -> list[RotationRequest]: ...

    def recent_final(self, limit: int = 5) -> list[RotationRequest]: ...

    def history(self, request_id: str) -> list[Transition]: ...


class Planner(Protocol):
    """Asks a panel's engine for a read-only plan (``bot.app`` implements it)."""

    def plan(
        self,
        *,
        panel: str,
        op: str,
        agents: Sequence[str],
        all_agents: bool,
        request_id: str,
    ) -> PlanView: ...


@dataclass
class HandlerDeps:
    """Everything the handlers need, injected by ``bot.app.create_app``.

    ``defer`` runs work after the acknowledgement in its ``Lane`` (``bot``
    gives each lane its own worker threads); ``first_delivery`` is true the
    first time a Slack delivery (a user action, by its trigger or event id) is
    seen, in any replica.
    """

    store: RequestStore
    planner: Planner
    policy: AccessPolicy
    directory: Directory
    panels: Sequence[str]
    start_rotation: Callable[[str], object]
    client: WebClient
    defer: Callable[[Callable[[], None], Lane], object] = run_now
    first_delivery: Callable[[dict[str, Any]], bool] = lambda body: True
    on_request_created: Callable[[RotationRequest], None] = lambda request: None
    clock: Callable[[], float] = time.time
    new_id: Callable[[float], str] = new_request_id
    panel_hosts: dict[str, str] = field(default_factory=dict)
    #: the second factor asked before an approval counts (None: step-up is off everywhere)
    step_up: StepUp | None = None
    #: each registered operation's own settings and ports (``handlers.ops``), by its name
    ops_config: dict[str, Any] = field(default_factory=dict)

    def after_ack(
        self, body: dict[str, Any], work: Callable[[], None], *, lane: Lane = Lane.CLICK
    ) -> None:
        """Run ``work`` after the acknowledgement, once per Slack delivery, in ``lane``."""

        def once() -> None:
            if self.first_delivery(body):
                work()

        self.defer(once, lane)
