"""What the agents of one ``rotate-agent`` run share, and their step events.

Every token the run learns (old, install, new) is registered with ``Run.hide``
and replaced by ``[token]`` in every event an agent emits, whatever its format
(a UUID or base32 token does not look like a key to the generic redaction).

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

from engine.cipher import Codec
from engine.context import Context, StepOutcome
from engine.errors import EngineError
from engine.events import Stopwatch
from engine.ops.agents.journal import AgentJournal
from engine.ops.agents.rows import AgentTable
from engine.ops.agents.tokens import InstallTokens
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
    _hidden: set[str] = field(default_factory=set, repr=False)

    @property
    def rotation_id(self) -> str:
        return self.request.id

    def hide(self, token: str | None) -> None:
        """From now on, ``token`` (its exact value, whatever its format) leaves no trace in
        this run's events, results or journal lines."""
        if token:
            with self.emit_lock:
                self._hidden.add(token)

    def secrets(self) -> list[str]:
        with self.emit_lock:
            return sorted(self._hidden, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        """``value`` (text, or lists and dicts of it) with every hidden token replaced."""
        return _scrub(value, self.secrets())


def _scrub(value: Any, hidden: list[str]) -> Any:
    if isinstance(value, str):
        for token in hidden:
            value = value.replace(token, "[token]")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, hidden) for v in value]
    return value


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
        hidden = self.run.secrets()
        detail, data = _scrub(detail, hidden), _scrub(data, hidden)
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
