"""The engine's database connection: plain over loopback, PyMySQL's default elsewhere."""

from __future__ import annotations

import pytest

from engine.db import ConnectionSettings, PanelDB, is_local
from tests.support.mariadb import create_database


def settings(host: str, socket: str | None = None, port: int = 3306, name: str = "x",
             user: str = "u", password: str = "") -> ConnectionSettings:
    return ConnectionSettings(host, port, name, user, password, socket, 5.0)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_a_loopback_address_is_local(host: str) -> None:
    assert is_local(settings(host))


def test_a_unix_socket_is_local_whatever_the_host() -> None:
    assert is_local(settings("db.example.net", socket="/run/mysqld/mysqld.sock"))


@pytest.mark.parametrize("host", ["10.0.0.7", "db.example.net", "2001:db8::1", "localhost.example.net"])
def test_anything_else_keeps_tls(host: str) -> None:
    assert not is_local(settings(host))


def test_a_loopback_connection_builds_no_tls_context() -> None:
    """PyMySQL 2 loads the CA store for every 'preferred' TLS connection (43 ms here);
    across loopback the engine asks for none."""
    db = create_database(own_user=True)
    try:
        conn = PanelDB(settings(db.host, port=db.port, name=db.name, user=db.user, password=db.password))
        try:
            assert conn.query("SELECT 1") == [(1,)]
            assert not getattr(conn._conn, "ssl", False)
        finally:
            conn.close()
    finally:
        db.drop()


def test_a_server_that_accepts_and_never_greets_is_given_up_within_the_connect_timeout() -> None:
    """PyMySQL's connect_timeout bounds the TCP connect only; the greeting and the login
    get the same limit from the engine, so a wedged server cannot hold a rotation (and
    the panel's lock) for ever."""
    import socket
    import time

    from engine.errors import DatabaseError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match=r"lost the database connection while connecting to 127\.0\.0\.1"):
            PanelDB(ConnectionSettings("127.0.0.1", listener.getsockname()[1], "x", "u", "", None, 1.0))
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_a_statement_longer_than_the_connect_timeout_is_not_cut() -> None:
    """The limit is the connection's set-up only: a rotation's apply may take minutes."""
    db = create_database(own_user=True)
    try:
        conn = PanelDB(ConnectionSettings(db.host, db.port, db.name, db.user, db.password, None, 1.0))
        try:
            assert conn.query("SELECT SLEEP(1.5)") == [(0,)]
        finally:
            conn.close()
    finally:
        db.drop()
