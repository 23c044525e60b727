"""What every operation on one panel needs: profile, journal, events, database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine import envfile, restart
from engine.cipher import Scheme
from engine.db import PanelDB, resolve_settings
from engine.errors import EngineError, LayoutError
from engine.events import Emitter, Stopwatch
from engine.journal import Journal
from engine.layouts import detect
from engine.profile import ColumnSpec, Profile


@dataclass
class StepOutcome:
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class Context:
    profile: Profile
    emitter: Emitter
    journal: Journal = field(init=False)

    def __post_init__(self) -> None:
        self.profile = restart.resolved(self.profile)  # restart_command = "auto"
        self.journal = Journal(self.profile.journal_dir, self.profile.env_path)

    # -- database ----------------------------------------------------------------
    def connect(self) -> PanelDB:
        env = envfile.values(self.profile.env_path)
        return PanelDB(resolve_settings(self.profile.database, env))

    def columns(self, db: PanelDB) -> tuple[list[ColumnSpec], list[str]]:
        return db.existing_columns(list(self.profile.columns))

    def scheme(self, db: PanelDB, columns: list[ColumnSpec], key_hex: str) -> Scheme:
        explicit = self.profile.scheme
        if explicit is not None:
            return explicit
        try:
            return detect(db, columns, key_hex)
        except LayoutError as exc:
            raise LayoutError(f"{exc} (run `probe` for the per-column counts)") from None

    def ownership(self) -> envfile.Ownership:
        """What the rewritten ``.env`` gets: its current owner, group and mode, tightened
        to the profile's hygiene only when looser (envfile.kept_ownership)."""
        p = self.profile
        return envfile.kept_ownership(p.env_path, p.env_owner, p.env_group, p.mode)

    # -- events ------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, name: str, started: str = "") -> Iterator[StepOutcome]:
        """Emit ``started``, then ``ok`` (or ``skipped``) with the elapsed time,
        or ``failed`` with the error's message, which is re-raised."""
        self.emitter.step(name, "started", started)
        watch = Stopwatch()
        outcome = StepOutcome()
        try:
            yield outcome
        except EngineError as exc:
            self.emitter.step(name, "failed", exc.message, watch.ms)
            raise
        except Exception:
            self.emitter.step(name, "failed", "unexpected error (see the engine log)", watch.ms)
            raise
        if outcome.skipped:
            self.emitter.step(name, "skipped", outcome.detail, watch.ms, **outcome.data)
        else:
            self.emitter.step(name, "ok", outcome.detail, watch.ms, **outcome.data)
