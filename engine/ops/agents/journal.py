"""One journal file per agent being rotated, under ``journal_dir/agents/``.

The install token is written here (0600, fsynced, renamed into place) before
it is used, together with the old agent token: after a crash, the next run
finds the file, sees how far the agent got, and carries on without issuing a
second install token when the agent already re-registered. When the agent's
rotation ends (DONE or FAILED, its install token revoked) the tokens are
dropped: ``done/<rotation id>-agent-<id>.json`` keeps fingerprints only.

Files::

    agents/agent-<id>.json                  the unfinished rotation of one agent (tokens inside)
    agents/done/<rotation>-agent-<id>.json  finished ones, fingerprints only
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import AgentError
from engine.journal import archived, write_private

STATES: tuple[str, ...] = (
    "PREFLIGHT",
    "TOKEN_ISSUED",
    "BOOTSTRAPPED",
    "REREGISTERED",
    "OLD_REVOKED",
    "DONE",
    "FAILED",
    "UNVERIFIED",
)
_SECRET_FIELDS = ("old_token", "install_token")


@dataclass
class AgentRecord:
    rotation_id: str
    agent_id: int
    agent_name: str
    state: str
    started_at: float
    since: str
    """The database clock when the rotation started: ``last_seen`` must be later."""
    server: str
    provider: str
    old_fingerprint: str | None
    old_token: str | None = field(default=None, repr=False)
    install_token: str | None = field(default=None, repr=False)
    install_token_fingerprint: str | None = None
    install_token_state: str | None = None
    new_fingerprint: str | None = None
    new_token_seen_at: str | None = None
    """The database clock when the engine first saw the new token in the agent's row."""
    new_token_last_seen: str | None = None
    """The row's ``last_seen`` at that moment: a heartbeat must move it on."""
    failed_step: str | None = None
    error: str | None = None
    requested_by: str | None = None
    approved_by: list[str] = field(default_factory=list)
    reason: str | None = None
    trail: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """Everything but the tokens."""
        data = asdict(self)
        for name in _SECRET_FIELDS:
            data.pop(name)
        return data


class AgentJournal:
    def __init__(self, journal_dir: Path) -> None:
        self.dir = journal_dir / "agents"
        self.done_dir = self.dir / "done"

    def _path(self, agent_id: int) -> Path:
        return self.dir / f"agent-{agent_id}.json"

    def _ensure(self) -> None:
        for folder in (self.dir, self.done_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    def load(self, agent_id: int) -> AgentRecord | None:
        path = self._path(agent_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return AgentRecord(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise AgentError(
                f"the agent journal {path} is damaged; it may hold an unused install token: "
                "keep it and contact support"
            ) from exc

    def unfinished(self) -> list[AgentRecord]:
        records = []
        for path in sorted(self.dir.glob("agent-*.json")) if self.dir.exists() else []:
            with contextlib.suppress(ValueError, TypeError, OSError):
                records.append(AgentRecord(**json.loads(path.read_bytes())))
        return records

    def save(self, record: AgentRecord) -> None:
        self._ensure()
        if not record.trail or record.trail[-1] != record.state:
            record.trail.append(record.state)
        write_private(self._path(record.agent_id), json.dumps(asdict(record)).encode())

    def finish(self, record: AgentRecord) -> None:
        """Archive without tokens, then drop the unfinished file."""
        self._ensure()
        if not record.trail or record.trail[-1] != record.state:
            record.trail.append(record.state)
        name = f"{record.rotation_id}-agent-{record.agent_id}.json"
        write_private(self.done_dir / name, json.dumps(record.public()).encode())
        self._path(record.agent_id).unlink(missing_ok=True)

    def finished(self, limit: int = 20) -> list[dict[str, Any]]:
        return archived(self.done_dir, limit)
