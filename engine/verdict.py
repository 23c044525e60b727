"""One answer to "is anything unfinished on this panel?", for ``status`` (CLI and protocol).

Three answers, never two at once:

* ``running``: an engine run holds the panel's lock. Its pid, operation, step and since
  when; whatever journal it has open is its own live state, so "do not run recover".
* ``unfinished``: no run holds the lock, and something a run left behind needs
  ``recover``: a key, database password or agent rotation's journal, or a temporary
  file a killed write left (it may hold a new secret). Each item says what, where it
  stopped and the command to run.
* ``clear``: nothing unfinished.

The CLI prints it and exits 3 on ``unfinished`` (so monitoring can alert); the bot shows
the same items. Read-only: it takes no lock and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.envfile import TEMP_NAME
from engine.profile import Profile, engine_command

RUNNING, UNFINISHED, CLEAR = "running", "unfinished", "clear"
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Unfinished:
    """One thing a stopped run left: ``what`` it is, where it ``stopped_at``, and the ``command``."""

    kind: str  # key | db_password | agent | temporary_files
    what: str
    stopped_at: str
    command: str
    rotation_id: str | None = None
    since: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Running:
    pid: int
    op: str | None = None
    rotation_id: str | None = None
    step: str | None = None
    since: float | None = None


@dataclass(frozen=True)
class Verdict:
    state: str
    running: Running | None = None
    unfinished: list[Unfinished] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "running": asdict(self.running) if self.running else None,
            "unfinished": [asdict(item) for item in self.unfinished],
        }


def stale_temp_files(profile: Profile) -> list[str]:
    """The engine's own temporary files left in the journal folders, or beside ``.env``."""
    journal = profile.journal_dir
    found = []
    for folder in (journal, journal / "done", journal / "agents", journal / "agents" / "done"):
        with contextlib.suppress(OSError):
            found += [str(folder / n) for n in os.listdir(folder) if TEMP_NAME.match(n)]
    with contextlib.suppress(OSError):
        found += [
            str(profile.env_path.parent / n)
            for n in os.listdir(profile.env_path.parent)
            if (m := TEMP_NAME.match(n)) and m["stem"] == profile.env_path.name
        ]
    return sorted(found)


def _run_of(journal_dir: Path, pid: int, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run record's latest ``started`` entry of ``pid`` not followed by its ``finished``."""
    open_runs: dict[str, dict[str, Any]] = {}
    for entry in runs:
        rid = str(entry.get("rotation_id"))
        if entry.get("event") == "started" and entry.get("pid") == pid:
            open_runs[rid] = entry
        elif entry.get("event") == "finished":
            open_runs.pop(rid, None)
    return list(open_runs.values())[-1] if open_runs else None


def _last_step(journal_dir: Path, rotation_id: str) -> str | None:
    """The last step event of a run's event log, as "name (state)"."""
    path = journal_dir / "events" / f"{rotation_id}.events.jsonl"
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for raw in reversed(lines):
        with contextlib.suppress(ValueError):
            event = json.loads(raw)
            if isinstance(event, dict) and event.get("type") == "step":
                return f"{event.get('name')} ({event.get('state')})"
    return None


def decide(
    profile: Profile,
    *,
    holder: int | None,
    key: dict[str, Any] | None,
    db_password: dict[str, Any] | None,
    agents: list[dict[str, Any]],
    runs: list[dict[str, Any]],
) -> Verdict:
    """The verdict from what ``status`` read: the lock's holder, the journals, the run record."""
    journals = [j for j in (key, db_password, *agents) if j]
    if holder is not None:
        run = _run_of(profile.journal_dir, holder, runs)
        rotation_id = str(run["rotation_id"]) if run else None
        own = next((j for j in journals if j.get("rotation_id") == rotation_id), journals[0] if journals else None)
        step = _last_step(profile.journal_dir, rotation_id) if rotation_id else None
        if own and own.get("state"):
            step = f"{step}, journaled at {own['state']}" if step else f"journaled at {own['state']}"
        since = float(run["ts"]) / 1000 if run and isinstance(run.get("ts"), int | float) else None
        if since is None and own and isinstance(own.get("started_at"), int | float):
            since = float(own["started_at"])
        return Verdict(
            RUNNING,
            running=Running(
                holder, op=str(run["op"]) if run and run.get("op") else (own or {}).get("op"),
                rotation_id=rotation_id or (own or {}).get("rotation_id"), step=step, since=since,
            ),
        )  # fmt: skip
    recover = engine_command(profile, "recover")
    items = []
    if db_password:
        items.append(_item("db_password", "database password rotation", db_password, recover))
    if key:
        items.append(_item("key", "key rotation", key, recover))
    for agent in agents:
        note = (
            f"the agent holds the {agent.get('token', 'unknown')} token, install token "
            f"{agent.get('install_token', 'unknown')}; or resume it: rotate-agent again"
        )
        items.append(_item("agent", f"agent rotation of {agent.get('agent')}", agent, recover, note))
    temps = stale_temp_files(profile)
    if temps:
        items.append(
            Unfinished(
                "temporary_files",
                f"{len(temps)} temporary file{'s' if len(temps) != 1 else ''} a killed run left "
                "(may hold a new secret)",
                "a write cut short",
                recover,
                note=", ".join(temps),
            )
        )
    return Verdict(UNFINISHED, unfinished=items) if items else Verdict(CLEAR)


def _item(kind: str, what: str, record: dict[str, Any], command: str, note: str = "") -> Unfinished:
    since = record.get("started_at")
    return Unfinished(
        kind, what, str(record.get("state")), command, rotation_id=record.get("rotation_id"),
        since=float(since) if isinstance(since, int | float) else None, note=note,
    )  # fmt: skip
