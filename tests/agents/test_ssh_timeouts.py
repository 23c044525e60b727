"""An agent server too slow for ``ssh_timeout_s`` (a busy host) is reported as slow, never as
a refused credential, and without a traceback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from engine.errors import AgentError
from engine.ops.agents.remote import AgentServer, Route
from tests.support.sshd import make_key


class SlowAuth(paramiko.ServerInterface):
    """Answers the banner and the key exchange at once, then takes ``delay_s`` to judge a key."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        time.sleep(self.delay_s)
        return paramiko.AUTH_SUCCESSFUL


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


def route(sock: socket.socket, tmp_path: Path) -> Route:
    key = make_key(tmp_path / "client_key", comment="engine")
    return Route("srv-slow (u@127.0.0.1)", "127.0.0.1", sock.getsockname()[1], "u",
                 key_text=key.private_path.read_text())


def test_a_server_that_never_sends_its_banner_is_reported_as_too_slow(
    listener: socket.socket, tmp_path: Path
) -> None:
    """TCP accepts (the kernel does, even for a stalled sshd); no banner comes within the limit."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    server = AgentServer(route(listener, tmp_path), known, timeout_s=1)

    with pytest.raises(AgentError) as caught:
        server.connect()

    assert caught.value.message == (
        "agent server srv-slow (u@127.0.0.1) did not complete the SSH handshake and login within 1 s "
        "(a slow or overloaded server or host; ssh_timeout_s sets this limit)"
    )


def test_a_login_slower_than_the_limit_is_not_called_a_refused_credential(
    listener: socket.socket, tmp_path: Path
) -> None:
    """paramiko raises AuthenticationException("Authentication timeout.") when the server is slow:
    that is a slow server, not a wrong key."""
    host_key = paramiko.Ed25519Key.from_private_key_file(str(make_key(tmp_path / "host", comment="h").private_path))
    known = tmp_path / "known_hosts"
    port = listener.getsockname()[1]
    known.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transports.append(transport)
        transport.add_server_key(host_key)
        transport.start_server(server=SlowAuth(delay_s=3))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server = AgentServer(route(listener, tmp_path), known, timeout_s=1)
    try:
        with pytest.raises(AgentError) as caught:
            server.connect()
    finally:
        thread.join(5)
        for transport in transports:
            transport.close()

    assert "refused the SSH credential" not in caught.value.message
    assert caught.value.message.endswith("did not complete the SSH handshake and login within 1 s "
                                         "(a slow or overloaded server or host; ssh_timeout_s sets this limit)")
