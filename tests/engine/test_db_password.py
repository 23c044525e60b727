"""rotate-db-password on real parts: MariaDB with the panel's own login, the reference
panel (php) restarted through its ctl.py and asked for /health, the real engine CLI.

After every run, crash + recover, or failure: the panel works, exactly one of the
rotation's passwords is accepted by the server, and ``.env`` holds that one with every
other byte as it was.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pymysql
import pytest

from bot.fakes.panel.ctl import parse_env
from tests.engine.runner import crash_at, run_engine
from tests.support.panel import failing_once
from tests.support.secrets_scan import register_secret, scan_text


def accepts(panel: Any, password: str) -> bool:
    """Whether MariaDB lets the panel's login in with ``password``."""
    try:
        pymysql.connect(
            host=panel.db.host, port=panel.db.port, user=panel.db.user, password=password,
            database=panel.db.name, connect_timeout=5,
        ).close()
    except pymysql.err.OperationalError as exc:
        if exc.args[0] == 1045:
            return False
        raise
    return True


def env_password(panel: Any) -> str:
    return parse_env(panel.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]


def env_with(original: bytes, old: str, new: str) -> bytes:
    """The original .env with only DB_PASSWORD's value changed."""
    line = f'DB_PASSWORD="{old}"'.encode()
    assert original.count(line) == 1
    return original.replace(line, f'DB_PASSWORD="{new}"'.encode())


def journal_passwords(panel: Any) -> tuple[str, str]:
    record = json.loads((panel.root / "journal" / "db-password.json").read_text())
    return record["old_password"], record["new_password"]


def assert_one_password(panel: Any, original: bytes, holds: str, other: str) -> None:
    """The server takes ``holds`` and refuses ``other``; .env holds ``holds``, all else as it was."""
    assert accepts(panel, holds)
    assert not accepts(panel, other)
    assert panel.env_path.read_bytes() == env_with(original, panel.db.password, holds)
    status, body = panel.health()
    assert status == 200 and body["ok"], body
    assert not (panel.root / "journal" / "db-password.json").exists()
    assert not (panel.root / "journal" / "db-password-env.backup").exists()


