"""``python -m bot demo`` as a new team first runs it: a whole rotation, printed, then gone.

The demo runs as a subprocess with ``TMPDIR`` pointing into the test's folder,
so everything it makes on disk, and every process it starts (their command
lines name that folder), can be looked for afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.demo.sandbox import DB_PREFIX, PLAINTEXT_PREFIX, USER_PREFIX
from engine.protocol import KEY_STEPS
from handlers.messages import step_label
from tests.support.mariadb import admin_connect
from tests.support.procs import process_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
#: What the demo's secrets look like: keys (and their halves), the DB password and the
#: Slack signing secret are 32+ hex characters; the bot token, the licence key, the
#: credentials the panel's users saved.
SECRET_SHAPES = re.compile(
    r"[0-9a-fA-F]{32,}|xox[a-z]-[\w-]+|MYO-DEMO-\w+|" + re.escape(PLAINTEXT_PREFIX) + r"[\w-]{16}"
)
THREAD_STEPS = [
    *(f"✔ {step_label(step)}" for step in KEY_STEPS[:-1]),
    "↷ backup skipped: no backup hook configured",  # the demo's panel has no backup hook
]


def steps_and_summary(thread: list[str]) -> tuple[list[str], list[str]]:
    """The thread's one-line step replies, and the closing summary's lines (drawn in a box:
    it is Block Kit with fields, shown as "Label: value")."""
    top = next(i for i, line in enumerate(thread) if line.startswith("┌"))
    bottom = next(i for i in range(top, len(thread)) if thread[i].startswith("└"))
    return thread[:top], [line.removeprefix("│ ") for line in thread[top + 1 : bottom]]


@dataclass
class DemoRun:
    pid: int
    returncode: int
    stdout: str
    stderr: str

    def section(self, title: str) -> list[str]:
        """The lines under the heading that starts with ``title``, up to the next heading."""
        lines = self.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(f"── {title}"))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("── ")), None)
        return [line.strip() for line in lines[start + 1 : end] if line.strip()]

    def database(self) -> str:
        match = re.search(r"database\s+(\S+) on 127\.0\.0\.1:3306", self.stdout)
        assert match, self.stdout
        return match.group(1)


def demo_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any Slack settings, and temporary files under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    return env | {"TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}


def start_demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "demo", *args],
        cwd=REPO,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], stdout: str = "") -> DemoRun:
    out, err = proc.communicate(timeout=180)
    return DemoRun(proc.pid, proc.returncode, stdout + out, err)


def left_behind(run: DemoRun, tmp_path: Path) -> dict[str, list[str]]:
    """What the demo made that still exists: databases, logins, processes, files."""
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (f"{DB_PREFIX}{run.pid}\\_%",))
        databases = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT user FROM mysql.user WHERE user LIKE %s", (f"{USER_PREFIX}{run.pid}\\_%",))
        logins = [row[0] for row in cur.fetchall()]
    processes = [
        " ".join(argv)
        for pid, state, argv in process_table()
        if state != "Z" and any(str(tmp_path) in arg for arg in argv)
    ]
    files = [p.name for p in tmp_path.iterdir()]
    found = {"databases": databases, "logins": logins, "processes": processes, "files": files}
    return {kind: items for kind, items in found.items() if items}


def test_the_demo_plays_a_whole_rotation_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Exit 0; the card, alice's refused self-approval, every step in the thread, the summary;
    the panel's /health before and after agree with it; no secret in the output; afterwards
    no demo database or login, no process, no file."""
    run = finish(start_demo(tmp_path))

    assert 0 == run.returncode, run.stdout + run.stderr
    steps, summary = steps_and_summary(run.section("The thread"))
    assert THREAD_STEPS == [line.split(" · ")[0] for line in steps]
    assert summary[0].startswith("✅ Done. Verified in ")
    assert {"Requested by: @alice", "Approved by: @bob"} <= set(summary)
    assert "Reason: “rehearsal: suspected .env disclosure, DEMO-1”" in summary
    assert "Verification: 50/50 open with the new key · panel check 200 OK" in summary
    assert (
        "(only @alice sees) You asked for this rotation, so someone else from @oncall must "
        "approve it." in run.section("The approvals")
    )
    card = run.section("The card in #rotations")
    assert "│ [ Approve ]  [ Deny ]" not in card and "│ ✅ Verified in" in " ".join(card)
    health = run.section("Verification")
    fingerprints = re.search(r"\.env key\s+(\w{8})… → (\w{8})…", run.stdout)
    assert fingerprints and fingerprints.group(1) != fingerprints.group(2)
    old, new = fingerprints.groups()
    assert [
        f"panel /health before  200 OK · 50/50 credentials decrypt · key {old}…",
        f"panel /health after   200 OK · 50/50 credentials decrypt · key {new}…",
    ] == health[:2]
    assert health[-1].startswith("✔ verified: the panel decrypts 50/50 credentials")
    assert run.database().startswith(f"{DB_PREFIX}{run.pid}_")
    assert [] == SECRET_SHAPES.findall(run.stdout + run.stderr)
    assert {} == left_behind(run, tmp_path)


