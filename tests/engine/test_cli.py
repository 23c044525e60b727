"""The engine's command line as an operator on the panel host meets it: plain words, said once,
exit statuses that follow one table, the plan before the question."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from engine.protocol import fingerprint
from handlers.home import verdict_lines
from tests.engine.runner import REPO, crash_at, engine_argv, finish, run_engine, start_paused
from tests.support.php_crypto import php_encrypt
from tests.support.secrets_scan import register_secret, scan_text


def test_help_prints_the_exit_status_table() -> None:
    """`--help` is where an operator or a script writer looks for what each status means."""
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    table = out[out.index("exit status:") :]
    assert [line.split()[0] for line in table.splitlines()[1:] if line[2:3].isdigit()] == ["0", "1", "2", "3", "4"]
    assert "run recover" in table


def test_an_error_is_said_once_and_settings_mistakes_exit_2(panel_factory) -> None:
    """A missing .env, an unknown env_owner and a bad column are all settings: exit 2, each
    message printed once (not once as the failed step and again as the closing error)."""
    panel = panel_factory(rows=2)
    cases = {
        "missing .env": (panel.write_profile(env_file="config/nowhere.env"), "does not exist"),
        "unknown env_owner": (panel.write_profile(env_owner="no-such-user-here"), "is not a user"),
        "bad column": (panel.write_profile(columns=["nodot"]), "must be written table.column"),
    }
    for what, (profile, fragment) in cases.items():
        run = run_engine(profile, "rotate-key", "--yes")
        said = run.stdout + run.stderr
        assert (what, 2) == (what, run.returncode), said
        assert (what, 1) == (what, said.count(fragment)), said


def test_the_plan_comes_before_the_question_and_no_changes_nothing(panel_factory) -> None:
    """At a terminal, rotate-key shows the panel, the counts per column, the layout and the key's
    fingerprint, then asks; "no" says "Aborted; nothing changed." and the key stays."""
    panel = panel_factory(rows=3)
    old_key = panel.env_key()
    code, out = _at_a_terminal(panel.profile_path, "no\n", "rotate-key")

    assert 1 == code, out
    question = out.index("Type 'yes' to go on")
    plan = out[:question]
    assert f"Panel {panel.profile_base['name']}: " in plan and "would be re-encrypted" in plan
    assert "saved_servers.ssh_credential_encrypted: " in plan
    assert f"Layout: {panel.scheme}" in plan
    assert f"Current key: {fingerprint(old_key)}…" in plan
    assert "Aborted; nothing changed." in out[question:]
    assert panel.env_key() == old_key and panel.php_check_all() == []


def test_yes_at_the_terminal_runs_the_plan_that_was_shown(panel_factory) -> None:
    """Answering yes rotates, bound to the plan shown: the run names its plan hash."""
    panel = panel_factory(rows=3)
    old_key = panel.env_key()
    code, out = _at_a_terminal(panel.profile_path, "yes\n", "rotate-key")

    assert 0 == code, out
    assert "Done · old key" in out
    assert panel.env_key() != old_key and panel.php_check_all() == []
    assert [] == scan_text(out)


def test_recover_with_nothing_unfinished_verifies_and_exits_0(panel_factory) -> None:
    """After any crash an operator runs recover; with nothing to do it proves every value opens
    with the key in .env and says so, exit 0."""
    panel = panel_factory(rows=3)
    run = run_engine(panel.profile_path, "recover")
    assert 0 == run.returncode, run.stdout + run.stderr
    total = len([label for label, plain in panel.plaintexts.items() if plain is not None])
    assert (
        f"Nothing to recover: no rotation is unfinished, and all {total} stored values open with the key "
        f"in .env ({fingerprint(panel.env_key())}…)."
    ) in run.stdout


def test_recover_with_nothing_unfinished_names_a_value_that_does_not_open(panel_factory) -> None:
    """Nothing unfinished, but a stored value the key can't open: exit 1, the row named."""
    panel = panel_factory(rows=3)
    with panel.db.connect() as conn, conn.cursor() as cur:
        foreign = php_encrypt(panel.scheme, os.urandom(32).hex(), [b"another key's secret"])[0]
        cur.execute("UPDATE saved_servers SET ssh_credential_encrypted = %s WHERE id = 2", (foreign,))
    run = run_engine(panel.write_profile(ciphertext=panel.scheme), "recover")
    assert 1 == run.returncode
    assert "saved_servers.ssh_credential_encrypted id 2" in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("op", "state"), [("rotate-key", "STAGED"), ("rotate-db-password", "STAGED"), ("rotate-db-password", "ENV_WRITTEN")]
)
def test_status_during_a_live_rotation_says_running_not_recover(panel_factory, op, state) -> None:
    """While an engine holds the lock, status gives one answer: RUNNING with its pid, operation,
    step and since when, "do not run recover", exit 0; nothing UNFINISHED, whatever the kind."""
    panel = panel_factory(rows=3)
    proc = start_paused(panel.profile_path, f"state:{state}", op, "--yes", "--json")
    try:
        run = run_engine(panel.profile_path, "status")
        data = run_engine(panel.profile_path, "status", "--json").closing["verdict"]
    finally:
        done = finish(proc)
    lines = [line for line in run.stdout.splitlines() if not line.startswith(" ") and "Runs recorded" not in line]
    assert 0 == run.returncode
    assert len(lines) == 1 and lines[0].startswith(f"RUNNING: {op} "), run.stdout
    assert f"(pid {proc.pid}), step " in lines[0] and f"journaled at {state}, since 20" in lines[0]
    assert lines[0].endswith("Let it finish; do not run recover.")
    assert (data["state"], data["running"]["pid"], data["running"]["op"], data["unfinished"]) == (
        "running", proc.pid, op, []
    )
    (shown,) = verdict_lines(data)  # what the bot's Home tab shows from the protocol's status
    assert f"Running: {op} (pid {proc.pid}), step " in shown and shown.endswith("do not run recover.")
    assert 0 == done.returncode


