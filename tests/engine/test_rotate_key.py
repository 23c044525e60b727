"""rotate-key on a real panel: MariaDB, PHP ciphertexts, the reference panel."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from engine.protocol import KEY_STEPS, fingerprint
from tests.engine.runner import finish, rotate, run_engine, start_paused
from tests.support.secrets_scan import register_secret


def test_rotation_reencrypts_every_value_so_php_reads_it_with_the_new_key(panel_factory):
    """After a rotation, PHP opens every stored value with the key now in .env
    and gets the original plaintext; the running panel shows every credential."""
    panel = panel_factory(rows=12, server=True)
    old_key = panel.env_key()

    run = rotate(panel.profile_path)
    new_key = panel.env_key()
    register_secret(new_key, "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert new_key != old_key
    assert panel.php_check_all() == []
    assert panel.php_check_all(old_key) != []
    status, health = panel.health()
    assert (status, health["ok"], health["key_fingerprint"]) == (200, True, fingerprint(new_key))
    assert run.closing["type"] == "result"
    assert run.closing["state"] == "DONE"
    assert (run.closing["old_fingerprint"], run.closing["new_fingerprint"]) == (
        fingerprint(old_key), fingerprint(new_key))
    assert run.closing["total"] == sum(run.closing["columns"].values())
    assert run.steps("ok") + run.steps("skipped") == list(KEY_STEPS)
    assert run.leaks() == []


def test_events_follow_the_protocol(panel_factory):
    """JSON Lines: numbered, one rotation id, each step started then finished,
    exactly one closing event, and no key material anywhere but fingerprints."""
    panel = panel_factory(rows=3)
    run = rotate(panel.profile_path)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    seqs = [e["seq"] for e in run.events]
    assert seqs == list(range(1, len(run.events) + 1))
    assert {e["id"] for e in run.events} == {run.events[0]["id"]}
    closing = [e for e in run.events if e["type"] in ("result", "error")]
    assert closing == [run.events[-1]]
    for name in KEY_STEPS:
        states = [e["state"] for e in run.events if e["type"] == "step" and e["name"] == name]
        assert states[0] == "started" and states[-1] in ("ok", "skipped"), (name, states)
    assert run.step("reencrypt")["index"] == 3 and run.step("reencrypt")["total"] == 9
    assert run.leaks() == []


def test_the_pass_over_the_values_reports_its_progress(panel_factory):
    """Long work shows progress: while the preflight reads, seals and stages, the count of
    values done climbs batch by batch to the total, inside that step."""
    panel = panel_factory(rows=40)
    run = rotate(panel.write_profile(batch_size=7))
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    total = run.step("preflight")["total"]
    progress = [e for e in run.events if e["type"] == "progress"]
    assert {e["name"] for e in progress} == {"preflight"} and {e["total"] for e in progress} == {total}
    done = [e["done"] for e in progress]
    assert done == sorted(done) and done[-1] == total and len(done) >= total // 7
    started = next(e["seq"] for e in run.events if e.get("name") == "preflight" and e.get("state") == "started")
    finished = run.step("preflight")["seq"]
    assert all(started < e["seq"] < finished for e in progress)


def test_env_file_changes_in_exactly_one_value_and_keeps_owner_and_mode(panel_factory):
    """Comments, order, quoting, other keys and the trailing newline stay byte for byte;
    a hardened 0600 file stays 0600 (the docs promise owner and mode are kept)."""
    panel = panel_factory(rows=2)
    before = panel.env_path.read_bytes()
    old_key = panel.env_key()
    panel.env_path.chmod(0o600)

    run = rotate(panel.profile_path)
    after = panel.env_path.read_bytes()
    new_key = panel.env_key()
    register_secret(new_key, "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert after == before.replace(old_key.encode(), new_key.encode())
    assert stat.S_IMODE(panel.env_path.stat().st_mode) == 0o600
    assert panel.env_path.stat().st_uid == os.geteuid()
    assert not list(panel.env_path.parent.glob(".*.tmp"))
    assert "0600 (kept)" in run.step("write_env")["detail"]


def test_a_world_readable_env_is_tightened_to_the_hygiene_and_the_step_says_so(panel_factory):
    """Only a file looser than env_mode (0640) changes mode, and the step line says from what."""
    panel = panel_factory(rows=1)
    panel.env_path.chmod(0o644)

    run = rotate(panel.profile_path)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(panel.env_path.stat().st_mode) == 0o640
    assert "0640 (tightened from 0644)" in run.step("write_env")["detail"]


def test_quoted_and_exported_key_lines_keep_their_form(panel_factory):
    panel = panel_factory(rows=2)
    old_key = panel.env_key()
    text = panel.env_path.read_text()
    line = next(li for li in text.splitlines() if li.startswith("PANEL_ENCRYPTION_KEY="))
    panel.env_path.write_text(text.replace(line, f'export PANEL_ENCRYPTION_KEY="{old_key}"  # rotated by bot'))

    run = rotate(panel.profile_path)
    new_key = panel.env_key()
    register_secret(new_key, "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert f'export PANEL_ENCRYPTION_KEY="{new_key}"  # rotated by bot' in panel.env_path.read_text()
    assert panel.php_check_all() == []


def test_dry_run_changes_nothing_and_says_what_it_would_do(panel_factory):
    panel = panel_factory(rows=4, missing_tables=("email_configurations",))
    before_env = panel.env_path.read_bytes()
    before_rows = panel.stored_values()

    run = rotate(panel.profile_path, "--dry-run")

    assert run.returncode == 0, run.stderr
    assert run.closing["dry_run"] is True
    assert run.closing["would_reencrypt"] == sum(1 for p in panel.plaintexts.values() if p is not None)
    assert run.closing["skipped"] == ["email_configurations"]
    assert (panel.env_path.read_bytes(), panel.stored_values()) == (before_env, before_rows)


def test_missing_table_is_skipped_not_an_error(panel_factory):
    panel = panel_factory(rows=3, missing_tables=("email_configurations",))
    run = rotate(panel.profile_path)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert run.closing["skipped"] == ["email_configurations"]
    assert not any(label.startswith("email_configurations") for label in run.closing["columns"])
    assert panel.php_check_all() == []


def test_escrow_receives_the_new_key_on_stdin_before_any_row_is_written(panel_factory, tmp_path):
    """The escrow hook gets the key on stdin (never argv) while the rows are still old."""
    panel = panel_factory(rows=3)
    escrowed = tmp_path / "escrowed"
    snapshot = tmp_path / "rows-at-escrow.json"
    hook = tmp_path / "escrow.py"
    hook.write_text(
        "import json, sys, pymysql\n"
        f"open({str(escrowed)!r}, 'w').write(sys.stdin.read())\n"
        f"c = pymysql.connect(host='127.0.0.1', user='root', database={panel.db.name!r})\n"
        "cur = c.cursor(); cur.execute('SELECT webif_password FROM oscam_installs ORDER BY id')\n"
        f"json.dump([r[0] for r in cur.fetchall()], open({str(snapshot)!r}, 'w'))\n"
    )
    rows_before = [v for k, v in panel.stored_values().items() if k.startswith("oscam_installs.")]
    profile = panel.write_profile(escrow_command=[sys.executable, str(hook)], escrow_label="vault")

    run = rotate(profile)
    new_key = panel.env_key()
    register_secret(new_key, "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert escrowed.read_text().strip() == new_key
    assert json.loads(snapshot.read_text()) == rows_before
    assert "escrowed (vault)" in run.step("stage")["detail"]


def test_backup_hook_runs_after_verification(panel_factory, tmp_path):
    panel = panel_factory(rows=2)
    marker = tmp_path / "backup-ran"
    profile = panel.write_profile(backup_command=["touch", str(marker)])
    run = rotate(profile)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert marker.exists()
    assert run.step("backup")["detail"] == "backup updated"


def test_second_rotation_on_the_same_panel_is_refused_while_one_runs(panel_factory):
    """The lock: a second engine run is told another one holds the panel."""
    panel = panel_factory(rows=2)
    first = start_paused(panel.profile_path, "state:STAGED", "rotate-key", "--yes", "--json")
    try:
        second = rotate(panel.profile_path)
    finally:
        done = finish(first)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert second.returncode == 1
    assert second.closing["code"] == "locked"
    assert "holds this panel's lock" in second.closing["message"]
    assert done.returncode == 0, done.stderr
    assert panel.php_check_all() == []


def test_each_rotation_uses_a_fresh_key_and_history_keeps_only_fingerprints(panel_factory):
    panel = panel_factory(rows=2)
    keys = [panel.env_key()]
    for _ in range(3):
        assert rotate(panel.profile_path).returncode == 0
        keys.append(panel.env_key())
        register_secret(keys[-1], "new PANEL_ENCRYPTION_KEY")

    journal = panel.root / "journal"
    history = json.loads((journal / "key-history.json").read_text())
    assert len(set(keys)) == 4
    assert set(history) == {fingerprint(k) for k in keys}
    everything = "".join(p.read_text() for p in journal.rglob("*") if p.is_file())
    assert not any(k in everything for k in keys)
    assert panel.php_check_all() == []


def test_human_output_shows_steps_and_a_summary(panel_factory):
    panel = panel_factory(rows=2)
    run = run_engine(panel.profile_path, "rotate-key", "--yes")
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert "✔ preflight:" in run.stdout and "✔ verify:" in run.stdout
    assert "Done · old key" in run.stdout
    assert run.leaks() == []


def test_rotate_without_yes_off_a_terminal_is_refused(panel_factory):
    panel = panel_factory(rows=1)
    run = run_engine(panel.profile_path, "rotate-key")
    assert run.returncode == 2
    assert "--yes" in run.stderr


@pytest.mark.parametrize("scheme", ["iv12_ct_tag/hex", "iv16_tag_ct/ascii32", "json_envelope/hex"])
def test_rotation_writes_the_layout_the_panel_reads(panel_factory, scheme):
    """Whatever layout and key reading the panel uses, the new values are in it."""
    panel = panel_factory(rows=4, scheme=scheme, server=True)
    run = rotate(panel.profile_path)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert run.closing["scheme"] == scheme
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200


def test_sweep_reencrypts_values_written_under_the_old_key_during_the_switch(panel_factory):
    """A worker still holding the old key saves a password right after the commit:
    the sweep finds it (and only it) and re-encrypts it under the new key."""
    from tests.support.php_crypto import php_encrypt

    panel = panel_factory(rows=6, server=True)
    old_key = panel.env_key()
    engine = start_paused(panel.profile_path, "state:RESTARTED", "rotate-key", "--yes", "--json")
    late = ["oscam_installs.webif_password#1", "saved_servers.ssh_credential_encrypted#2"]
    values = php_encrypt(panel.scheme, old_key, [panel.plaintexts[label] for label in late])
    with panel.db.connect() as conn, conn.cursor() as cur:
        for label, value in zip(late, values, strict=True):
            column, row_id = label.split("#")
            table, col = column.split(".")
            cur.execute(f"UPDATE {table} SET {col} = %s WHERE id = %s", (value, int(row_id)))
    run = finish(engine)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert run.step("sweep")["count"] == 2
    assert panel.php_check_all() == []


def test_verify_reads_every_value_again_when_a_row_changed_after_the_sweep(panel_factory):
    """verify skips re-reading only while the server's fingerprint proves no row changed
    since the values were sealed: a value written under the old key after the sweep is
    caught, and the rotation rolls back to a verified old key."""
    from tests.support.php_crypto import php_encrypt

    panel = panel_factory(rows=6)
    old_key = panel.env_key()
    engine = start_paused(panel.profile_path, "state:SWEPT", "rotate-key", "--yes", "--json")
    register_secret(json.loads((panel.root / "journal" / "rotation.json").read_text())["new_key"], "new key")
    stale = php_encrypt(panel.scheme, old_key, [panel.plaintexts["oscam_installs.webif_password#1"]])[0]
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("UPDATE oscam_installs SET webif_password = %s WHERE id = 1", (stale,))
    run = finish(engine)

    assert run.returncode == 1, run.stdout[-500:]
    assert run.step("verify", "failed")["detail"].startswith("1 of ")
    assert run.closing["rolled_back"] is True
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []


def test_database_check_catches_a_value_not_sealed_for_its_row(panel_factory):
    """Before the commit, verify_db proves each row stores the value sealed for it:
    a row given another row's new value (same length, both open under the new key)
    inside the transaction is caught, and nothing is committed."""
    from engine.cipher import Codec, Scheme, new_key_hex
    from engine.context import Context
    from engine.errors import VerificationError
    from engine.events import Emitter
    from engine.ops.key.scan import reencrypt
    from engine.ops.key.verify import check_written
    from engine.profile import load_profile

    panel = panel_factory(rows={"oscam_installs": 6})
    ctx = Context(load_profile(panel.profile_path), Emitter("check"))
    scheme, old_key, new_key = Scheme.parse(panel.scheme), panel.env_key(), new_key_hex()
    register_secret(new_key, "new PANEL_ENCRYPTION_KEY (test)")
    db = ctx.connect()
    try:
        columns, _ = ctx.columns(db)
        rewrite = reencrypt(db, columns, Codec(scheme, old_key), Codec(scheme, new_key), 2)
        assert check_written(db, columns, rewrite) == rewrite.n_written == 5
        db.execute("UPDATE oscam_installs SET webif_password = "
                   "(SELECT v FROM (SELECT webif_password AS v FROM oscam_installs WHERE id = 5) AS x) WHERE id = 1")
        with pytest.raises(VerificationError, match=r"oscam_installs\.webif_password holds 5 values"):
            check_written(db, columns, rewrite)
    finally:
        db.rollback()
        db.close()
    assert panel.php_check_all() == []


def _recording(panel, tmp_path, action):
    """A restart half that notes row 1's value as another session sees it, then runs ctl.py."""
    script = tmp_path / f"{action}.py"
    script.write_text(
        "import json, subprocess, sys\nimport pymysql\n"
        f"conn = pymysql.connect(host={panel.db.host!r}, port={panel.db.port}, user='root', "
        f"database={panel.db.name!r})\n"
        "cur = conn.cursor()\ncur.execute('SELECT webif_password FROM oscam_installs WHERE id = 1')\n"
        f"with open({str(tmp_path / 'seen.jsonl')!r}, 'a') as log:\n"
        f"    log.write(json.dumps([{action!r}, cur.fetchone()[0]]) + '\\n')\n"
        f"subprocess.run({panel.server.ctl_argv(action)!r}, check=True)\n"
    )
    return [sys.executable, str(script)]


