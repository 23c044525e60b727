"""A real key rotation through OpenSSH, a real MariaDB and PHP, including a cut connection."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.errors import ConnectionLostError
from bot.inventory import PanelEntry
from bot.ssh_client import SSHEngineClient
from engine import __version__
from engine.protocol import KEY_STEPS, Request, fingerprint
from tests.ssh.conftest import PanelFactory
from tests.support.panel import PanelSandbox
from tests.support.plans import plan_fields
from tests.support.procs import wait_for_stopped, wait_until
from tests.support.sshd import SSHServer, descendants, parent_pid, process_state

pytestmark = pytest.mark.slow


def rotate_request(rotation_id: str, sandbox: PanelSandbox) -> Request:
    """A run request naming the plan as the engine computes it now (asked locally, so
    that the SSH sessions a test counts are the run's own)."""
    return Request(
        v=1, id=rotation_id, op="rotate-key",
        requested_by="U-ALICE", approved_by=["U-BOB"], reason="ssh test",
        **plan_fields(sandbox.profile_path),
    )  # fmt: skip


def is_engine_for(sandbox: PanelSandbox) -> Callable[[list[str]], bool]:
    """Matches this sandbox's `python -u -m engine --profile P serve` process."""
    profile = str(sandbox.profile_path)
    return lambda argv: "engine" in argv and "serve" in argv and profile in argv


def read_in_background(stream: Iterator[dict[str, Any]]) -> tuple[threading.Thread, list[Any]]:
    """Consume ``stream`` on a thread; returns (thread, list of events then any exception)."""
    seen: list[Any] = []

    def read() -> None:
        try:
            for event in stream:
                seen.append(event)
        except BaseException as exc:
            seen.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, seen


@pytest.fixture
def sandbox(panel_factory: Callable[..., PanelSandbox]) -> PanelSandbox:
    return panel_factory(rows=200)


def test_a_rotate_key_through_ssh_streams_its_steps_and_verifies(
    ssh_panel: PanelFactory, sandbox: PanelSandbox
) -> None:
    """rotate-key over SSH: hello, the steps in order, the first step before the end,
    a verified DONE; PHP opens every value under the new key in .env."""
    old_key = sandbox.env_key()
    client = SSHEngineClient(ssh_panel(sandbox.profile_path))
    arrivals: list[tuple[dict[str, Any], float]] = []

    for event in client.run(rotate_request("r-ssh-1", sandbox)):
        arrivals.append((event, time.monotonic()))

    events = [e for e, _ in arrivals]
    first_step_at = next(t for e, t in arrivals if e["type"] == "step")
    assert "hello" == events[0]["type"]
    assert ("result", True) == (events[-1]["type"], events[-1]["ok"])
    assert list(range(len(events))) == [e["seq"] for e in events]
    assert first_step_at < arrivals[-1][1]
    ok_steps = list(
        dict.fromkeys(e["name"] for e in events if e["type"] == "step" and e["state"] == "ok")
    )
    assert [s for s in KEY_STEPS if s in ok_steps] == ok_steps
    assert old_key != sandbox.env_key()
    assert [] == sandbox.php_check_all()


def test_the_first_step_arrives_while_the_rotation_is_still_running(
    ssh_panel: PanelFactory, sandbox: PanelSandbox
) -> None:
    """Events are streamed, not delivered at the end: the engine is stopped at a fault
    point after the first steps, and the caller has those steps already."""
    panel = ssh_panel(sandbox.profile_path, env={"MYOSICAM_ENGINE_FAULT": "stop@state:STAGED"})
    reader, seen = read_in_background(SSHEngineClient(panel).run(rotate_request("r-ssh-stream", sandbox)))
    pid = wait_for_stopped(is_engine_for(sandbox), timeout=60)
    try:
        wait_until(lambda: any(e["type"] == "step" for e in seen), 30, what="a step event")
        assert not any(e["type"] in ("result", "error") for e in seen)
    finally:
        os.kill(pid, signal.SIGCONT)
        reader.join(120)

    assert "result" == seen[-1]["type"]
    assert [] == sandbox.php_check_all()


def cut_connection_of(engine_pid: int, sshd: SSHServer) -> None:
    """SIGKILL the sshd session processes above the engine: the connection drops."""
    chain = []
    ancestor = parent_pid(engine_pid)
    while ancestor and ancestor not in (1, sshd.process.pid):
        chain.append(ancestor)
        ancestor = parent_pid(ancestor)
    sessions = [p for p in sshd.session_pids() if engine_pid in descendants(p)]
    assert chain and set(sessions) <= set(chain), "the engine does not run under this sshd"
    for pid in chain:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stopped_engines() -> Iterator[list[int]]:
    """Engines a test stopped; continued at teardown whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if process_state(pid) == "T":
            os.kill(pid, signal.SIGCONT)


def test_a_cut_connection_mid_reencryption_reattaches_and_sees_every_event_once(
    sshd: SSHServer,
    ssh_panel: PanelFactory,
    sandbox: PanelSandbox,
    stopped_engines: list[int],
) -> None:
    """The SSH session is killed while the engine is inside re-encryption. The engine
    finishes anyway; the client re-attaches; the caller sees each seq once, the steps
    before and after the cut, and the verified result; PHP opens every value."""
    old_key = sandbox.env_key()
    panel = ssh_panel(
        sandbox.profile_path,
        env={"MYOSICAM_ENGINE_FAULT": "stop@reencrypt:batch:1"},
        reconnect_attempts=10,
        reconnect_backoff_s=0.2,
    )
    reader, seen = read_in_background(SSHEngineClient(panel).run(rotate_request("r-ssh-cut", sandbox)))
    engine = wait_for_stopped(is_engine_for(sandbox), timeout=60)
    stopped_engines.append(engine)
    seq_before_cut = wait_until(lambda: max((e["seq"] for e in seen), default=0), 30)

    cut_connection_of(engine, sshd)
    wait_until(lambda: sshd.log_text().count("Accepted publickey") >= 2, 60, what="a re-attach")
    os.kill(engine, signal.SIGCONT)
    reader.join(180)

    assert not [e for e in seen if isinstance(e, BaseException)]
    seqs = [e["seq"] for e in seen]
    assert list(range(len(seen))) == seqs
    assert ("result", True) == (seen[-1]["type"], seen[-1]["ok"])
    assert seq_before_cut < seqs[-1]
    assert 1 == sum(1 for e in seen if e["type"] == "hello")
    assert old_key != sandbox.env_key()
    assert [] == sandbox.php_check_all()


def test_when_the_host_stays_unreachable_reattaching_gives_up_but_the_rotation_finishes(
    sshd: SSHServer,
    ssh_panel: PanelFactory,
    sandbox: PanelSandbox,
    stopped_engines: list[int],
) -> None:
    """Connection cut and sshd gone: after the configured attempts the caller gets
    ConnectionLostError; the engine on the host still runs the rotation to DONE."""
    panel = ssh_panel(
        sandbox.profile_path,
        env={"MYOSICAM_ENGINE_FAULT": "stop@reencrypt:batch:1"},
        reconnect_attempts=2,
        reconnect_backoff_s=0.1,
    )
    reader, seen = read_in_background(SSHEngineClient(panel).run(rotate_request("r-ssh-gone", sandbox)))
    engine = wait_for_stopped(is_engine_for(sandbox), timeout=60)
    stopped_engines.append(engine)

    sshd.process.kill()
    sshd.process.wait()
    cut_connection_of(engine, sshd)
    reader.join(60)
    os.kill(engine, signal.SIGCONT)
    wait_until(lambda: process_state(engine) in (None, "Z"), 120, what="the engine to finish")

    assert isinstance(seen[-1], ConnectionLostError)
    assert "r-ssh-gone" in str(seen[-1])
    assert [] == sandbox.php_check_all()
    assert sandbox.initial_key != sandbox.env_key()


def test_plan_over_ssh_is_read_only_and_says_what_a_rotation_would_do(
    ssh_panel: PanelFactory, sandbox: PanelSandbox
) -> None:
    """plan: per-column counts, layout, current key fingerprint and engine version;
    .env and every stored value unchanged."""
    env_before = sandbox.env_path.read_bytes()
    stored_before = sandbox.stored_values()
    client = SSHEngineClient(ssh_panel(sandbox.profile_path))

    result = list(client.run(Request(v=1, id="r-plan", op="plan")))[-1]

    stored_secrets = sum(1 for p in sandbox.plaintexts.values() if p is not None)
    expected = (stored_secrets, "iv12_tag_ct/hex", fingerprint(sandbox.initial_key), __version__)
    actual = (sum(result["columns"].values()), result["scheme"], result["key_fingerprint"],
              result["engine_version"])  # fmt: skip
    assert expected == actual
    assert env_before == sandbox.env_path.read_bytes()
    assert stored_before == sandbox.stored_values()


@pytest.fixture
def sandbox_panel(ssh_panel: PanelFactory, sandbox: PanelSandbox) -> PanelEntry:
    """One authorized key serving the sandbox (shared by all examples of a fuzz test)."""
    return ssh_panel(sandbox.profile_path)


def send_raw(sshd: SSHServer, key_file: str, line: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Send raw bytes to the forced command; return (decoded events, raw stdout)."""
    client = paramiko.SSHClient()
    client.get_host_keys().load(str(sshd.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(sshd.host, port=sshd.port, username=sshd.user, key_filename=key_file,
                   look_for_keys=False, allow_agent=False, timeout=10)  # fmt: skip
    try:
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.exec_command("engine serve")
        channel.sendall(line)
        channel.shutdown_write()
        raw = b""
        while chunk := channel.recv(65536):
            raw += chunk
    finally:
        client.close()
    return [json.loads(x) for x in raw.splitlines()], raw


_hostile_over_ssh = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["v", "id", "op", "dry_run", "rotation_id", "after_seq", "x"]),
        st.none() | st.integers() | st.text(max_size=12) | st.booleans(),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode() + b"\n"),
    st.sampled_from([b"rotate-key\n", b'{"v":1,"id":"r","op":"rotate-key","dry_run":0}\n']),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=_hostile_over_ssh)
def test_hostile_requests_over_ssh_get_one_error_and_change_nothing(
    sshd: SSHServer, sandbox_panel: PanelEntry, sandbox: PanelSandbox, line: bytes
) -> None:
    """Fuzzed request lines through sshd to the engine of a real panel: hello then one
    error, no traceback, .env and every stored value untouched, PHP still opens all."""
    assume(not _accepted(line))
    env_before, stored_before = sandbox.env_path.read_bytes(), sandbox.stored_values()

    events, raw = send_raw(sshd, str(sandbox_panel.key_file), line)

    assert ["hello", "error"] == [e["type"] for e in events]
    assert b"Traceback" not in raw
    assert (env_before, stored_before) == (sandbox.env_path.read_bytes(), sandbox.stored_values())
    assert [] == sandbox.php_check_all()


def _accepted(line: bytes) -> bool:
    from engine.serve import BadRequest, parse_request

    try:
        parse_request(line)
    except BadRequest:
        return False
    return True