def test_the_deny_scenario_runs_nothing_and_the_card_says_who_and_why(tmp_path: Path) -> None:
    """``--scenario deny``: bob denies through the modal; the card and the thread say who and
    why; the key and the panel are as they were; exit 0 and nothing left behind."""
    run = finish(start_demo(tmp_path, "--scenario", "deny"))

    assert 0 == run.returncode, run.stdout + run.stderr
    card = " ".join(run.section("The card in #rotations"))
    assert "⛔ Denied by @bob at " in card and "“wrong panel: this is the rehearsal of a denial”" in card
    assert "[ Approve ]" not in card
    thread = run.section("The thread")
    assert ["⛔ Denied by @bob"] == [line.split(" at ")[0].removeprefix("@alice ") for line in thread]
    fingerprints = re.search(r"\.env key\s+(\w{8})… → (\w{8})…", run.stdout)
    assert fingerprints and fingerprints.group(1) == fingerprints.group(2)
    assert run.section("Verification")[-1].startswith("✔ verified: nothing ran; the panel decrypts 50/50")
    assert [] == SECRET_SHAPES.findall(run.stdout + run.stderr)
    assert {} == left_behind(run, tmp_path)


def test_the_rollback_scenario_shows_the_engine_rolling_back_by_itself(tmp_path: Path) -> None:
    """``--scenario rollback``: the panel's check fails under the new key; the thread shows the
    failure, the rollback and the old key verified; the card says rolled back; the panel
    decrypts every credential under its old key; exit 0 and nothing left behind."""
    run = finish(start_demo(tmp_path, "--scenario", "rollback"))

    assert 0 == run.returncode, run.stdout + run.stderr
    steps, summary = steps_and_summary(run.section("The thread"))
    marks = [line.split(" ")[0] + " " + line.split(" ")[1] for line in steps[-3:]]
    assert ["✖ verification", "↩ rolled", "✔ old"] == marks
    assert summary[0] == "🚨 Rolled back. The panel is as it was."
    assert summary[1].startswith("Next: ")
    assert "🚨 Failed, rolled back, old key verified" in " ".join(run.section("The card in #rotations"))
    fingerprints = re.search(r"\.env key\s+(\w{8})… → (\w{8})…", run.stdout)
    assert fingerprints and fingerprints.group(1) == fingerprints.group(2)
    assert run.section("Verification")[-1].startswith("✔ verified: the engine rolled back by itself")
    assert [] == SECRET_SHAPES.findall(run.stdout + run.stderr)
    assert {} == left_behind(run, tmp_path)


def test_ctrl_c_while_the_engine_rotates_still_cleans_everything_up(tmp_path: Path) -> None:
    """SIGINT right after Bob's approval: the demo says it was interrupted, exits 130, and the
    database, the panel, the engine and the sandbox folder are all gone."""
    proc = start_demo(tmp_path)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("@bob clicks [ Approve ]"):
            proc.send_signal(signal.SIGINT)
            break
    run = finish(proc, "".join(seen))

    assert 130 == run.returncode, run.stdout + run.stderr
    assert "Interrupted." in run.stdout
    assert run.section("Cleaning up")[-1] == "✔ sandbox folder removed"
    assert [] == [line for line in run.section("Cleaning up") if not line.startswith("✔")]
    assert {} == left_behind(run, tmp_path)
