"""Every way a rotation can fail ends in a clear message and a verified state: old or new, never a mix."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pymysql

from engine.protocol import fingerprint
from tests.engine.runner import crash_at, finish, rotate, start_paused
from tests.support.php_crypto import php_encrypt


def _assert_old_state_verified(panel, old_key, run):
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []
    assert run.closing["type"] == "error"
    assert run.leaks() == []
    assert not (panel.root / "journal" / "rotation.json").exists(), "journal should be closed"


def test_restart_failure_rolls_back_to_the_verified_old_key(panel_factory, tmp_path):
    panel = panel_factory(rows=5, server=True)
    old_key = panel.env_key()
    flaky = tmp_path / "restart.sh"
    flaky.write_text(
        "#!/bin/sh\n"
        f"if [ -e {tmp_path}/failed-once ]; then exec {' '.join(panel.restart_command)}; fi\n"
        f"touch {tmp_path}/failed-once; echo 'php-fpm: failed to bind' >&2; exit 1\n"
    )
    flaky.chmod(0o755)
    run = rotate(panel.write_profile(restart_command=[str(flaky)]))

    assert run.returncode == 1
    assert run.closing["code"] == "hook_failed"
    assert "restart failed (exit 1): php-fpm: failed to bind" in run.closing["message"]
    assert run.closing["rolled_back"] is True
    assert run.step("rollback")["state"] == "ok"
    assert "old key verified" in run.step("verify_old")["detail"]
    _assert_old_state_verified(panel, old_key, run)
    assert panel.health()[0] == 200


def test_panel_check_failure_after_the_switch_rolls_back(panel_factory, tmp_path):
    """The panel says credentials don't show: the engine puts the old key back."""
    panel = panel_factory(rows=5, server=True)
    old_key = panel.env_key()
    fails_once = (
        f"if [ -e {tmp_path}/checked ]; then exit 0; fi; touch {tmp_path}/checked; "
        "echo 'HTTP 500 from /health' >&2; exit 3"
    )
    run = rotate(panel.write_profile(verify_command=["sh", "-c", fails_once]))

    assert run.returncode == 1
    assert run.closing["code"] == "panel_check_failed"
    assert run.closing["rolled_back"] is True
    assert run.closing["old_fingerprint"] == fingerprint(old_key)
    _assert_old_state_verified(panel, old_key, run)
    assert panel.health()[0] == 200


def test_escrow_failure_stops_before_any_row_is_written(panel_factory):
    panel = panel_factory(rows=4)
    old_key = panel.env_key()
    rows = panel.stored_values()
    run = rotate(panel.write_profile(escrow_command=["sh", "-c", "cat >/dev/null; echo 'vault sealed' >&2; exit 2"]))

    assert run.returncode == 1
    assert run.closing["code"] == "hook_failed"
    assert "escrow failed (exit 2): vault sealed" in run.closing["message"]
    assert panel.stored_values() == rows
    _assert_old_state_verified(panel, old_key, run)


def test_full_disk_on_env_write_rolls_back(panel_factory, tmp_path):
    """ENOSPC while writing .env: the old file is intact and the rows go back to the old key."""
    panel = panel_factory(rows=4)
    old_key = panel.env_key()
    config = panel.env_path.parent
    saved = panel.env_path.read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(config)], check=True)
    try:
        panel.env_path.write_bytes(saved)
        filler = config / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 1024)
                handle.flush()
        run = rotate(panel.profile_path)
        filler.unlink()
        assert run.returncode == 1
        assert run.closing["code"] == "bad_env_file"
        assert "previous file is unchanged" in run.closing["message"]
        assert run.closing["rolled_back"] is True
        assert panel.env_path.read_bytes() == saved
        _assert_old_state_verified(panel, old_key, run)
    finally:
        final = panel.env_path.read_bytes()
        subprocess.run(["umount", str(config)], check=True)
        panel.env_path.write_bytes(final)


def _kill_connections_of(user: str) -> None:
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        for (thread,) in cur.fetchall():
            cur.execute(f"KILL {int(thread)}")
    admin.close()


def _connection_killed_at(panel, point):
    """Pause a rotation at ``point``, kill its database connection, let it finish: it
    must stop with the database error, whatever it then did about it."""
    engine = start_paused(panel.write_profile(batch_size=10), point, "rotate-key", "--yes", "--json")
    _kill_connections_of(panel.db.user)
    run = finish(engine)
    assert run.returncode == 1
    assert run.closing["code"] == "database"
    assert "lost the database connection" in run.closing["message"]
    return run


