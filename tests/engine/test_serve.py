"""``engine serve``: one request line in, JSON Lines out, exactly one closing event."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine import __version__, protocol, serve
from engine.errors import LockedError
from engine.events import Emitter, EventLog
from engine.profile import Profile, load_profile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    root = tmp_path / "panel"
    (root / "config").mkdir(parents=True)
    (root / "config" / ".env").write_text("APP=1\n")
    path = tmp_path / "profile.toml"
    path.write_text(f'panel_root = "{root}"\njournal_dir = "{tmp_path / "journal"}"\nescrow = "none"\n')
    return path


def run_serve(profile_path: Path, line: bytes) -> tuple[int, list[dict[str, Any]], str, str]:
    """serve() in-process; returns (status, events, raw stdout, stderr)."""
    stdin = io.TextIOWrapper(io.BytesIO(line), encoding="utf-8")
    stdout, stderr = io.StringIO(), io.StringIO()
    status = serve.serve(profile_path, stdin, stdout, stderr)  # type: ignore[arg-type]
    raw = stdout.getvalue()
    return status, [json.loads(x) for x in raw.splitlines()], raw, stderr.getvalue()


def request_line(**fields: Any) -> bytes:
    return (json.dumps({"v": 1, "id": "r-1", **fields}) + "\n").encode()


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# --- the happy path --------------------------------------------------------------------


def test_hello_comes_first_with_seq_0_then_exactly_one_result(profile_path: Path) -> None:
    """A hello request: the hello event (seq 0), then one closing result; exit 0."""
    status, events, _, _ = run_serve(profile_path, request_line(op="hello"))

    expected = [
        ("hello", 0, "r-1", __version__, [1]),
        ("result", 1, "r-1", __version__, [1]),
    ]
    actual = [(e["type"], e["seq"], e["id"], e["engine"], e["protocol"]) for e in events]
    assert expected == actual
    assert 0 == status


# --- refused requests --------------------------------------------------------------------

REFUSALS = [
    (b"not json\n", "bad_request"),
    (b"[1, 2, 3]\n", "bad_request"),
    (b"\n", "bad_request"),
    (b"", "bad_request"),
    (b'{"v": 1, "id": "r-1", "op": "hello"\n', "bad_request"),
    (b"\xff\xfe{}\n", "bad_request"),
    (request_line(op="shell"), "unknown_operation"),
    (request_line(op="hello", v=2), "unsupported_version"),
    (request_line(op="hello", extra="x"), "bad_request"),
    (request_line(op="hello", dry_run="yes"), "bad_request"),
    (request_line(op="hello", id="../../etc/passwd"), "bad_request"),
    (request_line(op="attach", after_seq=-1), "bad_request"),
    (request_line(op="rotate-key"), "plan_required"),
    (request_line(op="rotate-key", plan_hash="ab" * 32), "plan_required"),
    (request_line(op="rotate-agent", plan_hash="ab" * 32, all_agents=True), "plan_required"),
    (request_line(op="rotate-key", plan_hash="not-a-hash", key_fingerprint="cd" * 8), "bad_request"),
    (b'{"v": 1, "id": "r-1", "op": "hello", "reason": "' + b"x" * 20_000 + b'"}\n',
     "request_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "code"), REFUSALS)
def test_a_refused_request_gets_hello_then_one_error_and_exit_1(
    profile_path: Path, line: bytes, code: str
) -> None:
    """Malformed, unknown, oversized or wrong-version requests: one clean error event."""
    status, events, _, _ = run_serve(profile_path, line)

    assert ["hello", "error"] == [e["type"] for e in events]
    assert code == events[1]["code"]
    assert (False, None) == (events[1]["retryable"], events[1]["rolled_back"])
    assert 1 == status


def test_a_refusal_never_echoes_the_request(profile_path: Path) -> None:
    """Values from a refused request (which might be anything) are not copied into events."""
    line = request_line(op="hello", reason=123, requested_by="hunter2-secret-value")
    _, events, raw, stderr = run_serve(profile_path, line)

    assert "bad_request" == events[-1]["code"]
    assert "hunter2" not in raw + stderr


def test_an_unknown_version_still_says_which_versions_the_engine_speaks(
    profile_path: Path,
) -> None:
    """The hello carries the engine's versions even when the request's version is refused."""
    _, events, _, _ = run_serve(profile_path, request_line(op="hello", v=7))

    assert ([1], "unsupported_version") == (events[0]["protocol"], events[1]["code"])


# --- hostile request lines, fuzzed -------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_fields = st.sampled_from(
    ["v", "id", "op", "dry_run", "approved_by", "after_seq", "rotation_id", "reason", "agents"]
)
_near_requests = st.dictionaries(_fields | st.text(max_size=8), _json_values, max_size=6).map(
    lambda d: json.dumps(d).encode() + b"\n"
)
_hostile_lines = st.one_of(
    st.binary(max_size=300),
    _near_requests,
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * n + b"\n"),
    st.integers(0, 40).map(lambda n: b'{"v":1,"id":"r-1","op":"hello","x":"' + b"A" * (n * 1000)),
)


def _would_be_accepted(line: bytes) -> bool:
    try:
        serve.parse_request(line)
    except serve.BadRequest:
        return False
    return True


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzzpanel")
    (root / "config").mkdir()
    (root / "config" / ".env").write_text("PANEL_ENCRYPTION_KEY=" + "ab" * 32 + "\n")
    (root / "profile.toml").write_text(
        f'panel_root = "{root}"\njournal_dir = "{root / "journal"}"\nescrow = "none"\n'
    )
    return root


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=_hostile_lines)
def test_fuzzed_hostile_lines_get_one_clean_error_and_change_nothing(
    fuzz_root: Path, line: bytes
) -> None:
    """Whatever arrives on stdin: JSON Lines only, hello then exactly one error, exit 1,
    no traceback, and the panel's files and journal untouched."""
    assume(not _would_be_accepted(line))
    root = fuzz_root
    before = tree_digest(root)

    status, events, raw, _ = run_serve(root / "profile.toml", line)

    assert ["hello", "error"] == [e["type"] for e in events]
    assert [0, 1] == [e["seq"] for e in events]
    assert "Traceback" not in raw
    assert 1 == status
    assert before == tree_digest(root)


