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
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from bot.fakes.panel.ctl import parse_env
from tests.engine.runner import crash_at, run_engine
from tests.support.mariadb import admin_connect
from tests.support.secrets_scan import register_secret

TWIN_SHAPES = {"localhost+127.0.0.1": ("localhost", "127.0.0.1"), "localhost+%": ("localhost", "%")}


def server_socket() -> str:
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@socket")
        return str(cur.fetchone()[0])


SOCKET = server_socket()


def login(user: str, password: str, *, route: str) -> str | None:
    """``CURRENT_USER()`` for a login over ``route`` ("socket" or "tcp"), None if refused."""
    where: dict[str, Any] = {"unix_socket": SOCKET} if route == "socket" else {"host": "127.0.0.1", "port": 3306}
    try:
        conn = pymysql.connect(user=user, password=password, connect_timeout=5, **where)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] in (1045, 1130):
            return None
        raise
    with conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        return str(cur.fetchone()[0])


def php_login(panel: Any, password: str) -> str:
    """What real PHP (pdo_mysql) sees with ``.env``'s DB_HOST, the way the panel connects:
    ``CURRENT_USER()`` or ``refused``. The password goes in the environment, not argv."""
    code = (
        '$e = getenv("T_HOST"); '
        'try { $p = new PDO("mysql:host=" . $e . ";port=3306", getenv("T_USER"), getenv("T_PASSWORD")); '
        'echo $p->query("SELECT CURRENT_USER()")->fetchColumn(); } '
        'catch (PDOException $x) { echo $x->getCode() == 1045 ? "refused" : "error " . $x->getCode(); }'
    )
    env = {**os.environ, "T_HOST": env_value(panel, "DB_HOST"), "T_USER": panel.db.user, "T_PASSWORD": password}
    proc = subprocess.run(["php", "-r", code], env=env, capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip()


def env_value(panel: Any, key: str) -> str:
    return parse_env(panel.env_path.read_text(encoding="utf-8"))[key]


def admin(*statements: tuple[str, tuple[Any, ...]]) -> None:
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = 20")
        for sql, args in statements:
            cur.execute(sql, args or None)


@pytest.fixture
def twin_panel(panel_factory) -> Iterator[Any]:
    """``make(hosts, db_host)``: a running panel whose login exists for exactly ``hosts``
    (same password, same rights) and whose ``.env`` says ``DB_HOST=db_host``."""
    made: list[tuple[str, str]] = []

    def make(hosts: tuple[str, ...], db_host: str) -> Any:
        panel = panel_factory(rows=2, server=True)
        user, password, name = panel.db.user, panel.db.password, panel.db.name
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for host in hosts:
            made.append((user, host))
            if host != "%":
                statements.append((f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s", (password,)))
                statements.append((f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'{host}'", ()))
        if "%" not in hosts:
            statements.append((f"DROP USER '{user}'@'%'", ()))
        admin(*statements)
        text = panel.env_path.read_text(encoding="utf-8")
        panel.env_path.write_text(text.replace("DB_HOST=127.0.0.1\n", f"DB_HOST={db_host}\n"), encoding="utf-8")
        panel.restart_panel()
        assert panel.health()[0] == 200
        assert php_login(panel, password) == f"{user}@{hosts[0] if db_host == 'localhost' else hosts[-1]}"
        return panel

    yield make
    for user, host in made:
        admin((f"DROP USER IF EXISTS '{user}'@'{host}'", ()))


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
    assert all(a in human.stdout for a in accounts), human.stdout
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
    assert outcomes["127.0.0.1:3306"] == "refused"  # tried, refused before and after: not a route
    assert_rotated_everywhere(panel, {f"{user}@localhost"}, old, new)
    assert run.leaks() == []


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


def test_a_twin_that_still_takes_the_old_password_is_reported_and_rolled_back(twin_panel):
    """Item 13: the "old password refused" check must be able to fire. After the change a
    stand-in puts the old password back on 'u'@'127.0.0.1' (the twin, not the panel's
    socket account). The engine must name that route and account, not claim success, and
    roll every account back to the old password."""
    panel = twin_panel(("localhost", "127.0.0.1"), "localhost")
    user, old = panel.db.user, panel.db.password
    original = panel.env_path.read_bytes()
    profile = panel.write_profile(restart_command=_resetting_restart(panel, "127.0.0.1", old))

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert run.returncode == 1, run.stderr
    error = run.closing
    assert error["type"] == "error" and error["code"] == "verification_failed"
    assert error["message"] == f"the old password still logs in on 127.0.0.1:3306 as {user}@127.0.0.1"
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
