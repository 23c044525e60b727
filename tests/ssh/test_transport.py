"""The bot's SSH client against a real OpenSSH sshd with the engine as forced command."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import paramiko
import pytest

from bot.errors import (
    AuthRefusedError,
    ClientKeyError,
    EngineCrashedError,
    EngineTimeoutError,
    HostKeyMismatchError,
    HostUnreachableError,
    ProtocolMismatchError,
    RemoteEngineError,
)
from bot.inventory import PanelEntry
from bot.ssh_client import SSHEngineClient
from engine import __version__
from engine.protocol import Request
from tests.ssh.conftest import PanelFactory
from tests.support.sshd import SSHServer, free_port, make_key


def sha256_fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def changed(panel: PanelEntry, **fields: object) -> PanelEntry:
    """A validated copy of ``panel`` with ``fields`` replaced."""
    return PanelEntry.model_validate({**panel.model_dump(), **fields})


def hello() -> Request:
    return Request(v=1, id="r-hello", op="hello")


def script_command(source: str) -> str:
    """A forced command that runs a Python snippet instead of the engine (a broken engine)."""
    encoded = base64.b64encode(source.encode()).decode()
    program = f"import base64; exec(base64.b64decode('{encoded}'))"
    return shlex.join([sys.executable, "-u", "-c", program])


def test_hello_over_ssh_yields_hello_then_the_result(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """Key auth, pinned host key, forced command: the engine answers hello."""
    client = SSHEngineClient(ssh_panel(minimal_profile))

    events = list(client.run(hello()))

    assert [("hello", 0), ("result", 1)] == [(e["type"], e["seq"]) for e in events]
    assert sha256_fingerprint(sshd.host_key.public_line) == client.host_key_fingerprint
    assert __version__ == client.engine_version


def test_a_passphrase_protected_key_works(ssh_panel: PanelFactory, minimal_profile: Path) -> None:
    """The key file may be encrypted; its passphrase comes from the settings."""
    panel = ssh_panel(minimal_profile, passphrase="correct horse battery")

    events = list(SSHEngineClient(panel).run(hello()))

    assert "result" == events[-1]["type"]


def test_a_wrong_passphrase_is_a_client_key_error_that_hides_it(
    ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """A wrong passphrase is named as a key problem; the passphrase itself is not shown."""
    panel = ssh_panel(minimal_profile, passphrase="correct horse battery")
    wrong = changed(panel, key_passphrase="tr0ub4dor-wrong")

    with pytest.raises(ClientKeyError) as caught:
        list(SSHEngineClient(wrong).run(hello()))

    assert "tr0ub4dor" not in str(caught.value)
    assert "tr0ub4dor" not in repr(wrong)


def test_a_changed_host_key_is_refused_showing_the_presented_fingerprint(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path, tmp_path: Path
) -> None:
    """known_hosts pins another key: HostKeyMismatchError names both fingerprints."""
    panel = ssh_panel(minimal_profile)
    other = make_key(tmp_path / "other_host_key", comment="impostor")
    sshd.write_known_hosts(other.public_line)

    with pytest.raises(HostKeyMismatchError) as caught:
        list(SSHEngineClient(panel).run(hello()))

    message = str(caught.value)
    assert sha256_fingerprint(sshd.host_key.public_line) in message
    assert sha256_fingerprint(other.public_line) in message
    assert "Starting session" not in sshd.log_text()


def test_an_unknown_host_is_refused_showing_the_presented_fingerprint(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """No known_hosts entry for the host: refused (RejectPolicy), never trusted on first use."""
    panel = ssh_panel(minimal_profile)
    sshd.known_hosts.write_text("")

    with pytest.raises(HostKeyMismatchError) as caught:
        list(SSHEngineClient(panel).run(hello()))

    assert sha256_fingerprint(sshd.host_key.public_line) in str(caught.value)
    assert "" == sshd.known_hosts.read_text()


def test_a_key_the_host_does_not_know_is_refused(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path, tmp_path: Path
) -> None:
    """A client key missing from authorized_keys: AuthRefusedError."""
    panel = ssh_panel(minimal_profile)
    stranger = make_key(tmp_path / "stranger")

    with pytest.raises(AuthRefusedError):
        list(SSHEngineClient(changed(panel, key_file=stranger.private_path)).run(hello()))


def test_nothing_listening_is_host_unreachable(minimal_profile: Path, tmp_path: Path) -> None:
    """A closed port: HostUnreachableError, at once."""
    key = make_key(tmp_path / "k")
    panel = PanelEntry(
        name="nowhere", host="127.0.0.1", port=free_port(), user="root",
        key_file=key.private_path, known_hosts=tmp_path / "kh", connect_timeout_s=3,
    )  # fmt: skip
    (tmp_path / "kh").write_text("")

    started = time.monotonic()
    with pytest.raises(HostUnreachableError):
        list(SSHEngineClient(panel).run(hello()))
    assert time.monotonic() - started < 3


def raw_session(sshd: SSHServer, panel: PanelEntry) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.get_host_keys().load(str(sshd.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        sshd.host, port=sshd.port, username=sshd.user, key_filename=str(panel.key_file),
        look_for_keys=False, allow_agent=False, timeout=10,
    )  # fmt: skip
    return client


def read_all(channel: paramiko.Channel) -> list[dict[str, object]]:
    data = b""
    while chunk := channel.recv(65536):
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_another_command_still_only_reaches_the_engine(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path, tmp_path: Path
) -> None:
    """`ssh host 'touch X'`: the engine runs instead, X is never created."""
    marker = tmp_path / "pwned"
    client = raw_session(sshd, ssh_panel(minimal_profile))
    try:
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.exec_command(f"touch {marker}")
        channel.shutdown_write()
        events = read_all(channel)
    finally:
        client.close()

    assert ["hello", "error"] == [e["type"] for e in events]
    assert "bad_request" == events[-1]["code"]
    assert not marker.exists()


def test_a_shell_still_only_reaches_the_engine(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """A shell request runs the forced command; what is typed is read as a request line."""
    client = raw_session(sshd, ssh_panel(minimal_profile))
    try:
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.invoke_shell()
        channel.sendall(b"id; cat /etc/shadow\n")
        channel.shutdown_write()
        events = read_all(channel)
    finally:
        client.close()

    assert ["hello", "error"] == [e["type"] for e in events]


def test_a_subsystem_still_only_reaches_the_engine(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """Asking for sftp runs the engine, not an sftp server."""
    client = raw_session(sshd, ssh_panel(minimal_profile))
    try:
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.invoke_subsystem("sftp")
        channel.sendall(Request(v=1, id="r-sub", op="hello").to_line().encode())
        channel.shutdown_write()
        events = read_all(channel)
    finally:
        client.close()

    assert ["hello", "result"] == [e["type"] for e in events]


def test_port_forwarding_is_refused(
    sshd: SSHServer, ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """`restrict` forbids tunnels: a direct-tcpip channel is administratively prohibited."""
    client = raw_session(sshd, ssh_panel(minimal_profile))
    try:
        with pytest.raises(paramiko.ChannelException) as caught:
            client.get_transport().open_channel(  # type: ignore[union-attr]
                "direct-tcpip", ("127.0.0.1", 3306), ("127.0.0.1", 0), timeout=10
            )
    finally:
        client.close()

    assert paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED == caught.value.code


def test_a_remote_error_event_is_yielded_then_raised_with_its_code(
    ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """The engine's error event reaches the caller, then RemoteEngineError with its code."""
    client = SSHEngineClient(ssh_panel(minimal_profile))
    request = Request(v=1, id="r-x", op="attach", rotation_id="r-missing")
    seen = []

    with pytest.raises(RemoteEngineError) as caught:
        for event in client.run(request):
            seen.append(event["type"])

    assert ["hello", "error"] == seen
    assert "unknown_rotation" == caught.value.code