def test_database_connection_lost_mid_pass_changes_nothing(panel_factory):
    """The engine's connection is killed while it reads, seals and stages (the preflight's
    pass, before the new key is journaled): nothing was written, no journal is left,
    the engine says what happened."""
    panel = panel_factory(rows=30)
    old_key, rows = panel.env_key(), panel.stored_values()
    run = _connection_killed_at(panel, "reencrypt:batch:1")

    assert run.closing["rolled_back"] is None  # nothing to roll back
    assert run.steps("failed") == ["preflight"]
    assert panel.stored_values() == rows
    _assert_old_state_verified(panel, old_key, run)


def test_database_connection_lost_while_writing_rolls_back(panel_factory):
    """Killed once the new key is journaled, while the staged values are written to
    the rows: nothing was committed, the engine rolls back and verifies the old key."""
    panel = panel_factory(rows=30)
    old_key = panel.env_key()
    run = _connection_killed_at(panel, "apply:saved_servers.ssh_credential_encrypted")

    assert run.closing["rolled_back"] is True
    _assert_old_state_verified(panel, old_key, run)


def test_wrong_key_in_env_is_refused_before_anything_changes(panel_factory):
    panel = panel_factory(rows=4)
    rows = panel.stored_values()
    panel.set_env_key(os.urandom(32).hex())
    run = rotate(panel.profile_path)

    assert run.returncode == 1
    assert run.closing["code"] == "layout"
    assert "no known layout opens every stored value" in run.closing["message"]
    assert panel.stored_values() == rows
    assert run.leaks() == []


def test_malformed_env_is_refused_with_a_clear_message(panel_factory):
    panel = panel_factory(rows=2)
    rows = panel.stored_values()
    text = panel.env_path.read_text()
    line = next(li for li in text.splitlines() if li.startswith("PANEL_ENCRYPTION_KEY="))
    panel.env_path.write_text(text.replace(line, line[:40]))
    run = rotate(panel.profile_path)

    assert run.returncode == 2  # a file the profile names is wrong: fix it, nothing changed
    assert run.closing["code"] == "bad_key"
    assert run.closing["message"].startswith("PANEL_ENCRYPTION_KEY must be 64 hex characters")
    assert panel.stored_values() == rows
    assert run.leaks() == []


def test_duplicate_key_line_is_refused(panel_factory):
    panel = panel_factory(rows=2)
    key = panel.env_key()
    with panel.env_path.open("a") as handle:
        handle.write(f"PANEL_ENCRYPTION_KEY={key}\n")
    run = rotate(panel.profile_path)
    assert run.returncode == 2
    assert "sets PANEL_ENCRYPTION_KEY 2 times" in run.closing["message"]


def test_undecryptable_value_is_named_and_nothing_changes(panel_factory, tmp_path):
    """Preflight lists table, column and id of values the current key can't open; the
    refusal comes before the new key is journaled or escrowed."""
    panel = panel_factory(rows=5)
    with panel.db.connect() as conn, conn.cursor() as cur:
        foreign = php_encrypt(panel.scheme, os.urandom(32).hex(), [b"someone else's secret"])[0]
        cur.execute("UPDATE saved_servers SET ssh_credential_encrypted = %s WHERE id = 3", (foreign,))
    rows = panel.stored_values()
    escrowed = tmp_path / "escrowed"
    escrow = tmp_path / "escrow.sh"
    escrow.write_text(f"#!/bin/sh\ncat > {escrowed}\n")
    escrow.chmod(0o700)
    run = rotate(panel.write_profile(ciphertext=panel.scheme, escrow_command=[str(escrow)]))

    assert run.returncode == 1
    assert run.closing["code"] == "undecryptable"
    assert "saved_servers.ssh_credential_encrypted id 3" in run.closing["message"]
    assert "1 stored value does not decrypt with the current key" in run.closing["message"]
    # named apart from the message too, so the bot can say what to do with exactly those
    assert run.closing["locations"] == ["saved_servers.ssh_credential_encrypted id 3"]
    assert panel.stored_values() == rows
    assert not escrowed.exists() and not (panel.root / "journal" / "rotation.json").exists()
    assert run.steps() == ["preflight", "preflight"]  # started, failed: nothing after it ran
    assert run.leaks() == []


def test_unfinished_journal_blocks_a_new_rotation_and_points_to_recover(panel_factory):
    panel = panel_factory(rows=3)
    crash_at(panel.profile_path, "state:REENCRYPTED", "rotate-key", "--yes", "--json")
    run = rotate(panel.profile_path)

    assert run.returncode == 3  # recover is needed
    assert run.closing["code"] == "unfinished_rotation"
    assert "recover" in run.closing["message"]
    assert panel.php_check_all() == []


def test_bad_profile_names_the_field(panel_factory):
    panel = panel_factory(rows=1)
    profile = panel.write_profile(env_mode="0777", restart_command=[])
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--profile", str(profile), "status"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "restart_command" in proc.stderr and "env_mode" in proc.stderr
    assert "Traceback" not in proc.stderr
