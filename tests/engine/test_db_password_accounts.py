"""rotate-db-password when the panel's login exists twice (issue 20, items 1 and 13).

Installers often create ``'u'@'localhost'`` and ``'u'@'127.0.0.1'`` (or ``'u'@'%'``) with
the same password. PHP reaches ``localhost`` through the Unix socket; PyMySQL dials TCP.
On the real MariaDB: every account the old password opened gets the new one, the old one
is refused on every route afterwards (socket and TCP, checked here independently of the
engine), and real PHP (pdo_mysql, as the panel connects) logs in with the new one on the
route the panel uses. A route the user can't use is no route, not a failure; a twin that
keeps the old password is reported and rolled back, never "old password refused".
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.runner import crash_at, run_engine
from tests.support.db_accounts import SOCKET, drop_accounts, env_value, login, make_twins, php_login
from tests.support.secrets_scan import register_secret, scan_text

TWIN_SHAPES = {"localhost+127.0.0.1": ("localhost", "127.0.0.1"), "localhost+%": ("localhost", "%")}


@pytest.fixture
def twin_panel(panel_factory) -> Iterator[Any]:
    """``make(hosts, db_host)``: a running panel whose login exists for exactly ``hosts``
    (same password, same rights) and whose ``.env`` says ``DB_HOST=db_host``."""
    made: list[tuple[str, str]] = []
    yield lambda hosts, db_host: make_twins(panel_factory(rows=2, server=True), hosts, db_host, made)
    drop_accounts(made)


def assert_rotated_everywhere(panel: Any, accounts: set[str], old: str, new: str) -> None:
    """What a team would check by hand: the old password gets in nowhere, the new one gets
    into every account, and PHP on the panel's route logs in with the new one."""
    user = panel.db.user
    for route in ("socket", "tcp"):
        assert login(user, old, route=route) is None, f"the old password still logs in over {route}"
    reached = {login(user, new, route=route) for route in ("socket", "tcp")} - {None}
    assert reached == accounts
    assert php_login(panel, new).startswith(f"{user}@")
    assert php_login(panel, old) == "refused"
    status, body = panel.health()
    assert status == 200 and body["ok"], body


@pytest.mark.parametrize("db_host", ["localhost", "127.0.0.1"])
@pytest.mark.parametrize("shape", list(TWIN_SHAPES))
def test_every_twin_account_gets_the_new_password_and_the_old_one_is_refused_on_every_route(
    twin_panel, shape, db_host
):
    hosts = TWIN_SHAPES[shape]
    panel = twin_panel(hosts, db_host)
    user, old = panel.db.user, panel.db.password
    profile = panel.write_profile()
    accounts = {f"{user}@{h}" for h in hosts}

    plan = run_engine(profile, "plan", "--db-password", "--json")
    run = run_engine(profile, "rotate-db-password", "--yes", "--json")
    new = env_value(panel, "DB_PASSWORD")
    register_secret(new, "new DB_PASSWORD")

    assert run.returncode == 0, run.stderr
    planned = plan.closing
    assert {a["account"] for a in planned["accounts"]} == accounts
    panel_route = f"socket {SOCKET}" if db_host == "localhost" else "127.0.0.1:3306"
    assert planned["panel_route"] == panel_route
    assert {r["route"]: r.get("account") for r in planned["routes"] if r["outcome"] == "accepts"} == {
        f"socket {SOCKET}": f"{user}@localhost",
        "127.0.0.1:3306": f"{user}@{hosts[1]}",
    }
    result = run.closing
    assert result["state"] == "DONE" and set(result["accounts"]) == accounts
    assert result["panel_route"] == panel_route
    proven = {r["route"]: r for r in result["routes"] if r.get("account")}
    assert {route: (r["account"], r["new"], r["old"]) for route, r in proven.items()} == {
        f"socket {SOCKET}": (f"{user}@localhost", "works", "refused"),
        "127.0.0.1:3306": (f"{user}@{hosts[1]}", "works", "refused"),
    }
    assert new != old
    assert_rotated_everywhere(panel, accounts, old, new)
    human = run_engine(profile, "plan", "--db-password")
    assert "on every account it opens: " in human.stdout and all(a in human.stdout for a in accounts), human.stdout
    assert run.leaks() == [] and plan.leaks() == [] and human.leaks() == []