def escrow_to(path: Path) -> list[str]:
    script = path.parent / "escrow.sh"
    script.write_text(f'#!/bin/sh\ncat > "{path}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_rotate_db_password_changes_the_login_and_env_and_the_panel_keeps_working(panel_factory):
    panel = panel_factory(rows=2, server=True)
    escrowed = panel.root / "escrowed"
    profile = panel.write_profile(db_password_escrow_command=escrow_to(escrowed))
    original, old = panel.env_path.read_bytes(), panel.db.password

    plan = run_engine(profile, "plan", "--db-password", "--json")
    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    new = env_password(panel)
    register_secret(new, "new DB_PASSWORD")
    assert run.returncode == 0, run.stderr
    result = run.closing
    assert result["type"] == "result" and result["state"] == "DONE"
    assert result["db_user"] == panel.db.user and result["panel"] == "sandbox"
    assert result["old_fingerprint"] == plan.closing["password_fingerprint"]
    assert result["new_fingerprint"] != result["old_fingerprint"]
    assert result["method"] == "SET PASSWORD"  # MariaDB 10.11 refuses ALTER USER to the panel's login
    assert new != old and len(new) == 32
    assert escrowed.read_text() == new + "\n"  # escrowed before the change, on stdin
    assert_one_password(panel, original, new, old)
    archive = json.loads(next((panel.root / "journal" / "done").glob("*.json")).read_text())
    assert archive["state"] == "DONE" and "new_password" not in archive and "old_password" not in archive
    assert [s for s in run.steps("ok") if s.startswith("db_")] == [
        "db_preflight", "db_stage", "db_change", "db_write_env", "db_restart", "db_verify",
    ]
    assert run.leaks() == [] and plan.leaks() == []


#: Crash point -> the password `recover` (without --rollback) converges to.
CRASH_POINTS = {
    "state:STAGED": "old",
    "state:DB_CHANGED": "new",
    "state:ENV_WRITTEN": "new",
    "state:RESTARTED": "new",
    "state:VERIFIED": "new",
    "state:BACKED_UP": "new",
}


@pytest.mark.parametrize("rollback", [False, True], ids=["recover", "rollback"])
@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_recover_after_a_crash_leaves_exactly_one_password(panel_factory, point, rollback):
    panel = panel_factory(rows=2, server=True)
    profile = panel.write_profile()
    original = panel.env_path.read_bytes()
    crash = crash_at(profile, point, "rotate-db-password", "--yes", "--json")
    old, new = journal_passwords(panel)
    assert len(set(scan_text(f"{old} {new}"))) == 2  # every test's output is scanned for both

    run = run_engine(profile, "recover", "--json", *(["--rollback"] if rollback else []))

    assert crash.returncode == -9
    assert run.returncode == 0, run.stderr
    goes_to = "old" if rollback else CRASH_POINTS[point]
    assert run.closing["state"] == ("DONE" if goes_to == "new" else "ROLLED_BACK")
    holds, other = (new, old) if goes_to == "new" else (old, new)
    assert_one_password(panel, original, holds, other)
    assert run.leaks() == [] and crash.leaks() == []


def _restart_failing_once(panel: Any) -> list[str]:
    marker = panel.root / "restart-failed-once"
    script = panel.root / "restart-once.sh"
    real = " ".join(f"'{part}'" for part in panel.restart_command)
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then exec {real}; fi\n'
        f'touch "{marker}"\necho "php-fpm failed to start" >&2\nexit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


@pytest.mark.parametrize("failing", ["restart", "panel_check"])
def test_a_failed_restart_or_panel_check_rolls_back_to_the_old_password(panel_factory, failing):
    panel = panel_factory(rows=2, server=True)
    if failing == "restart":
        profile = panel.write_profile(restart_command=_restart_failing_once(panel))
    else:
        profile = panel.write_profile(verify_command=failing_once(panel.root))
    original, old = panel.env_path.read_bytes(), panel.db.password

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert run.returncode == 1, run.stderr
    error = run.closing
    assert error["type"] == "error" and error["rolled_back"] is True
    assert error["state"] == "ROLLED_BACK"
    assert panel.env_path.read_bytes() == original
    assert accepts(panel, old)
    assert panel.health()[0] == 200
    assert run.step("db_verify_old")["detail"].startswith("old password works")
    archive = json.loads(next((panel.root / "journal" / "done").glob("*.json")).read_text())
    assert archive["state"] == "ROLLED_BACK"
    assert run.leaks() == []


def test_a_run_naming_another_plan_or_password_is_refused_and_nothing_changes(panel_factory):
    from tests.engine.test_run_binding import serve

    panel = panel_factory(rows=1)
    profile = panel.write_profile()
    original = panel.env_path.read_bytes()
    plan = serve(profile, id="p1", op="plan", db_password=True)[-1]
    assert plan["type"] == "result", plan
    good_hash, good_fp = plan["plan_hash"], plan["password_fingerprint"]

    stale = serve(profile, id="r1", op="rotate-db-password", plan_hash="0" * 64, password_fingerprint=good_fp)
    wrong = serve(profile, id="r2", op="rotate-db-password", plan_hash=good_hash, password_fingerprint="1" * 16)
    unnamed = serve(profile, id="r3", op="rotate-db-password")

    assert stale[-1]["type"] == "error" and stale[-1]["code"] == "plan_mismatch"
    assert wrong[-1]["type"] == "error" and wrong[-1]["code"] == "password_mismatch"
    assert unnamed[-1]["type"] == "error" and unnamed[-1]["code"] == "plan_required"
    assert panel.env_path.read_bytes() == original
    assert accepts(panel, panel.db.password)
    assert not (panel.root / "journal" / "db-password.json").exists()


def test_an_unfinished_password_rotation_shows_in_status_and_blocks_a_key_rotation(panel_factory):
    """Killed with the new password in .env but the panel not restarted: `status` names it, a
    key rotation (which logs in with the password in .env) refuses to start (exit 3), and
    `recover` finishes it; then the key rotation runs, logging in with the new password."""
    panel = panel_factory(rows=2, server=True)
    profile = panel.write_profile()
    crash_at(profile, "state:ENV_WRITTEN", "rotate-db-password", "--yes", "--json")
    old, new = journal_passwords(panel)

    status = run_engine(profile, "status", "--json")
    refused = run_engine(profile, "rotate-key", "--yes", "--json")
    recovered = run_engine(profile, "recover", "--json")
    key = run_engine(profile, "rotate-key", "--yes", "--json")

    assert status.closing["unfinished_db_password"]["state"] == "ENV_WRITTEN"
    assert "new_password" not in status.stdout and new not in status.stdout
    assert (refused.returncode, refused.closing["code"]) == (3, "unfinished_rotation")
    assert recovered.closing["state"] == "DONE" and recovered.closing["direction"] == "forward"
    assert key.returncode == 0, key.stderr
    assert accepts(panel, new) and not accepts(panel, old)
    assert panel.php_check_all() == [] and panel.health()[0] == 200
    assert [] == status.leaks() + refused.leaks() + recovered.leaks() + key.leaks()
