"""What the agents of one ``rotate-agent`` run share, and their step events.

Agents rotate on worker threads while the ``Emitter`` numbers events one at a
time, so every agent event goes through ``AgentSteps``, which holds the run's
lock while it emits. Each event names its agent (``agent``, ``agent_id``) and
its place in ``AGENT_STEPS`` (``index``/``total``), as the bot's card expects.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.agents.journal import AgentJournal
from engine.agents.rows import AgentTable
from engine.agents.tokens import InstallTokens
from engine.cipher import Codec
from engine.context import Context, StepOutcome
from engine.errors import EngineError
from engine.events import Stopwatch
from engine.profile import AgentSettings
from engine.protocol import AGENT_STEPS, Request, StepState


@dataclass
class Run:
    ctx: Context
    request: Request
    settings: AgentSettings
    tokens: InstallTokens
    table: AgentTable
    journal: AgentJournal
    codec: Codec | None
    """Opens the panel's stored SSH credentials; ``None`` with ``ssh_source = "inventory"``."""
    emit_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rotation_id(self) -> str:
        return self.request.id


class AgentSteps:
    """Step events for one agent, safe to emit from worker threads."""

    def __init__(self, run: Run, name: str, agent_id: int | None) -> None:
        self.run = run
        self.extra: dict[str, Any] = {"agent": name}
        if agent_id is not None:
            self.extra["agent_id"] = agent_id

    def emit(
        self, name: str, state: StepState, detail: str = "", elapsed_ms: int | None = None, **data: Any
    ) -> None:
        place = {"index": AGENT_STEPS.index(name) + 1, "total": len(AGENT_STEPS)}
        with self.run.emit_lock:
            self.run.ctx.emitter.step(name, state, detail, elapsed_ms, **place, **self.extra, **data)

    @contextlib.contextmanager
    def step(self, name: str, started: str = "") -> Iterator[StepOutcome]:
        """``started``, then ``ok``/``skipped``, or ``failed`` with the error's message (re-raised)."""
        self.emit(name, "started", started)
        watch = Stopwatch()
        outcome = StepOutcome()
        try:
            yield outcome
        except EngineError as exc:
            self.emit(name, "failed", exc.message, watch.ms)
            raise
        except Exception:
            self.emit(name, "failed", "unexpected error (see the engine log)", watch.ms)
            raise
        self.emit(name, "skipped" if outcome.skipped else "ok", outcome.detail, watch.ms, **outcome.data)
