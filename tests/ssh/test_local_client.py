"""The local-subprocess engine client: the SSH client's interface without SSH."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.errors import (
    EngineCrashedError,
    EngineTimeoutError,
    ProtocolMismatchError,
    RemoteEngineError,
)
from bot.local_client import LocalEngineClient, redact
from bot.ssh_client import SSHEngineClient
from engine.protocol import Request
from tests.ssh.conftest import PanelFactory
from tests.support.panel import PanelSandbox
from tests.support.plans import named

GREETING = json.dumps({"type": "hello", "id": "r", "seq": 0, "engine": "0", "protocol": [1]})


def python_client(source: str, **kwargs: float) -> LocalEngineClient:
    return LocalEngineClient(
        Path("unused.toml"), command=[sys.executable, "-u", "-c", source], **kwargs
    )


def test_hello_through_a_child_process(minimal_profile: Path) -> None:
    """`python -u -m engine --profile P serve` as a child: hello, then the result."""
    client = LocalEngineClient(minimal_profile)

    events = list(client.run(Request(v=1, id="r-local", op="hello")))

    assert [("hello", 0), ("result", 1)] == [(e["type"], e["seq"]) for e in events]
    assert "local" == client.host_key_fingerprint


def test_local_and_ssh_clients_yield_the_same_events(
    ssh_panel: PanelFactory, minimal_profile: Path
) -> None:
    """One interface: for the same request both clients yield the same event shapes."""
    request = Request(v=1, id="r-same", op="attach", rotation_id="r-none")

    def shapes(client: LocalEngineClient | SSHEngineClient) -> list[tuple[str, int, str]]:
        out = []
        with pytest.raises(RemoteEngineError):
            for event in client.run(request):
                out.append((event["type"], event["seq"], event.get("code", "")))
        return out

    local = shapes(LocalEngineClient(minimal_profile))
    remote = shapes(SSHEngineClient(ssh_panel(minimal_profile)))

    assert [("hello", 0, ""), ("error", 1, "unknown_rotation")] == local == remote


def test_a_rotation_through_the_local_client(
    panel_factory: Callable[..., PanelSandbox],
) -> None:
    """rotate-key via a child process: verified result; PHP opens every value."""
    sandbox = panel_factory(rows=20)
    client = LocalEngineClient(sandbox.profile_path)
    request = Request(v=1, id="r-local-rot", op="rotate-key", requested_by="U1", approved_by=["U2"])

    events = list(client.run(named(client, request)))

    assert ("hello", "result") == (events[0]["type"], events[-1]["type"])
    assert sandbox.initial_key != sandbox.env_key()
    assert [] == sandbox.php_check_all()


def test_a_child_that_exits_without_closing_is_engine_crashed() -> None:
    """hello, then exit 5: EngineCrashedError naming the status."""
    with pytest.raises(EngineCrashedError) as caught:
        list(python_client(f"print({GREETING!r}); raise SystemExit(5)").run(
            Request(v=1, id="r", op="hello")
        ))  # fmt: skip

    assert "status 5" in str(caught.value)


def test_a_child_that_is_not_an_engine_is_a_protocol_mismatch() -> None:
    """A first line that is not hello: ProtocolMismatchError."""
    with pytest.raises(ProtocolMismatchError):
        list(python_client("print('Welcome')").run(Request(v=1, id="r", op="hello")))


def test_a_silent_child_times_out() -> None:
    """No event within event_timeout_s: EngineTimeoutError."""
    client = python_client(f"import time; print({GREETING!r}); time.sleep(30)", event_timeout_s=1)

    with pytest.raises(EngineTimeoutError):
        list(client.run(Request(v=1, id="r", op="hello")))


def test_a_chatty_stderr_does_not_stall_the_child() -> None:
    """8 MB of stderr (far beyond a pipe buffer) before the closing event."""
    done = json.dumps({"type": "result", "id": "r", "seq": 1, "op": "hello", "ok": True})
    source = (
        f"import sys; print({GREETING!r}, flush=True)\n"
        "for _ in range(8192): sys.stderr.write('x' * 1023 + '\\n')\n"
        f"sys.stderr.flush(); print({done!r}, flush=True)"
    )

    events = list(python_client(source, event_timeout_s=30).run(Request(v=1, id="r", op="hello")))

    assert ["hello", "result"] == [e["type"] for e in events]


def test_redact_hides_credentials_but_keeps_fingerprints_and_paths() -> None:
    """stderr lines are logged with key material and credentials hidden."""
    key = "9f" * 32
    line = f"DB_PASSWORD=s3cret key={key} fp 3a9c41d2e0f1a2b3 at /var/lib/myo/ev"

    expected = "DB_PASSWORD=[redacted] key=[redacted] fp 3a9c41d2e0f1a2b3 at /var/lib/myo/ev"
    assert expected == redact(line)