def test_split_restart_commits_while_the_panel_is_stopped(panel_factory, tmp_path):
    """With the restart split, the rows are still under the old key when the panel
    stops and already under the new one when it starts: no worker ever holds one key
    while the rows are under the other."""
    panel = panel_factory(rows={"oscam_installs": 4}, server=True)
    before = panel.stored_values()["oscam_installs.webif_password#1"]
    profile = panel.write_profile(
        restart_stop_command=_recording(panel, tmp_path, "stop-app"),
        restart_start_command=_recording(panel, tmp_path, "start-app"),
    )

    run = rotate(profile)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    after = panel.stored_values()["oscam_installs.webif_password#1"]
    assert seen == [["stop-app", before], ["start-app", after]]
    assert after != before
    assert run.step("restart")["split"] is True
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200
    assert run.leaks() == []


def test_systemctl_restart_is_split_unless_told_otherwise(tmp_path):
    from engine.errors import ProfileError
    from engine.profile import profile_from_dict

    base = {"panel_root": str(tmp_path), "escrow": "none", "restart_command": ["systemctl", "restart", "php8.3-fpm"]}

    assert profile_from_dict(base).restart_halves == (
        ["systemctl", "stop", "php8.3-fpm"], ["systemctl", "start", "php8.3-fpm"])
    assert profile_from_dict({**base, "restart_split": False}).restart_halves is None
    assert profile_from_dict({**base, "restart_command": ["/usr/local/bin/reload-panel"]}).restart_halves is None
    with pytest.raises(ProfileError, match="restart_stop_command and restart_start_command go together"):
        profile_from_dict({**base, "restart_stop_command": ["systemctl", "stop", "php8.3-fpm"]})
