"""The parts of rotate-db-password that need no server: the new password, its fingerprint,
the .env rewrite; and a failed escrow, which must leave everything as it was."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest

from engine.errors import EnvFileError
from engine.ops.db_password.rotation import new_password, password_fingerprint, rewrite_env
from tests.engine.runner import run_engine
from tests.engine.test_db_password import accepts


def test_a_new_password_is_32_characters_safe_in_env_and_sql_and_meets_a_policy():
    made = {new_password() for _ in range(200)}
    assert len(made) == 200
    for password in made:
        assert len(password) == 32 and set(password) <= set(string.ascii_letters + string.digits + "-_.")
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() for c in password) and any(c in "-_." for c in password)


def test_the_fingerprint_names_a_password_per_login_and_is_not_its_sha256():
    from engine.protocol import fingerprint

    fp = password_fingerprint("hunter2hunter2", "panel", "127.0.0.1")
    assert fp == password_fingerprint("hunter2hunter2", "panel", "127.0.0.1")
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp != password_fingerprint("hunter2hunter2", "other", "127.0.0.1")
    assert fp != fingerprint("hunter2hunter2")


NEW = "N3w-Passw0rd.abc"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'DB_PASSWORD="old-secret-1"', b'DB_PASSWORD="N3w-Passw0rd.abc"'),
        (b"DB_PASSWORD='old-secret-1'", b"DB_PASSWORD='N3w-Passw0rd.abc'"),
        (b"DB_PASSWORD=old-secret-1", b"DB_PASSWORD=N3w-Passw0rd.abc"),
        (b"export DB_PASSWORD = old-secret-1  # the login", b"export DB_PASSWORD = N3w-Passw0rd.abc  # the login"),
        (b'DB_PASSWORD=""', b'DB_PASSWORD="N3w-Passw0rd.abc"'),
        (b"DB_PASSWORD=", b"DB_PASSWORD=N3w-Passw0rd.abc"),
    ],
)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_the_rewrite_changes_the_value_and_not_one_other_byte(line, expected, eol):
    def env(password_line: bytes) -> bytes:
        return b"# db" + eol + b"DB_USERNAME=panel" + eol + password_line + eol + b"OTHER_PASSWORD='x y'" + eol

    assert rewrite_env(env(line), "DB_PASSWORD", NEW) == env(expected)


def test_a_line_the_rewrite_cannot_keep_is_refused():
    with pytest.raises(EnvFileError, match="cannot rewrite safely"):
        rewrite_env(b'DB_PASSWORD="a\\"b"\n', "DB_PASSWORD", NEW)


def test_a_failed_escrow_changes_nothing(panel_factory):
    """The escrow hook fails: the password was never changed, .env is as it was, the old
    password still logs in, and the archive says ROLLED_BACK."""
    panel = panel_factory(rows=1)
    profile = panel.write_profile(db_password_escrow_command=["false"])
    original = panel.env_path.read_bytes()

    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert run.returncode == 1
    assert run.closing["code"] == "hook_failed" and run.closing["rolled_back"] is True
    assert "db_change" not in run.steps()
    assert panel.env_path.read_bytes() == original and accepts(panel, panel.db.password)
    archive = json.loads(next((panel.root / "journal" / "done").glob("*.json")).read_text())
    assert archive["trail"] == ["STAGED", "ROLLING_BACK", "ROLLED_BACK"]
    assert run.leaks() == []


def test_a_key_escrow_without_a_password_escrow_is_refused_before_any_change(panel_factory):
    """escrow_command alone (the key's) would store the password where the key is kept:
    plan and run refuse, naming db_password_escrow_command; nothing changes."""
    panel = panel_factory(rows=1)
    stored = panel.root / "key-escrow"
    profile = panel.write_profile(escrow_command=["sh", "-c", f"cat > {stored}"])
    original = panel.env_path.read_bytes()

    plan = run_engine(profile, "plan", "--db-password", "--json")
    run = run_engine(profile, "rotate-db-password", "--yes", "--json")

    assert (plan.returncode, run.returncode) == (2, 2)
    assert "db_password_escrow_command" in run.closing["message"]
    assert not stored.exists() and panel.env_path.read_bytes() == original
    assert not (panel.root / "journal" / "db-password.json").exists()


@pytest.mark.parametrize("op", ["rotate-db-password", "rotate-incident"])
def test_every_changing_operation_outlives_its_connection_on_both_sides(op):
    """serve (engine) and the bot's local client agree that the new operations change the
    panel: a dropped connection must not stop them, and a client re-attaches."""
    from bot.local_client import is_mutating as bot_side
    from engine.protocol import Request
    from engine.serve import is_mutating as engine_side

    request = Request(v=1, id="r-1", op=op)
    assert engine_side(request) and bot_side(request)
    assert not engine_side(request.replace(dry_run=True))


def _settings(host: str, unix_socket: str | None = None) -> Any:
    from engine.db import ConnectionSettings

    return ConnectionSettings(host=host, port=3306, name="panel", user="panel", password="x",
                              unix_socket=unix_socket, connect_timeout_s=5)  # fmt: skip


@pytest.mark.parametrize(
    ("host", "unix_socket", "panel", "tcp"),
    [
        ("localhost", None, "socket ", ["127.0.0.1:3306", "[::1]:3306"]),
        ("127.0.0.1", None, "127.0.0.1:3306", ["127.0.0.1:3306", "[::1]:3306"]),
        ("localhost", "/srv/my.sock", "socket /srv/my.sock", ["127.0.0.1:3306", "[::1]:3306"]),
        ("db.internal", None, "db.internal:3306", ["db.internal:3306"]),
    ],
)
def test_the_routes_tried_are_the_panels_and_every_local_one(host, unix_socket, panel, tcp):
    """DB_HOST=localhost is the socket for PHP (its path is asked of the server later); a
    remote DB_HOST is the only route (another machine's socket and loopback are not ours)."""
    from engine.ops.db_password.accounts import candidate_routes

    panel_route, tcp_routes = candidate_routes(_settings(host, unix_socket))
    assert panel_route.label == panel and [r.label for r in tcp_routes] == tcp


def test_a_password_that_opens_another_users_account_is_refused_before_any_change():
    """The anonymous ''@'localhost' shadows 'panel'@'%' on the socket: the panel's password
    would change the wrong account. A shared test server can't carry an anonymous account
    (it would shadow every other test's login), so this is checked on the decision itself."""
    from engine.errors import DatabaseError
    from engine.ops.db_password.accounts import ACCEPTS, AccountMap, Probe, Route
    from engine.ops.db_password.rotation import _rotatable

    socket, tcp = Route("socket", "/run/mysqld/mysqld.sock"), Route("tcp", "127.0.0.1", 3306)
    routes = AccountMap(panel_route=tcp, probes=[Probe(tcp, ACCEPTS, "panel@%"), Probe(socket, ACCEPTS, "@localhost")])
    with pytest.raises(DatabaseError, match=r"logs panel in as @localhost .*nothing was changed"):
        _rotatable(routes, "panel")
    read_only = AccountMap(panel_route=tcp, probes=[Probe(tcp, ACCEPTS, "panel@%", read_only=True)])
    with pytest.raises(DatabaseError, match=r"read-only .*nothing was changed"):
        _rotatable(read_only, "panel")
    twins = AccountMap(panel_route=socket, probes=[Probe(tcp, ACCEPTS, "panel@127.0.0.1"),
                                                   Probe(socket, ACCEPTS, "panel@localhost")])  # fmt: skip
    assert _rotatable(twins, "panel") == "panel@localhost"
    assert list(twins.accounts()) == ["panel@localhost", "panel@127.0.0.1"]  # the panel's first
