"""``status`` tells when the key and each agent token were last rotated, from the journals alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from engine.errors import EngineError
from engine.journal import Journal, JournalRecord
from engine.ops.agents.journal import AgentJournal, AgentRecord
from engine.ops.panel import _secret_ages


def _key_record(rotation_id: str, state: str, started_at: float) -> JournalRecord:
    return JournalRecord(
        rotation_id=rotation_id, op="rotate-key", state=state, old_key="", new_key="",
        scheme="s", old_fingerprint="a" * 16, new_fingerprint="b" * 16, started_at=started_at,
    )  # fmt: skip


def _agent_record(rotation_id: str, name: str, state: str, started_at: float) -> AgentRecord:
    return AgentRecord(
        rotation_id=rotation_id, agent_id=int(name[-1]), agent_name=name, state=state,
        started_at=started_at, since="", server="srv", provider="p", old_fingerprint=None,
    )  # fmt: skip


def test_ages_come_from_done_rotations_only(tmp_path: Path) -> None:
    """The newest DONE key rotation gives the key's date (a rolled-back one does not); each
    agent's newest DONE rotation gives its token's date; a panel with no history says None.
    Without the panel's database, only the journal's agents are listed, and it says so."""
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir(mode=0o700)

    def no_database() -> None:
        raise EngineError("the panel database did not answer")

    ctx = SimpleNamespace(
        journal=Journal(journal_dir), profile=SimpleNamespace(journal_dir=journal_dir), connect=no_database
    )
    assert {"key_rotated_at": None, "agents": [], "agents_listed": False} == _secret_ages(ctx)  # type: ignore[arg-type]

    ctx.journal.finish(_key_record("r-1", "DONE", 1000.0))
    ctx.journal.finish(_key_record("r-2", "ROLLED_BACK", 3000.0))
    agents = AgentJournal(journal_dir)
    agents.finish(_agent_record("r-3", "agent-1", "DONE", 2000.0))
    agents.finish(_agent_record("r-4", "agent-1", "DONE", 2500.0))
    agents.finish(_agent_record("r-4", "agent-2", "FAILED", 2500.0))

    assert {
        "key_rotated_at": 1000.0,
        "agents": [{"agent": "agent-1", "rotated_at": 2500.0}],
        "agents_listed": False,
    } == _secret_ages(ctx)  # type: ignore[arg-type]
