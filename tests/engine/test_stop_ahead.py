"""The php-fpm stop overlaps the locked apply; the commit still follows the whole stop.

What a team relies on: a panel user saving during the switch waits about the longer of
the apply and the stop, not both (bench/write_stall.py measures it); no worker holds the
old key once the rows are committed under the new one; and a rotation that fails or is
killed after the stop began leaves the panel running again.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest

from engine.errors import HookError
from engine.ops.key.stop_ahead import (
    DEFAULT_STOP_S,
    ApplyClock,
    HostTimings,
    StopAhead,
    apply_ends_within,
    host_timings,
)
from engine.runs import RunRecord
from tests.engine.runner import finish, rotate, run_engine, start_paused
from tests.support.php_crypto import php_encrypt
from tests.support.procs import wait_until
from tests.support.secrets_scan import register_secret


def _noting(panel, tmp_path, action: str, hold_s: float = 0.0):
    """A restart half that notes row 1's value as another session sees it when it begins
    and, after ``hold_s`` (php-fpm's shutdown taking its time), when it ends; then runs
    the reference panel's ``ctl.py``."""
    script = tmp_path / f"{action}.py"
    script.write_text(
        "import json, subprocess, time\nimport pymysql\n"
        f"conn = pymysql.connect(host={panel.db.host!r}, port={panel.db.port}, user='root', "
        f"database={panel.db.name!r}, autocommit=True)\n"
        "def note(when):\n"
        "    with conn.cursor() as cur:\n"
        "        cur.execute('SELECT webif_password FROM oscam_installs WHERE id = 1')\n"
        f"        with open({str(tmp_path / 'seen.jsonl')!r}, 'a') as log:\n"
        f"            log.write(json.dumps([{action!r}, when, cur.fetchone()[0]]) + '\\n')\n"
        "note('begins')\n"
        f"time.sleep({hold_s})\n"
        "note('ends')\n"
        f"subprocess.run({panel.server.ctl_argv(action)!r}, check=True)\n"
    )
    return [sys.executable, str(script)]


def _save_foreign_value(panel, key_hex: str) -> None:
    foreign = php_encrypt(panel.scheme, key_hex, [b"sealed under some other key"])[0]
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("UPDATE email_configurations SET mailgun_api_key = %s WHERE id = 2", (foreign,))
        conn.commit()


def _clear_the_foreign_value(panel) -> None:
    """As a panel user clearing the field would; the panel's own check then passes."""
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("UPDATE email_configurations SET mailgun_api_key = NULL WHERE id = 2")
        conn.commit()
    panel.plaintexts["email_configurations.mailgun_api_key#2"] = None
    panel.no_value["email_configurations.mailgun_api_key#2"] = None


def _measured_stop(panel, stop_ms: int) -> None:
    """The host has rotated before, with the restart split: its journal holds the stop it measured."""
    journal = panel.root / "journal"
    journal.mkdir(mode=0o700, exist_ok=True)
    RunRecord(journal).append({"event": "finished", "ok": True, "state": "DONE", "stop_ms": stop_ms})


def _seen(tmp_path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]


def test_the_stop_runs_during_the_apply_once_measured_and_the_commit_waits_for_all_of_it(panel_factory, tmp_path):
    """The host's first rotation stops the panel after the apply and measures the stop;
    the second begins it during the apply. In both, the rows hold the old key for the
    whole stop and the new one for the start."""
    panel = panel_factory(rows=6, server=True)  # every column holds values: the last one's apply is real work
    profile = panel.write_profile(
        restart_stop_command=_noting(panel, tmp_path, "stop-app", hold_s=1.0),
        restart_start_command=_noting(panel, tmp_path, "start-app"),
    )
    for nth, during_apply in ((1, False), (2, True)):
        before = panel.stored_values()["oscam_installs.webif_password#1"]
        (tmp_path / "seen.jsonl").unlink(missing_ok=True)

        run = rotate(profile)
        register_secret(panel.env_key(), f"new PANEL_ENCRYPTION_KEY ({nth})")

        assert run.returncode == 0, run.stderr
        after = panel.stored_values()["oscam_installs.webif_password#1"]
        assert after != before
        assert _seen(tmp_path) == [["stop-app", "begins", before], ["stop-app", "ends", before],
                                   ["start-app", "begins", after], ["start-app", "ends", after]]
        restart = run.step("restart")
        assert restart["stop_begun_during_apply"] is during_apply
        assert restart["stop_ms"] >= 1000
        assert ("begun during the apply" in restart["detail"]) is during_apply
        # what the next rotation expects: the stop and the apply's rate this one measured
        timings = host_timings(panel.root / "journal")
        assert timings.stop_s == pytest.approx(restart["stop_ms"] / 1000)
        assert timings.apply_bytes_per_s == run.closing["apply_bytes_per_s"] > 0
        assert panel.php_check_all() == []
        assert panel.health()[0] == 200
        assert run.leaks() == []
    assert restart["stop_after_apply_ms"] < restart["stop_ms"]  # part of the stop ran during the apply


def test_a_failure_after_the_stop_began_waits_for_it_then_starts_the_panel(panel_factory, tmp_path):
    """A value no key opens, saved once the stop has begun (paused before the second
    table's apply): the rotation rolls back, the panel's restart comes after the stop
    ended, and the panel runs again under the old key (its own check would fail on that
    value, so the profile has none here; the test clears the value, then asks it)."""
    panel = panel_factory(rows=6, server=True)
    old_key = panel.env_key()
    profile = panel.write_profile(
        restart_stop_command=_noting(panel, tmp_path, "stop-app", hold_s=0.5),
        restart_start_command=panel.server.start_command,
        restart_command=_noting(panel, tmp_path, "restart"),
        verify_url=None,
    )
    _measured_stop(panel, 2000)
    engine = start_paused(profile, "apply:saved_servers.ssh_credential_encrypted", "rotate-key", "--yes", "--json")
    try:
        _save_foreign_value(panel, "ab" * 32)
    finally:
        run = finish(engine)

    assert run.returncode != 0, run.stdout[-800:]
    assert run.closing["rolled_back"] is True
    assert "email_configurations.mailgun_api_key id 2" in run.closing["message"]
    assert [(action, when) for action, when, _ in _seen(tmp_path)] == [
        ("stop-app", "begins"), ("stop-app", "ends"), ("restart", "begins"), ("restart", "ends")]
    assert panel.env_key() == old_key
    assert panel.php_check_all() == ["email_configurations.mailgun_api_key#2: does not decrypt with the key"]
    assert not (panel.root / "journal" / "rotation.json").exists()
    _clear_the_foreign_value(panel)
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200


def test_a_value_no_key_opens_found_before_the_locks_never_stops_the_panel(panel_factory, tmp_path):
    panel = panel_factory(rows=6, server=True)
    profile = panel.write_profile(
        restart_stop_command=_noting(panel, tmp_path, "stop-app"),
        restart_start_command=panel.server.start_command,
        restart_command=_noting(panel, tmp_path, "restart"),
        verify_url=None,
    )
    _measured_stop(panel, 2000)
    engine = start_paused(profile, "state:STAGED", "rotate-key", "--yes", "--json")
    try:
        _save_foreign_value(panel, "cd" * 32)
    finally:
        run = finish(engine)
    assert run.closing["rolled_back"] is True
    assert not (tmp_path / "seen.jsonl").exists()  # neither stopped nor restarted
    _clear_the_foreign_value(panel)
    assert panel.health()[0] == 200


@pytest.mark.parametrize("point", ["apply:done", "state:DB_VERIFIED"])
def test_killed_while_the_stop_runs_recover_starts_the_panel_again(panel_factory, point):
    panel = panel_factory(rows=8, server=True)
    profile = panel.write_profile(
        batch_size=4,
        restart_stop_command=panel.server.stop_command,
        restart_start_command=panel.server.start_command,
    )
    old_key = panel.env_key()
    _measured_stop(panel, 2000)
    engine = start_paused(profile, point, "rotate-key", "--yes", "--json")
    engine.kill()
    engine.communicate()
    assert wait_until(lambda: panel.health()[0] != 200, 10, what="the panel stopped by the stop begun during the apply")

    run = run_engine(profile, "recover", "--json")

    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "ROLLED_BACK"
    assert panel.env_key() == old_key
    assert panel.php_check_all() == []
    assert panel.health()[0] == 200
    assert not (panel.root / "journal" / "rotation.json").exists()


# -- the decision and the bookkeeping, without a panel ------------------------------------


def test_the_stop_begins_once_the_rest_of_the_apply_fits_in_it():
    mb = 1_000_000
    assert apply_ends_within(2.0, 58 * mb, 0, 0.0, fallback_rate=40 * mb)  # 1.45 s at the pass's rate
    assert not apply_ends_within(2.0, 580 * mb, 0, 0.0, fallback_rate=10 * mb)  # 58 s
    assert not apply_ends_within(2.0, 100 * mb, 50 * mb, 2.0, fallback_rate=1e12)  # 25 MB/s so far: 4 s left
    assert apply_ends_within(2.0, 40 * mb, 50 * mb, 2.0, fallback_rate=0)  # 1.6 s left
    assert apply_ends_within(2.0, 0, 0, 0.0, fallback_rate=0)  # nothing left
    assert not apply_ends_within(2.0, 1, 0, 0.0, fallback_rate=0)  # no rate known: not before the apply is over


def test_the_expected_stop_and_apply_rate_are_the_latest_this_host_measured(tmp_path):
    assert host_timings(tmp_path) == HostTimings(DEFAULT_STOP_S, 0.0)
    assert DEFAULT_STOP_S == 0  # none measured: the stop follows the apply
    runs = RunRecord(tmp_path)
    runs.append({"event": "finished", "ok": True, "stop_ms": 2400, "apply_bytes_per_s": 40_000_000})
    runs.append({"event": "finished", "ok": True})  # a run without a split restart
    assert host_timings(tmp_path) == HostTimings(2.4, 40_000_000)
    runs.append({"event": "finished", "ok": True, "stop_ms": 150})
    assert host_timings(tmp_path) == HostTimings(0.15, 40_000_000)
    runs.append({"event": "finished", "ok": True, "stop_ms": "soon", "apply_bytes_per_s": True})
    assert host_timings(tmp_path) == HostTimings(0.15, 40_000_000)


def test_the_clock_begins_the_stop_once_the_rest_fits_and_measures_the_apply():
    class Ahead:
        begun, during = False, None

        def begin(self, *, during_apply=False):
            self.begun, self.during = True, during_apply

    mb = 1_000_000
    sizes = {"a": 30 * mb, "b": 30 * mb}
    # the host's last apply wrote 40 MB/s: 60 MB take 1.5 s, within a 2 s stop: begun before the first column
    ahead, began = Ahead(), []
    clock = ApplyClock(ahead, sizes, HostTimings(2.0, 40 * mb), 5 * mb, lambda: began.append(1))
    clock.at("a")
    assert (ahead.begun, ahead.during, began) == (True, True, [1])
    # no apply measured yet, the pass's 5 MB/s: 12 s, not within 2 s; nor while a value no key opens is known
    ahead = Ahead()
    clock = ApplyClock(ahead, sizes, HostTimings(2.0, 0.0), 5 * mb, lambda: None)
    clock.at("a")
    clock.at("b", may_begin=False)
    assert not ahead.begun
    clock.at(None)  # the apply is over: begun, not during it
    assert (ahead.begun, ahead.during) == (True, False)
    assert clock.measured_rate > 0


def test_a_stop_that_fails_is_raised_where_the_rotation_waits_for_it():
    def failing(what, argv, *, timeout_s):
        raise HookError(f"{what} failed: exit status 1")

    ahead = StopAhead(["systemctl", "stop", "php8.3-fpm"], 5.0, run=failing)
    ahead.begin()
    with pytest.raises(HookError, match="stop failed"):
        ahead.wait()


def test_settle_lets_a_stop_in_flight_end_and_wait_begins_one_not_begun():
    release, ran = threading.Event(), []

    def slow(what, argv, *, timeout_s):
        ran.append(what)
        release.wait(5)
        return ""

    ahead = StopAhead(["stop"], 5.0, run=slow)
    ahead.begin()
    waiter = threading.Thread(target=ahead.settle)
    waiter.start()
    assert waiter.is_alive()
    release.set()
    waiter.join(5)
    assert not waiter.is_alive() and ran == ["stop"]
    late = StopAhead(["stop"], 5.0, run=slow)
    assert late.wait() >= 0 and late.begun
