"""SIGKILL the real engine at every state and mid re-encryption; `recover` converges.

Whatever the moment of the crash, after `recover` every stored value decrypts
(by PHP) to its original plaintext under the key in `.env`, the panel shows
every credential, and no journal is left open.
"""

from __future__ import annotations

import pytest

from tests.engine.runner import crash_at, run_engine
from tests.support.procs import process_table, wait_until
from tests.support.secrets_scan import register_secret

#: Crash point -> the key `recover` (without --rollback) should converge to.
CRASH_POINTS = {
    "state:STAGED": "old",  # journaled and escrowed after the unlocked pass; no row locked nor written
    "apply:caught-up": "old",  # the panel's saves since the pass re-staged, no row locked yet
    "apply:oscam_installs.webif_password": "old",
    "apply:email_settings.mailgun_api_key": "old",
    "apply:done": "old",  # every column applied and re-sealed under the lock, nothing committed
    "state:REENCRYPTED": "old",
    "state:DB_VERIFIED": "old",
    "state:ENV_WRITTEN": "new",
    "commit:before": "new",
    "state:RESTARTED": "new",
    "state:SWEPT": "new",
    "state:VERIFIED": "new",
    "state:BACKED_UP": "new",
}


def _engine_processes(profile):
    return [pid for pid, state, argv in process_table() if str(profile) in argv and state != "Z"]


def _journal_keys(panel):
    import json

    record = json.loads((panel.root / "journal" / "rotation.json").read_text())
    register_secret(record["new_key"], "new PANEL_ENCRYPTION_KEY (journal)")
    return record["old_key"], record["new_key"]


@pytest.mark.parametrize("point", ["reencrypt:batch:1", "reencrypt:batch:3", "pass:done"])
def test_a_crash_during_the_pass_before_the_key_is_journaled_changes_nothing(panel_factory, point):
    """Killed while it reads, seals and stages without row locks, or between that pass and
    the journal (the new key only in memory): no row, no journal, no escrow holds the new
    key; `recover` finds nothing to do and verifies every value under the old key."""
    panel = panel_factory(rows=8, server=True)
    old_key, rows = panel.env_key(), panel.stored_values()
    profile = panel.write_profile(batch_size=4)
    crash = crash_at(profile, point, "rotate-key", "--yes", "--json")

    assert crash.returncode == -9
    assert wait_until(lambda: not _engine_processes(profile), 5, what="no engine process (nor its crypto worker) left")
    assert not (panel.root / "journal" / "rotation.json").exists()
    assert panel.stored_values() == rows
    run = run_engine(profile, "recover", "--json")
    assert run.returncode == 0, run.stderr
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200
    assert run.leaks() == [] and crash.leaks() == []


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_recover_after_a_crash_converges_to_one_verified_key(panel_factory, point):
    panel = panel_factory(rows=8, server=True)
    profile = panel.write_profile(batch_size=4)
    crash = crash_at(profile, point, "rotate-key", "--yes", "--json")
    old_key, new_key = _journal_keys(panel)

    run = run_engine(profile, "recover", "--json")

    expected = new_key if CRASH_POINTS[point] == "new" else old_key
    assert crash.returncode == -9
    assert wait_until(lambda: not _engine_processes(profile), 5, what="no engine process (nor its crypto worker) left")
    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == ("DONE" if CRASH_POINTS[point] == "new" else "ROLLED_BACK")
    assert panel.env_key() == expected
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200
    assert not (panel.root / "journal" / "rotation.json").exists()
    assert run.leaks() == [] and crash.leaks() == []


#: With the restart split (stop, commit, start): crash point -> the key `recover` converges to.
SPLIT_CRASH_POINTS = {
    "restart:stopped": "new",
    "commit:done": "new",
}