HOSTILE_SAMPLES = [
    b"\x00\x01\x02\n",
    b"[" * 100_000 + b"\n",
    b'{"v": 1, "id": "r-1", "op": "rotate-key", "dry_run": "false"}\n',
    b'{"v": 1e400, "id": "r-1", "op": "hello"}\n',
    b'{"v": 1, "id": "r-1", "op": "hello", "after_seq": ' + b"9" * 5000 + b"}\n",
    b"A" * 100_000,
]


@pytest.mark.parametrize("line", HOSTILE_SAMPLES)
def test_the_real_process_answers_hostile_lines_cleanly(profile_path: Path, line: bytes) -> None:
    """`python -m engine --profile P serve` as a process: JSON Lines only, exit status 1."""
    proc = subprocess.run(
        [sys.executable, "-u", "-m", "engine", "--profile", str(profile_path), "serve"],
        input=line,
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )

    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert ["hello", "error"] == [e["type"] for e in events]
    assert b"Traceback" not in proc.stdout + proc.stderr
    assert 1 == proc.returncode


# --- forced command -------------------------------------------------------------------------


def test_ssh_original_command_is_logged_and_never_run(profile_path: Path, tmp_path: Path) -> None:
    """The client's own command is only logged; the engine answers the request line."""
    marker = tmp_path / "pwned"
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": f"touch {marker}"}
    proc = subprocess.run(
        [sys.executable, "-u", "-m", "engine", "--profile", str(profile_path), "serve"],
        input=request_line(op="hello"),
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )

    assert ["hello", "result"] == [json.loads(x)["type"] for x in proc.stdout.splitlines()]
    assert f"touch {marker}" in proc.stderr.decode()
    assert not marker.exists()