@pytest.mark.parametrize(("op", "state"), [("rotate-key", "REENCRYPTED"), ("rotate-db-password", "ENV_WRITTEN")])
def test_status_after_an_interrupted_rotation_says_unfinished_only(panel_factory, op, state) -> None:
    """Killed mid-rotation: one answer, UNFINISHED (what, where it stopped, the command), exit 3,
    never "nothing unfinished" beside it."""
    panel = panel_factory(rows=3)
    crash_at(panel.profile_path, f"state:{state}", op, "--yes", "--json")
    for secret_file, field in (("rotation.json", "new_key"), ("db-password.json", "new_password")):
        path = panel.root / "journal" / secret_file
        if path.exists():
            register_secret(json.loads(path.read_text())[field], f"{op}'s new secret (journal)")

    run = run_engine(panel.profile_path, "status")
    data = run_engine(panel.profile_path, "status", "--json")

    what = "key rotation" if op == "rotate-key" else "database password rotation"
    lines = [line for line in run.stdout.splitlines() if not line.startswith(" ") and "Runs recorded" not in line]
    assert 3 == run.returncode == data.returncode
    assert len(lines) == 1 and lines[0].startswith(f"UNFINISHED {what} "), run.stdout
    assert f"stopped at {state}, started 20" in lines[0]
    assert lines[0].endswith(f"Run: sudo myosicam-rotator --profile {panel.profile_path} recover")
    assert [i["kind"] for i in data.closing["verdict"]["unfinished"]] == [
        "key" if op == "rotate-key" else "db_password"
    ]
    (shown,) = verdict_lines(data.closing["verdict"])  # the bot's Home tab, from the protocol's status
    rotation_id = data.closing["verdict"]["unfinished"][0]["rotation_id"]
    assert shown == (
        f":sos: Unfinished {what} `{rotation_id}`: stopped at {state}. On the panel host run "
        f"`sudo myosicam-rotator --profile {panel.profile_path} recover`"
    )
    assert f"UNFINISHED {what} {rotation_id}: stopped at {state}" in lines[0]
    assert run.leaks() == [] and data.leaks() == []
    run_engine(panel.profile_path, "recover")
    clear = run_engine(panel.profile_path, "status")
    assert (clear.returncode, clear.stdout.splitlines()[0]) == (
        0, "Nothing unfinished: no rotation is running or left unfinished."
    )


def test_hints_name_the_real_profile_path(panel_factory) -> None:
    """A crashed rotation blocks the next; the hint is a command to copy, with the real profile."""
    panel = panel_factory(rows=3)
    crash_at(panel.profile_path, "state:REENCRYPTED", "rotate-key", "--yes", "--json")
    status = run_engine(panel.profile_path, "status")
    again = run_engine(panel.profile_path, "rotate-key", "--yes")

    command = f"sudo myosicam-rotator --profile {panel.profile_path} recover"
    assert command in status.stdout
    assert 3 == again.returncode and command in again.stdout + again.stderr
    assert "PROFILE" not in again.stdout + again.stderr


def _at_a_terminal(profile: Path, answer: str, *args: str) -> tuple[int, str]:
    """Run the engine with a terminal on stdin (the answer typed into it); (status, all it printed)."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        proc = subprocess.run(
            engine_argv(profile, *args), stdin=terminal, capture_output=True, text=True,
            cwd=REPO, timeout=120, check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    return proc.returncode, proc.stdout + proc.stderr