@pytest.mark.parametrize("point", list(SPLIT_CRASH_POINTS))
def test_recover_after_a_crash_mid_split_restart(panel_factory, point):
    """Killed with the panel stopped (before or after the commit): recover finishes the
    rotation and the panel runs again, showing every credential."""
    panel = panel_factory(rows=8, server=True)
    profile = panel.write_profile(
        batch_size=4,
        restart_stop_command=panel.server.stop_command,
        restart_start_command=panel.server.start_command,
    )
    crash = crash_at(profile, point, "rotate-key", "--yes", "--json")
    old_key, new_key = _journal_keys(panel)

    run = run_engine(profile, "recover", "--json")

    assert crash.returncode == -9
    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "DONE"
    assert panel.env_key() == (new_key if SPLIT_CRASH_POINTS[point] == "new" else old_key)
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200
    assert not (panel.root / "journal" / "rotation.json").exists()


@pytest.mark.parametrize(
    "point",
    ["apply:email_settings.smtp_password", "state:DB_VERIFIED", "commit:before", "state:SWEPT",
     "restart:stopped", "commit:done"],
)
def test_recover_rollback_always_returns_to_the_old_key(panel_factory, point):
    panel = panel_factory(rows=8, server=True)
    split = point in SPLIT_CRASH_POINTS
    profile = panel.write_profile(
        batch_size=4,
        restart_stop_command=panel.server.stop_command if split else None,
        restart_start_command=panel.server.start_command if split else None,
    )
    crash_at(profile, point, "rotate-key", "--yes", "--json")
    old_key, _ = _journal_keys(panel)

    run = run_engine(profile, "recover", "--rollback", "--json")

    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "ROLLED_BACK"
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200


def test_crash_during_rollback_is_recovered(panel_factory, tmp_path):
    """A rotation fails, starts rolling back, and is killed mid-rollback: recover finishes the rollback."""
    panel = panel_factory(rows=8, server=True)
    profile = panel.write_profile(verify_command=["false"])
    crash_at(profile, "state:ROLLING_BACK", "rotate-key", "--yes", "--json")
    old_key, _ = _journal_keys(panel)

    run = run_engine(panel.profile_path, "recover", "--json")

    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "ROLLED_BACK"
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []


def test_recover_reports_each_values_key_from_the_gcm_tag(panel_factory):
    """After a crash between commit and journal update, the census says where every value is."""
    panel = panel_factory(rows=6, server=True)
    crash_at(panel.profile_path, "state:RESTARTED", "rotate-key", "--yes", "--json")
    _journal_keys(panel)
    total = sum(1 for p in panel.plaintexts.values() if p is not None)

    run = run_engine(panel.profile_path, "recover", "--json")

    assert run.returncode == 0, run.stderr
    assert run.step("classify")["new"] == total
    assert (run.step("classify")["old"], run.step("classify")["neither"]) == (0, 0)


def test_recover_never_overwrites_a_value_neither_key_opens(panel_factory):
    panel = panel_factory(rows=6, server=True)
    crash_at(panel.profile_path, "state:REENCRYPTED", "rotate-key", "--yes", "--json")
    _journal_keys(panel)
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("UPDATE oscam_installs SET webif_password = 'bm90LWEtY2lwaGVydGV4dA==' WHERE id = 2")

    run = run_engine(panel.profile_path, "recover", "--json")

    stored = panel.stored_values()["oscam_installs.webif_password#2"]
    assert stored == "bm90LWEtY2lwaGVydGV4dA=="
    assert run.returncode != 0
    assert "oscam_installs.webif_password id 2" in run.stdout


def test_recover_with_nothing_to_recover_says_so(panel_factory):
    """Nothing unfinished: recover verifies every value under the key in .env and exits 0."""
    panel = panel_factory(rows=1)
    run = run_engine(panel.profile_path, "recover", "--json")
    assert run.returncode == 0
    assert (run.closing["type"], run.closing["state"]) == ("result", "NOTHING_TO_RECOVER")
    assert run.closing["verified"] == sum(1 for plain in panel.plaintexts.values() if plain is not None)