def test_an_engine_of_another_protocol_version_is_refused(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """hello announcing protocol 99 only: ProtocolMismatchError, nothing more is read."""
    hello_99 = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "9", "protocol": [99]})
    panel = ssh_panel(tmp_path / "unused.toml")
    pair = sshd.authorize("v99", script_command(f"print({hello_99!r})"))

    with pytest.raises(ProtocolMismatchError) as caught:
        list(SSHEngineClient(changed(panel, key_file=pair.private_path)).run(hello()))

    assert "99" in str(caught.value)


def test_output_that_is_not_an_engine_is_a_protocol_mismatch(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """A forced command that prints a shell banner is not an engine."""
    panel = ssh_panel(tmp_path / "unused.toml")
    pair = sshd.authorize("banner", "echo 'Welcome to Debian'")

    with pytest.raises(ProtocolMismatchError):
        list(SSHEngineClient(changed(panel, key_file=pair.private_path)).run(hello()))


def test_an_engine_that_dies_without_closing_is_engine_crashed(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """hello, then exit 3 with no closing event: EngineCrashedError naming the status."""
    greeting = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "0", "protocol": [1]})
    panel = ssh_panel(tmp_path / "unused.toml")
    pair = sshd.authorize("crash", script_command(f"print({greeting!r}); raise SystemExit(3)"))

    with pytest.raises(EngineCrashedError) as caught:
        list(SSHEngineClient(changed(panel, key_file=pair.private_path)).run(hello()))

    assert "status 3" in str(caught.value)


