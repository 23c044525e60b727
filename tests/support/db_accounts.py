"""The panel's DB login as twin accounts on the shared MariaDB, and independent checks of
which account a password opens on which route (PyMySQL over the socket or TCP, and real
PHP pdo_mysql the way the panel connects). Users created here are dropped by the caller
(``drop_accounts``); statements wait at most 20 s for the grant tables' metadata lock.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pymysql

from bot.fakes.panel.ctl import parse_env
from tests.support.mariadb import admin_connect


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
        if exc.args[0] in (1045, 1130, 1698):
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


def make_twins(panel: Any, hosts: tuple[str, ...], db_host: str, made: list[tuple[str, str]]) -> Any:
    """Make ``panel``'s login exist for exactly ``hosts`` (same password, same rights),
    set ``DB_HOST=db_host`` in its ``.env`` and restart it; ``made`` collects the
    accounts to drop."""
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


def drop_accounts(made: list[tuple[str, str]]) -> None:
    for user, host in made:
        admin((f"DROP USER IF EXISTS '{user}'@'{host}'", ()))