def test_status_shows_the_unfinished_rotation(panel_factory):
    panel = panel_factory(rows=2)
    crash_at(panel.profile_path, "state:STAGED", "rotate-key", "--yes", "--json")
    _journal_keys(panel)

    run = run_engine(panel.profile_path, "status")

    (line,) = [line for line in run.stdout.splitlines() if "UNFINISHED" in line or "Nothing unfinished" in line]
    assert run.returncode == 3, "unfinished: monitoring can alert on the exit status"
    assert line.startswith("UNFINISHED key rotation ") and "stopped at STAGED" in line
    assert line.endswith(f"Run: sudo myosicam-rotator --profile {panel.profile_path} recover")
    assert run.leaks() == []


def test_recover_refuses_an_env_holding_a_third_key_and_changes_nothing(panel_factory):
    """Someone put a key of neither side into .env after the crash: recover refuses before
    touching a row, and the journal keeps both keys for a later run."""
    panel = panel_factory(rows=4)
    crash_at(panel.profile_path, "state:ENV_WRITTEN", "rotate-key", "--yes", "--json")
    _journal_keys(panel)
    third = "c" * 64
    panel.set_env_key(third)
    stored = panel.stored_values()

    run = run_engine(panel.profile_path, "recover", "--json")

    assert run.returncode != 0
    assert run.closing["code"] == "bad_env_file"
    assert "belongs to neither side" in run.closing["message"]
    assert panel.env_key() == third
    assert panel.stored_values() == stored
    assert (panel.root / "journal" / "rotation.json").exists()


def test_recover_census_counts_values_still_under_the_old_key(panel_factory):
    """Killed inside the re-encryption transaction: nothing was committed, so the census
    finds every value under the old key and recover rolls back."""
    panel = panel_factory(rows=6)
    crash_at(panel.profile_path, "state:REENCRYPTED", "rotate-key", "--yes", "--json")
    old_key, _ = _journal_keys(panel)
    total = sum(1 for p in panel.plaintexts.values() if p is not None)

    run = run_engine(panel.profile_path, "recover", "--json")

    classify = run.step("classify")
    assert (classify["old"], classify["new"], classify["neither"]) == (total, 0, 0)
    assert "rolling back to the old key" in classify["detail"]
    assert run.returncode == 0, run.stderr
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []


def _temp_files(*folders):
    return sorted(p for folder in folders if folder.exists() for p in folder.rglob("*.rotator-*.tmp"))


def _secret_in_temp(path, panel, original_env):
    """The new secret a killed write left in its temporary file."""
    import json

    text = path.read_text()
    if path.name.startswith(f".{panel.env_path.name}."):
        before = set(original_env.decode().splitlines())
        (line,) = [line for line in text.splitlines() if line not in before]
        return line.split("=", 1)[1].strip().strip("'\"")
    record = json.loads(text)
    return record.get("new_key") or record["new_password"]


@pytest.mark.parametrize(
    ("op", "written"),
    [("rotate-key", "rotation.json"), ("rotate-key", ".env"),
     ("rotate-db-password", "db-password.json"), ("rotate-db-password", ".env")],
)  # fmt: skip
def test_recover_removes_the_temporary_file_a_crash_mid_write_left(panel_factory, op, written):
    """Killed between writing a journal (or .env) to its temporary file and renaming it: the
    file holds the new key or password. `status` says so (exit 3), `recover` removes it, and no
    file in the journal folder nor beside .env holds the secret afterwards (only .env itself
    may, when recover finished the rotation)."""
    panel = panel_factory(rows=2, server=True)
    profile = panel.write_profile()
    original_env = panel.env_path.read_bytes()
    journal, config = panel.root / "journal", panel.env_path.parent
    name = panel.env_path.name if written == ".env" else written

    crash = crash_at(profile, f"write:{name}", op, "--yes", "--json")
    (temp,) = _temp_files(journal, config)
    secret = _secret_in_temp(temp, panel, original_env)
    register_secret(secret, f"new secret of {op} (temporary file)")
    status = run_engine(profile, "status")
    recovered = run_engine(profile, "recover", "--json")

    assert crash.returncode == -9
    assert (status.returncode, "temporary file" in status.stdout) == (3, True), status.stdout
    assert recovered.returncode == 0, recovered.stderr
    assert _temp_files(journal, config) == []
    holding = [
        str(p) for folder in (journal, config) for p in sorted(folder.rglob("*"))
        if p.is_file() and p != panel.env_path and secret.encode() in p.read_bytes()
    ]  # fmt: skip
    assert holding == []
    assert run_engine(profile, "status").returncode == 0
    assert recovered.leaks() == [] and status.leaks() == []


