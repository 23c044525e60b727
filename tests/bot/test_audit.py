"""The hash-chained audit log: export, and verification that finds any tampering."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from bot.audit import AuditLog, read_export, verify_entries
from bot.store import Store, open_store

REPO = Path(__file__).resolve().parents[2]


def a_log(url: str, entries: int = 5) -> tuple[Store, AuditLog]:
    store = open_store(url)
    audit = AuditLog(store)
    for n in range(1, entries + 1):
        audit.append("request.approved", f"r-{n}", "T0TEAM/U0BOB", {"n": n, "reason": "täst"})
    return store, audit


def test_an_untouched_log_verifies(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    report = audit.verify()
    assert (report.ok, report.entries, report.problems) == (True, 5, [])
    assert store.audit_head() == (5, report.head_hash)
    store.close()


def test_a_changed_entry_is_found(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = ? WHERE seq = 3", ("T0TEAM/U0MALLORY",))
    report = audit.verify()
    assert (report.ok, report.problems) == (
        False,
        ["entry 3: content does not match its hash (changed)"],
    )
    store.close()


def test_a_removed_entry_is_found(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    with store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq = 2")
    report = audit.verify()
    assert report.ok is False
    assert report.problems[:2] == [
        "entry 3: expected sequence number 2 (removed or reordered)",
        "entry 3: does not follow the entry before it (removed or reordered)",
    ]
    store.close()


def test_removing_the_last_entries_is_found_through_the_head(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    with store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq >= 4")
    report = audit.verify()
    assert report.problems == [
        "the log ends at entry 3 but its head records entry 5 "
        "(entries removed at the end, or the head was changed)"
    ]
    store.close()


def test_reordered_entries_are_found(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET seq = 100 WHERE seq = 2")
        tx.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        tx.execute("UPDATE audit_log SET seq = 3 WHERE seq = 100")
    report = audit.verify()
    assert report.ok is False
    assert "entry 2: does not follow the entry before it (removed or reordered)" in report.problems
    assert "entry 2: content does not match its hash (changed)" in report.problems
    store.close()


def test_export_writes_json_lines_that_verify_on_their_own(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    out = io.StringIO()
    assert audit.export(out) == 5
    lines = out.getvalue().splitlines()
    first = json.loads(lines[0])
    assert (first["seq"], first["kind"], first["data"], first["time"].endswith("Z")) == (
        1,
        "request.approved",
        {"n": 1, "reason": "täst"},
        True,
    )
    assert verify_entries(read_export(io.StringIO(out.getvalue()))).ok
    tampered = out.getvalue().replace('"n": 4', '"n": 40')
    assert verify_entries(read_export(io.StringIO(tampered))).problems == [
        "entry 4: content does not match its hash (changed)"
    ]
    store.close()


def test_export_since_leaves_out_older_entries(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = open_store(f"sqlite://{tmp_path / 's.db'}", clock=lambda: now[0])
    audit = AuditLog(store)
    audit.append("a", "r-1", "x", {})
    now[0] += 3600
    audit.append("b", "r-2", "x", {})
    out = io.StringIO()
    assert audit.export(out, since=now[0] - 60) == 1
    assert json.loads(out.getvalue())["kind"] == "b"
    store.close()


def test_the_command_line_exports_and_verifies(tmp_path: Path) -> None:
    """`python -m bot audit export` and `audit verify`, as an operator runs them."""
    db = tmp_path / "rotator.db"
    store, _ = a_log(f"sqlite://{db}", entries=3)
    store.close()
    config = tmp_path / "rotator.toml"
    config.write_text(
        'approvers = ["S0ONCALL"]\nstore = "sqlite://rotator.db"\n\n[local_panels.lab]\nprofile = "/x"\n'
    )
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": "xoxb-1-cli-test-token-value",
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123",
        "ROTATOR_CONFIG": str(config),
    }

    def bot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    exported = bot("audit", "export", "--output", str(tmp_path / "audit.jsonl"))
    verified = bot("audit", "verify")
    from_file = bot("audit", "verify", "--file", str(tmp_path / "audit.jsonl"))
    assert (exported.returncode, verified.returncode, from_file.returncode) == (0, 0, 0)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 3
    assert verified.stdout.startswith("audit log verified: 3 entries, head ")
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET kind = 'request.denied' WHERE seq = 2")
    broken = bot("audit", "verify")
    assert broken.returncode == 1
    assert "entry 2: content does not match its hash (changed)" in broken.stdout
