"""The skeleton every journaled rotation shares, written once (issue 23).

A rotation of the key, of the database password or of an agent's token keeps a
write-ahead journal: its record is saved before each step changes anything, so that
``recover`` can tell how far it got and go forward or back. What they share is here:

* ``JournaledRotation``: the constructor (who asked, who approved, why, the check that the
  run is the approved plan), ``run`` under the panel's lock (preflight, the plan check, a
  dry run's answer, or the rotation, rolled back by itself when a step fails), and
  ``advance`` (a state saved to the journal, then its fault point);
* ``panel_lock``: one engine run at a time per panel;
* ``unfinished``: the record ``recover`` converges, or ``NothingToRecoverError``;
* ``converge``: roll forward when the new secret is already in place (rolling back if that
  fails), else roll back; the same result fields for every kind.

Each kind says only what differs: its preflight, its steps, its failure's details, how it
classifies and moves a record (``engine.ops.key``, ``db_password``; the agents' per-agent
state machine uses ``panel_lock`` and its journal's archive).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, NoReturn, Protocol, TypeVar

from engine import faults
from engine.context import Context
from engine.errors import EngineError, NothingToRecoverError
from engine.events import Stopwatch


class _Record(Protocol):
    rotation_id: str
    state: str


class _Files(Protocol):
    def load(self) -> Any: ...

    def save(self, record: Any) -> None: ...


P = TypeVar("P")  # the kind's preflight
R = TypeVar("R", bound=_Record)


@contextlib.contextmanager
def panel_lock(ctx: Context) -> Iterator[None]:
    """The panel's lock (``journal_dir/lock``) for the block: one engine run at a time."""
    ctx.journal.acquire_lock()
    try:
        yield
    finally:
        ctx.journal.release_lock()


class JournaledRotation(Generic[P, R]):
    """A rotation with a write-ahead journal. A kind implements ``preflight``, ``dry_run_result``,
    ``rotate`` and ``fail`` (which rolls back and raises); ``close`` frees what it holds."""

    def __init__(
        self,
        ctx: Context,
        journal: _Files,
        *,
        rotation_id: str,
        dry_run: bool = False,
        requested_by: str | None = None,
        approved_by: list[str] | None = None,
        reason: str | None = None,
        expect: Callable[[P], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.journal = journal
        self.rotation_id = rotation_id
        self.dry_run = dry_run
        self.requested_by = requested_by
        self.approved_by = approved_by or []
        self.reason = reason
        #: called under the lock right after the preflight: refuses a run whose plan changed
        self.expect = expect
        #: the journal's record, once the rotation wrote one (before that, nothing to roll back)
        self.record: R | None = None
        self.restart_attempted = False
        self.watch = Stopwatch()

    # -- what each kind says -------------------------------------------------------------
    def preflight(self) -> P:
        raise NotImplementedError

    def dry_run_result(self, pre: P) -> dict[str, Any]:
        raise NotImplementedError

    def rotate(self, pre: P) -> dict[str, Any]:
        raise NotImplementedError

    def fail(self, pre: P, failure: EngineError) -> NoReturn:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the run holds (a connection); called last, under the lock."""

    # -- the skeleton ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Under the panel's lock: preflight, the plan check, then a dry run's answer or the
        rotation; a step that fails once the journal holds a record is rolled back."""
        with panel_lock(self.ctx):
            try:
                pre = self.preflight()
                if self.expect is not None:
                    self.expect(pre)
                if self.dry_run:
                    return self.dry_run_result(pre)
                try:
                    return self.rotate(pre)
                except EngineError as failure:
                    if self.record is None:
                        raise
                    self.fail(pre, failure)
                except Exception as failure:
                    if self.record is None:
                        raise
                    self.fail(pre, EngineError(f"unexpected error: {type(failure).__name__}"))
            finally:
                self.close()

    def advance(self, state: str) -> None:
        """The record's new state, saved (fsynced) before the next step; then its fault point."""
        assert self.record is not None
        self.record.state = state
        self.journal.save(self.record)
        faults.checkpoint(f"state:{state}")


def unfinished(journal: _Files, nothing: str) -> Any:
    """The journal's unfinished record, or ``NothingToRecoverError(nothing)``."""
    record = journal.load()
    if record is None:
        raise NothingToRecoverError(nothing)
    return record


def converge(
    base: dict[str, Any],
    *,
    forward: bool,
    roll_forward: Callable[[], dict[str, Any]],
    roll_back: Callable[[str], dict[str, Any]],
    scrub: Callable[[str], str] = lambda text: text,
) -> dict[str, Any]:
    """``recover``'s move: forward (and back if that fails, raising the failure with
    ``rolled_back``), or back. ``base`` names the rotation in the result."""
    if forward:
        try:
            return {**base, "state": "DONE", "direction": "forward", **roll_forward()}
        except EngineError as exc:
            roll_back(exc.message)
            exc.message = scrub(exc.message)
            exc.rolled_back = True
            exc.details = {**base, "state": "ROLLED_BACK"}
            raise
    return {**base, "state": "ROLLED_BACK", "direction": "rollback", **roll_back("recover")}