def test_a_silent_engine_times_out(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """No event within event_timeout_s: EngineTimeoutError, not a hang."""
    greeting = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "0", "protocol": [1]})
    panel = ssh_panel(tmp_path / "unused.toml", event_timeout_s=1)
    pair = sshd.authorize(
        "mute", script_command(f"import time; print({greeting!r}); time.sleep(8)")
    )

    started = time.monotonic()
    with pytest.raises(EngineTimeoutError):
        list(SSHEngineClient(changed(panel, key_file=pair.private_path)).run(hello()))
    assert time.monotonic() - started < 6


def test_a_chatty_stderr_never_stalls_the_stream(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """8 MB on stderr before the closing event (4x the channel window): still delivered."""
    greeting = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "0", "protocol": [1]})
    done = json.dumps({"type": "result", "id": "r", "seq": 1, "op": "hello", "ok": True})
    source = (
        f"import sys; print({greeting!r}, flush=True)\n"
        "for _ in range(8192): sys.stderr.write('x' * 1023 + '\\n')\n"
        f"sys.stderr.flush(); print({done!r}, flush=True)"
    )
    panel = ssh_panel(tmp_path / "unused.toml", event_timeout_s=30)
    pair = sshd.authorize("chatty", script_command(source))

    events = list(SSHEngineClient(changed(panel, key_file=pair.private_path)).run(hello()))

    assert ["hello", "result"] == [e["type"] for e in events]


def test_events_arrive_as_they_are_written_not_at_the_end(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path
) -> None:
    """The first event reaches the caller while the remote end is still working."""
    greeting = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "0", "protocol": [1]})
    done = json.dumps({"type": "result", "id": "r", "seq": 1, "op": "hello", "ok": True})
    source = f"import time; print({greeting!r}); time.sleep(2); print({done!r})"
    panel = ssh_panel(tmp_path / "unused.toml")
    pair = sshd.authorize("slow", script_command(source))
    client = SSHEngineClient(changed(panel, key_file=pair.private_path))

    arrivals = []
    started = time.monotonic()
    for event in client.run(hello()):
        arrivals.append((event["type"], time.monotonic() - started))

    assert ["hello", "result"] == [kind for kind, _ in arrivals]
    assert arrivals[1][1] - arrivals[0][1] > 1.5


def test_the_ssh_connection_is_dialled_with_nagle_off() -> None:
    """Small handshake packets go out at once instead of waiting for delayed ACKs."""
    import socket

    from bot.ssh_client import _dial

    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = _dial("127.0.0.1", server.getsockname()[1], 5.0)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()


def test_a_command_that_ends_before_the_request_is_sent_is_still_heard(
    sshd: SSHServer, ssh_panel: PanelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login shell that refuses (``nologin``) prints its line and exits at once. When that
    exit reaches the bot before the request is written (a race a loaded CI run hit), the
    line it printed is still what the caller hears, not a dead socket."""
    panel = ssh_panel(tmp_path / "unused.toml")
    refusal = "This account is currently not available."
    pair = sshd.authorize("nologin", f"echo '{refusal}'")
    exec_command = paramiko.Channel.exec_command

    def slow_to_send(channel: paramiko.Channel, command: str) -> None:
        exec_command(channel, command)
        deadline = time.monotonic() + 10
        while not channel.closed and time.monotonic() < deadline:  # the remote side is done
            time.sleep(0.01)
        assert channel.closed

    monkeypatch.setattr(paramiko.Channel, "exec_command", slow_to_send)
    with pytest.raises(ProtocolMismatchError) as caught:
        list(SSHEngineClient(changed(panel, key_file=pair.private_path, reconnect_attempts=0)).run(hello()))
    assert caught.value.first_line == refusal