def test_a_rotations_own_rollback_keeps_a_third_key_and_stops_with_rollback_failed(panel_factory, tmp_path):
    """The restart hook writes a key of neither side into .env, then fails: the rotation rolls
    back, finds the third key, leaves it where it is (someone put it there) and stops with
    rollback_failed (exit 3), keeping both keys in the journal; status says UNFINISHED, and
    recover refuses to touch that .env either."""
    import sys

    panel = panel_factory(rows=4, server=True)
    third = "c" * 64
    hook = tmp_path / "restart.py"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, re, sys\n"
        f"env = pathlib.Path({str(panel.env_path)!r})\n"
        f"marker = pathlib.Path({str(tmp_path / 'wrote-third')!r})\n"
        "if marker.exists():\n    sys.exit(0)\n"
        "marker.touch()\n"
        f"env.write_text(re.sub(r'(?m)^(PANEL_ENCRYPTION_KEY=).*$', r'\\g<1>{third}', env.read_text()))\n"
        "print('php-fpm: failed after a config change', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    hook.chmod(0o755)
    profile = panel.write_profile(restart_command=[str(hook)])

    run = run_engine(profile, "rotate-key", "--yes", "--json")
    _journal_keys(panel)
    status = run_engine(profile, "status")
    recovered = run_engine(profile, "recover", "--json")

    assert (tmp_path / "wrote-third").exists(), "the hook ran and wrote the third key"
    assert (run.returncode, run.closing["code"], run.closing["rolled_back"]) == (3, "rollback_failed", False)
    assert "belongs to neither side" in run.closing["message"]
    assert panel.env_key() == third, "the third key is kept, not overwritten"
    assert (panel.root / "journal" / "rotation.json").exists(), "both keys stay in the journal"
    assert status.returncode == 3 and "UNFINISHED key rotation" in status.stdout
    assert (recovered.returncode, recovered.closing["code"]) == (2, "bad_env_file")
    assert panel.env_key() == third
    assert run.leaks() == [] and status.leaks() == [] and recovered.leaks() == []


def test_a_rerun_removes_the_temporary_file_a_crash_mid_write_left(panel_factory):
    """The same command run again (no recover): once it holds the panel's lock it removes the
    temporary file holding the killed run's new key, then rotates with a key of its own."""
    panel = panel_factory(rows=2, server=True)
    profile = panel.write_profile()
    journal = panel.root / "journal"

    crash_at(profile, "write:rotation.json", "rotate-key", "--yes", "--json")
    (temp,) = _temp_files(journal, panel.env_path.parent)
    killed_key = _secret_in_temp(temp, panel, b"")
    register_secret(killed_key, "the killed run's new key (temporary file)")
    again = run_engine(profile, "rotate-key", "--yes", "--json")
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert again.returncode == 0, again.stderr
    assert _temp_files(journal, panel.env_path.parent) == []
    holding = [str(p) for p in sorted(panel.root.rglob("*")) if p.is_file() and killed_key.encode() in p.read_bytes()]
    assert holding == []
    assert panel.env_key() != killed_key and panel.php_check_all() == []
    assert again.leaks() == []