def test_an_account_only_for_localhost_is_rotated_and_the_refused_tcp_route_is_no_failure(twin_panel):
    panel = twin_panel(("localhost",), "localhost")
    user, old = panel.db.user, panel.db.password
    profile = panel.write_profile()

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")
    new = env_value(panel, "DB_PASSWORD")
    register_secret(new, "new DB_PASSWORD")

    assert run.returncode == 0, run.stderr
    result = run.closing
    assert result["accounts"] == [f"{user}@localhost"]
    outcomes = {r["route"]: r.get("old") for r in result["routes"]}
    assert outcomes["127.0.0.1:3306"] == "refused", json.dumps(run.step("db_preflight"))  # not a route
    assert_rotated_everywhere(panel, {f"{user}@localhost"}, old, new)
    assert run.leaks() == []


def test_a_twin_account_made_after_the_approval_is_another_plan_and_nothing_changes(twin_panel):
    """The approval binds every account the password opens: a ``user@127.0.0.1`` created
    with the same password after the plan was approved makes the run refuse (the plan
    changed), before any password changes; a fresh plan names both accounts."""
    from tests.engine.test_incident import serve_raw
    from tests.support.db_accounts import admin, drop_accounts

    panel = twin_panel(("localhost",), "localhost")
    user, old, name = panel.db.user, panel.db.password, panel.db.name
    profile = panel.write_profile()
    plan = run_engine(profile, "plan", "--db-password", "--json").closing
    assert [a["account"] for a in plan["accounts"]] == [f"{user}@localhost"]
    admin((f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (old,)),
          (f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'127.0.0.1'", ()))
    try:
        events, written = serve_raw(profile, id="r-twin-late", op="rotate-db-password", plan_hash=plan["plan_hash"],
                                    password_fingerprint=plan["password_fingerprint"], requested_by="U0ALICE",
                                    approved_by=["U0BOB"], reason="periodic review")  # fmt: skip
        closing = events[-1]
        assert (closing["type"], closing["code"]) == ("error", "plan_mismatch"), closing
        assert env_value(panel, "DB_PASSWORD") == old
        assert login(user, old, route="socket") == f"{user}@localhost"
        assert login(user, old, route="tcp") == f"{user}@127.0.0.1"
        again = run_engine(profile, "plan", "--db-password", "--json").closing
        assert {a["account"] for a in again["accounts"]} == {f"{user}@localhost", f"{user}@127.0.0.1"}
        assert again["plan_hash"] != plan["plan_hash"]
        assert scan_text(written) == []
    finally:
        drop_accounts([(user, "127.0.0.1")])


def test_a_panel_route_that_refuses_the_password_is_refused_before_any_change(twin_panel):
    """DB_HOST=127.0.0.1 but the login exists only for localhost: the panel's own route
    refuses the password in .env, so the engine says so and changes nothing."""
    panel = twin_panel(("localhost",), "localhost")
    text = panel.env_path.read_text(encoding="utf-8")
    panel.env_path.write_text(text.replace("DB_HOST=localhost\n", "DB_HOST=127.0.0.1\n"), encoding="utf-8")
    original = panel.env_path.read_bytes()
    profile = panel.write_profile()

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert run.returncode != 0
    assert run.closing["type"] == "error" and run.closing["code"] == "credentials_refused"
    assert "127.0.0.1:3306" in run.closing["message"] and "nothing was changed" in run.closing["message"]
    assert panel.env_path.read_bytes() == original
    assert login(panel.db.user, panel.db.password, route="socket") == f"{panel.db.user}@localhost"
    assert not (panel.root / "journal" / "db-password.json").exists()


def _resetting_restart(panel: Any, account_host: str, old: str) -> list[str]:
    """A restart hook that, like a configuration-management run, sets the old password on
    the twin ``'u'@account_host`` again (as root), then restarts the panel."""
    secret = panel.root / "old-password"
    secret.write_text(old)
    secret.chmod(0o600)
    script = panel.root / "reset-twin.py"
    script.write_text(
        "import subprocess, sys\n"
        "import pymysql\n"
        f"old = open({str(secret)!r}).read()\n"
        "with pymysql.connect(host='127.0.0.1', port=3306, user='root', password='') as conn:\n"
        "    with conn.cursor() as cur:\n"
        "        cur.execute('SET SESSION lock_wait_timeout = 20')\n"
        f"        cur.execute(\"SET PASSWORD FOR '{panel.db.user}'@'{account_host}' = PASSWORD(%s)\", (old,))\n"
        f"sys.exit(subprocess.call({panel.restart_command!r}))\n"
    )
    wrapper = panel.root / "restart.sh"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return [str(wrapper)]


@pytest.mark.parametrize("reset", ["127.0.0.1", "localhost"])
def test_a_twin_that_still_takes_the_old_password_is_reported_and_rolled_back(twin_panel, reset):
    """Item 13: the "old password refused" check must be able to fire. After the change a
    stand-in (configuration management, during the restart) puts the old password back on
    one twin: 'u'@'127.0.0.1' (TCP) or 'u'@'localhost' (the socket, the panel's own). The
    engine must name that route and account, not claim success, and roll every account
    back to the old password."""
    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user, old = panel.db.user, panel.db.password
    original = panel.env_path.read_bytes()
    profile = panel.write_profile(restart_command=_resetting_restart(panel, reset, old))

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert run.returncode == 1, run.stderr
    error = run.closing
    assert error["type"] == "error" and error["code"] == "verification_failed"
    route = "127.0.0.1:3306" if reset == "127.0.0.1" else f"socket {SOCKET}"
    assert error["message"] == f"the old password still logs in on {route} as {user}@{reset}"
    assert error["rolled_back"] is True and error["state"] == "ROLLED_BACK"
    assert "db_verify" not in run.steps("ok") and "db_verify" in run.steps("failed")
    assert "old password refused" not in run.stdout
    assert panel.env_path.read_bytes() == original
    for route in ("socket", "tcp"):
        assert login(user, old, route=route) is not None
    assert php_login(panel, old) == f"{user}@localhost"
    assert panel.health()[0] == 200
    assert run.leaks() == []


#: Crash point -> the password ``recover`` converges every account to.
CRASH_POINTS = {"db_account:new:1": "old", "state:DB_CHANGED": "new", "state:ENV_WRITTEN": "new"}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_between_twin_accounts_is_recovered_on_every_account(twin_panel, point):
    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user = panel.db.user
    profile = panel.write_profile()

    crash = crash_at(profile, point, "rotate-db-password", "--yes", "--json")
    record = json.loads((panel.root / "journal" / "db-password.json").read_text())
    old, new = record["old_password"], record["new_password"]
    register_secret(new, "new DB_PASSWORD")
    journaled = {a["account"] for a in record["accounts"]}
    if point == "db_account:new:1":  # one account changed, the other not yet: both journaled
        assert {login(user, new, route="socket"), login(user, old, route="tcp")} == journaled

    run = run_engine(profile, "recover", "--json")

    assert crash.returncode == -9
    assert journaled == {f"{user}@localhost", f"{user}@127.0.0.1"}
    assert run.returncode == 0, run.stderr
    holds = new if CRASH_POINTS[point] == "new" else old
    assert env_value(panel, "DB_PASSWORD") == holds
    if holds == new:
        assert_rotated_everywhere(panel, journaled, old, new)
    else:
        for route in ("socket", "tcp"):
            assert login(user, old, route=route) is not None and login(user, new, route=route) is None
        assert panel.health()[0] == 200
    assert set(run.closing["accounts"]) == journaled
    assert not (panel.root / "journal" / "db-password.json").exists()
    assert run.leaks() == [] and crash.leaks() == []


def test_rotate_incident_rotates_every_twin_before_the_key(twin_panel):
    """rotate-incident inherits the accounts: its plan names both, its database part
    rotates both and proves the old password refused on every route, then the key runs."""
    from tests.engine.test_incident import serve, serve_raw

    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user, old = panel.db.user, panel.db.password
    profile = panel.profile_path
    plan = serve(profile, id="r-twin-plan", op="plan", incident=True)[-1]
    planned = next(p for p in plan["parts"] if p["part"] == "db_password")

    events, _ = serve_raw(profile, id="r-twin-inc", op="rotate-incident", plan_hash=plan["plan_hash"],
                               key_fingerprint=plan["key_fingerprint"], agents=[], requested_by="U0ALICE",
                               approved_by=["U0BOB"], reason="INC-7 .env leaked",
                               password_fingerprint=plan["password_fingerprint"])  # fmt: skip
    new = env_value(panel, "DB_PASSWORD")
    register_secret(new, "new DB_PASSWORD")

    accounts = {f"{user}@localhost", f"{user}@127.0.0.1"}
    assert set(planned["accounts"]) == accounts and planned["panel_route"] == f"socket {SOCKET}"
    result = events[-1]
    assert (result["type"], result["state"]) == ("result", "DONE"), result
    db = next(p for p in result["parts"] if p["part"] == "db_password")
    assert db["state"] == "done" and set(db["accounts"]) == accounts
    assert {r["route"] for r in db["routes"] if r.get("old") == "refused" and r.get("account")} == {
        f"socket {SOCKET}", "127.0.0.1:3306"
    }
    assert_rotated_everywhere(panel, accounts, old, new)
    assert next(p for p in result["parts"] if p["part"] == "key")["state"] == "done"
    assert panel.php_check_all() == []
    closed = next(e for e in events if e["type"] == "step" and e["name"] == "part" and e.get("part") == "db_password"
                  and e["state"] == "ok")  # fmt: skip
    assert f"verified on {user}@localhost, {user}@127.0.0.1, the old one refused on every route" in closed["detail"]


def test_rotate_incident_stops_at_a_twin_that_keeps_the_old_password(twin_panel):
    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user, old = panel.db.user, panel.db.password
    key_before = panel.env_key()
    profile = panel.write_profile(restart_command=_resetting_restart(panel, "127.0.0.1", old))

    run = run_engine(profile, "rotate-incident", "--yes", "--json", "--reason", "INC-8")

    result = run.closing
    assert run.returncode != 0 and result["state"] == "STOPPED"
    db = next(p for p in result["parts"] if p["part"] == "db_password")
    assert db["state"] == "rolled_back"
    assert db["error"] == f"the old password still logs in on 127.0.0.1:3306 as {user}@127.0.0.1"
    assert set(db["accounts"]) == {f"{user}@localhost", f"{user}@127.0.0.1"}
    assert next(p for p in result["parts"] if p["part"] == "key")["state"] == "not_started"
    assert panel.env_key() == key_before
    for route in ("socket", "tcp"):
        assert login(user, old, route=route) is not None
    assert run.leaks() == []


def test_a_loopback_port_held_by_another_user_is_never_sent_the_password(twin_panel):
    """The server listens on 127.0.0.1 only, so anyone may listen on [::1]:3306 (and
    PyMySQL would hand the password to a listener that asks for it in clear). Here the
    test holds that port as another user than MariaDB's: the engine reports the route
    as not tried and never connects to it, and the rotation still covers every account."""
    import select
    import socket

    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user, old = panel.db.user, panel.db.password
    profile = panel.write_profile()
    rogue = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        rogue.bind(("::1", 3306))
        rogue.listen(8)
        plan = run_engine(profile, "plan", "--db-password", "--json")
        run = run_engine(profile, "rotate-db-password", "--yes", "--json")
        knocked = select.select([rogue], [], [], 0)[0]
    finally:
        rogue.close()
    new = env_value(panel, "DB_PASSWORD")
    register_secret(new, "new DB_PASSWORD")

    assert run.returncode == 0, run.stderr
    assert knocked == [], "the engine connected to a listener that is not the database server"
    ipv6 = next(r for r in plan.closing["routes"] if r["route"] == "[::1]:3306")
    assert ipv6["outcome"] == "unreachable" and ipv6["note"].startswith("not tried: the port is held by uid 0,")
    assert {r["route"]: r.get("old") for r in run.closing["routes"]}["[::1]:3306"] == "unreachable"
    assert_rotated_everywhere(panel, {f"{user}@localhost", f"{user}@127.0.0.1"}, old, new)
    assert run.leaks() == []