# --- failures inside an operation --------------------------------------------------------


def fake_core(monkeypatch: pytest.MonkeyPatch, run: Callable[..., dict[str, Any]]) -> None:
    monkeypatch.setattr(serve, "_engine_core", lambda: run)


def test_an_engine_error_becomes_the_closing_error_event(
    profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EngineError -> error event with its code, retryable and rolled_back; exit 1."""

    def locked(request: protocol.Request, profile: Profile, emitter: Emitter) -> dict[str, Any]:
        emitter.step("preflight", "started")
        raise LockedError("another engine run holds the panel's lock")

    fake_core(monkeypatch, locked)
    status, events, _, _ = run_serve(profile_path, request_line(op="plan"))

    closing = events[-1]
    assert ["hello", "step", "error"] == [e["type"] for e in events]
    assert ("locked", True, None) == (closing["code"], closing["retryable"], closing["rolled_back"])
    assert 1 == status


def test_an_unexpected_exception_is_logged_redacted_and_answered_internal(
    profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traceback on stdout; the event says "internal"; stderr has the redacted trace."""
    key = "c0ffee" * 11

    def broken(request: protocol.Request, profile: Profile, emitter: Emitter) -> dict[str, Any]:
        raise RuntimeError(f"boom PANEL_ENCRYPTION_KEY={key}")

    fake_core(monkeypatch, broken)
    status, events, raw, stderr = run_serve(profile_path, request_line(op="plan"))

    assert ("error", "internal") == (events[-1]["type"], events[-1]["code"])
    assert "Traceback" not in raw and "Traceback" in stderr
    assert key not in raw + stderr
    assert 1 == status


def test_a_mutating_op_carries_on_and_logs_its_events_when_stdout_breaks(
    profile_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout gone after hello: the op still runs to its end and the log holds every event."""
    monkeypatch.setattr(serve, "detach_from_session", lambda: None)  # not the test runner's
    profile = load_profile(profile_path)
    finished = threading.Event()

    def rotate(request: protocol.Request, prof: Profile, emitter: Emitter) -> dict[str, Any]:
        emitter.add_sink(EventLog(prof.journal_dir / "events", request.id).sink())
        for name in protocol.KEY_STEPS:
            emitter.step(name, "ok")
        finished.set()
        return {"state": "DONE"}

    class BrokenAfterHello(io.StringIO):
        def write(self, text: str) -> int:
            if '"hello"' not in text:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    fake_core(monkeypatch, rotate)
    line = request_line(op="rotate-key", plan_hash="ab" * 32, key_fingerprint="cd" * 8)
    stdin = io.TextIOWrapper(io.BytesIO(line), encoding="utf-8")
    stdout = BrokenAfterHello()
    status = serve.serve(profile_path, stdin, stdout, io.StringIO())  # type: ignore[arg-type]

    logged = list(EventLog(profile.journal_dir / "events", "r-1").replay(0, follow=False))
    assert finished.is_set()
    assert list(range(1, 11)) == [e["seq"] for e in logged]
    assert ("result", "DONE") == (logged[-1]["type"], logged[-1]["state"])
    assert 0 == status


# --- attach ------------------------------------------------------------------------------


def write_log(profile: Profile, rotation_id: str, events: list[dict[str, Any]]) -> Emitter:
    emitter = Emitter(rotation_id, [EventLog(profile.journal_dir / "events", rotation_id).sink()])
    for event in events:
        emitter.emit(event)
    return emitter


def test_attach_replays_the_events_after_a_seq_then_the_closing_one(profile_path: Path) -> None:
    """attach after_seq=2: the logged events 3.. as they were logged, result last."""
    profile = load_profile(profile_path)
    steps = [protocol.step_event(name, "ok") for name in protocol.KEY_STEPS[:4]]
    write_log(profile, "r-9", [*steps, protocol.result_event("rotate-key", state="DONE")])

    status, events, _, _ = run_serve(
        profile_path, request_line(op="attach", rotation_id="r-9", after_seq=2)
    )

    expected = [("hello", 0), ("step", 3), ("step", 4), ("result", 5)]
    assert expected == [(e["type"], e["seq"]) for e in events]
    assert {"r-9"} == {e["id"] for e in events[1:]}
    assert 0 == status


def test_attach_to_an_unknown_rotation_is_an_error(profile_path: Path) -> None:
    """No log and no running engine for that id: error unknown_rotation."""
    status, events, _, _ = run_serve(profile_path, request_line(op="attach", rotation_id="r-404"))

    assert ["hello", "error"] == [e["type"] for e in events]
    assert "unknown_rotation" == events[-1]["code"]
    assert 1 == status


def test_attach_to_a_rotation_whose_engine_died_reports_it_interrupted(
    profile_path: Path,
) -> None:
    """A log without a closing event and no engine holding it: rotation_interrupted."""
    profile = load_profile(profile_path)
    write_log(profile, "r-dead", [protocol.step_event("preflight", "ok")])

    status, events, _, _ = run_serve(profile_path, request_line(op="attach", rotation_id="r-dead"))

    assert [("hello", 0), ("step", 1), ("error", 2)] == [(e["type"], e["seq"]) for e in events]
    assert "rotation_interrupted" == events[-1]["code"]
    assert 1 == status


def test_attach_follows_a_running_rotation_until_it_closes(profile_path: Path) -> None:
    """While an engine holds the rotation, attach waits for and relays its new events."""
    profile = load_profile(profile_path)
    attached = threading.Event()
    with serve.running_marker(profile, "r-live"):
        emitter = write_log(profile, "r-live", [protocol.step_event("preflight", "ok")])

        def finish_later() -> None:
            attached.wait(30)
            emitter.emit(protocol.step_event("stage", "ok"))
            emitter.emit(protocol.result_event("rotate-key", state="DONE"))

        writer = threading.Thread(target=finish_later)
        writer.start()
        stdin = io.TextIOWrapper(
            io.BytesIO(request_line(op="attach", rotation_id="r-live")), encoding="utf-8"
        )

        class Out(io.StringIO):
            def write(self, text: str) -> int:
                if '"preflight"' in text:
                    attached.set()
                return super().write(text)

        stdout = Out()
        status = serve.serve(profile_path, stdin, stdout, io.StringIO())  # type: ignore[arg-type]
        writer.join()

    events = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert [("hello", 0), ("step", 1), ("step", 2), ("result", 3)] == [
        (e["type"], e["seq"]) for e in events
    ]
    assert 0 == status


def test_redact_hides_keys_tokens_and_long_hex() -> None:
    """What the engine logs to stderr never carries key material."""
    text = f"PANEL_ENCRYPTION_KEY={'ab' * 32} token: abc123 fp 0123456789abcdef"

    assert "PANEL_ENCRYPTION_KEY=[redacted] token: [redacted] fp 0123456789abcdef" == serve.redact(
        text
    )


def _imports(argv: list[str], stdin: bytes) -> tuple[set[str], bytes]:
    """The modules ``python -X importtime ARGV`` imports, and its stdout."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], input=stdin, capture_output=True, cwd=REPO,
        timeout=60,
    )  # fmt: skip
    names = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    return names, proc.stdout


def test_serve_answers_hello_without_the_heavy_imports(profile_path: Path) -> None:
    """Start-up is on every run's critical path: `serve` answers a hello request having
    imported none of pydantic, PyMySQL, cryptography, paramiko or typing (each costs more
    than the whole answer), beyond what the bare interpreter imports on this machine;
    they load only when an operation needs them."""
    bare, _ = _imports(["-c", "pass"], b"")
    imported, stdout = _imports(
        ["-m", "engine", "--profile", str(profile_path), "serve"], request_line(op="hello")
    )

    heavy = {"pydantic", "pymysql", "cryptography", "paramiko", "typing", "engine.profile"}
    assert ["hello", "result"] == [json.loads(x)["type"] for x in stdout.splitlines()]
    assert "engine.serve" in imported
    assert set() == (heavy - bare) & imported
