"""The journal folder's per-run files are pruned after ``journal_keep_days``; the run record and
the key history are kept (issue 22, item 3)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from tests.engine.runner import run_engine

DAY = 86400


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _files(journal: Path) -> set[str]:
    return {str(p.relative_to(journal)) for p in journal.rglob("*") if p.is_file()}


def test_old_events_and_archives_go_the_run_record_and_key_history_stay(panel_factory) -> None:
    panel = panel_factory(rows=2)
    journal = panel.root / "journal"
    profile = panel.write_profile(journal_keep_days=90)
    first = run_engine(profile, "rotate-key", "--yes", "--json")
    assert first.returncode == 0, first.stderr
    first_id = first.closing["rotation_id"]
    old = {f"events/{first_id}.events.jsonl", f"done/{first_id}.json"}
    assert old <= _files(journal)
    for name in (*old, "runs.jsonl", "key-history.json"):
        _age(journal / name, 100)
    # a run still going, started long ago: its events stay while its .running is locked
    (journal / "events" / "r-still-going.events.jsonl").write_text("{}\n")
    _age(journal / "events" / "r-still-going.events.jsonl", 100)
    running = os.open(journal / "events" / "r-still-going.running", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(running, fcntl.LOCK_EX)
    _age(journal / "events" / "r-still-going.running", 100)
    history_before = json.loads((journal / "key-history.json").read_text())

    try:
        second = run_engine(profile, "rotate-key", "--yes", "--json")
    finally:
        os.close(running)

    assert second.returncode == 0, second.stderr
    second_id = second.closing["rotation_id"]
    files = _files(journal)
    assert not old & files
    assert {f"events/{second_id}.events.jsonl", f"done/{second_id}.json"} <= files
    assert {"events/r-still-going.events.jsonl", "events/r-still-going.running"} <= files
    runs = [json.loads(line) for line in (journal / "runs.jsonl").read_text().splitlines()]
    assert {first_id, second_id} <= {r["rotation_id"] for r in runs}
    assert set(history_before) <= set(json.loads((journal / "key-history.json").read_text()))


def test_files_younger_than_the_setting_are_kept(panel_factory) -> None:
    panel = panel_factory(rows=2)
    journal = panel.root / "journal"
    profile = panel.write_profile(journal_keep_days=365)
    first = run_engine(profile, "rotate-key", "--yes", "--json")
    first_id = first.closing["rotation_id"]
    _age(journal / "events" / f"{first_id}.events.jsonl", 100)
    _age(journal / "done" / f"{first_id}.json", 100)

    assert run_engine(profile, "rotate-key", "--yes", "--json").returncode == 0

    assert {f"events/{first_id}.events.jsonl", f"done/{first_id}.json"} <= _files(journal)


def test_the_default_is_ninety_days() -> None:
    from engine.profile import profile_from_dict

    assert profile_from_dict({"panel_root": "/x", "escrow": "none"}).journal_keep_days == 90
