"""``python -m engine --profile P serve``: the engine end of the bot protocol.

One JSON request line comes in on stdin; JSON Lines go out on stdout:
``hello`` (seq 0) first, then the operation's events, then exactly one
closing ``result`` or ``error``. Exit status 0 after a ``result``, 1 after an
``error``. Nothing else is ever written to stdout: unexpected failures are
logged to stderr (redacted) and answered with an ``internal`` error event.

The same entry point is an ``authorized_keys`` forced command; the client's
own command (``SSH_ORIGINAL_COMMAND``) is logged, never run.

A mutating operation (``rotate-key``, ``rotate-agent``, ``recover``) outlives
its connection: the process leaves the SSH session's process group, ignores
SIGHUP, carries on when stdout is gone (the Emitter drops a failing sink) and
records its events in the journal's event log. While it runs it holds an
exclusive lock on ``<journal>/events/<id>.running``, so that ``attach`` can
tell a rotation that is still running (perhaps stopped) from one whose
engine died.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import sys
from pathlib import Path

from engine import __version__, protocol
from engine.errors import EngineError
from engine.events import Emitter, EventLog, json_sink
from engine.protocol import redact

# Only what answering ``hello`` needs is imported above (the SSH forced command
# starts once per run, and its start-up is on every run's critical path);
# the profile, the database (PyMySQL) and the crypto come later.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any, TextIO

    from engine.profile import Profile

    RunOperation = Callable[[protocol.Request, Profile, Emitter], dict[str, Any]]

MUTATING_OPS = protocol.MUTATING_OPS
REQUEST_TIMEOUT_S = 60
ATTACH_POLL_S = 1.0


#: A request the engine refuses; ``code`` goes into the error event.
BadRequest = protocol.RequestError


def _log(stderr: IO[str], message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        stderr.write(f"engine serve: {redact(message)}\n")
        stderr.flush()


# --- reading and validating the request -------------------------------------------------


def read_request_line(stdin: TextIO) -> bytes:
    """At most ``MAX_REQUEST_BYTES`` (plus the newline) of the first line, as bytes."""
    limit = protocol.MAX_REQUEST_BYTES + 2
    buffer: IO[bytes] | None = getattr(stdin, "buffer", None)
    if buffer is not None:
        return buffer.readline(limit)
    return stdin.readline(limit).encode("utf-8", "surrogateescape")


def parse_request(raw: bytes) -> protocol.Request:
    """Validate one request line; raise ``BadRequest`` with a precise code."""
    return protocol.parse_request_line(raw)


def _safe_id(raw: bytes) -> str:
    """The request's id if it is a well-formed one, so that even errors carry it."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    value = data.get("id") if isinstance(data, dict) else None
    if isinstance(value, str) and re.fullmatch(protocol.ID_PATTERN, value):
        return value
    return ""


def _wait_for_input(stdin: TextIO) -> None:
    """Refuse to wait forever for a client that connects and sends nothing."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return  # an in-memory stream: nothing to wait for
    ready, _, _ = select.select([fd], [], [], REQUEST_TIMEOUT_S)
    if not ready:
        raise BadRequest("request_timeout", f"no request line within {REQUEST_TIMEOUT_S} s")


# --- surviving the session --------------------------------------------------------------


def detach_from_session() -> None:
    """Leave the SSH session's process group and ignore SIGHUP."""
    import signal

    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _events_dir(profile: Profile) -> Path:
    return profile.journal_dir / "events"


def _running_path(profile: Profile, rotation_id: str) -> Path:
    return _events_dir(profile) / f"{rotation_id}.running"


@contextlib.contextmanager
def running_marker(profile: Profile, rotation_id: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<id>.running`` for as long as the op runs."""
    from engine.journal import Journal

    Journal(profile.journal_dir).ensure_dir()  # refuses a symlinked or foreign journal folder
    path = _running_path(profile, rotation_id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def rotation_is_running(profile: Profile, rotation_id: str) -> bool:
    """True while some engine process holds the rotation's ``.running`` lock."""
    try:
        fd = os.open(_running_path(profile, rotation_id), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --- operations -------------------------------------------------------------------------


def attach(
    request: protocol.Request, profile: Profile, stdout: TextIO, emitter: Emitter
) -> dict[str, Any]:
    """Replay a rotation's logged events after ``after_seq``, then follow the live ones.

    Returns the closing event. Replayed events are written as they were logged,
    with their own seq. If the engine running the rotation is gone without a
    closing event, a ``rotation_interrupted`` error closes the stream.
    """
    rotation_id = request.rotation_id or request.id
    log = EventLog(_events_dir(profile), rotation_id)
    if not log.exists() and not rotation_is_running(profile, rotation_id):
        raise BadRequest("unknown_rotation", f"no rotation {rotation_id} on this host")
    write = json_sink(stdout)
    last = request.after_seq
    while True:
        running = rotation_is_running(profile, rotation_id)
        follow = ATTACH_POLL_S if running else None
        for event in log.replay(last, follow=running, timeout_s=follow):
            last = max(last, int(event.get("seq", 0)))
            with contextlib.suppress(OSError, ValueError):
                write(event)
            if event.get("type") in protocol.CLOSING_TYPES:
                return event
        if not running:
            break
    closing = {
        "id": rotation_id,
        "seq": last + 1,
        "ts": protocol.now_ms(),
        **protocol.error_event(
            "rotation_interrupted",
            f"the engine running {rotation_id} stopped before finishing; run recover",
            rolled_back=None,
        ),
    }
    with contextlib.suppress(OSError, ValueError):
        write(closing)
    emitter.closed = True
    return closing


def is_mutating(request: protocol.Request) -> bool:
    """Operations that change the panel, and so must outlive their connection."""
    return request.op in MUTATING_OPS and not request.dry_run


def _engine_core() -> RunOperation:
    """``engine.ops.run_operation``, imported only when an operation needs it."""
    import importlib

    try:
        module = importlib.import_module("engine.ops")
    except ModuleNotFoundError as exc:
        if exc.name != "engine.ops":
            raise
        raise BadRequest("unsupported_operation", "this engine has no operations yet") from None
    run: RunOperation = module.run_operation
    return run


def _hello(request: protocol.Request, profile_path: Path, stdout: TextIO, emitter: Emitter) -> dict[str, Any]:
    """Answered before the profile is read: which engine, which protocol versions."""
    data = {"engine": __version__, "protocol": list(protocol.SUPPORTED_VERSIONS)}
    return emitter.emit(protocol.result_event(request.op, **data))


def _attach(request: protocol.Request, profile_path: Path, stdout: TextIO, emitter: Emitter) -> dict[str, Any]:
    from engine.profile import load_profile

    return attach(request, load_profile(profile_path), stdout, emitter)


#: The operations ``serve`` answers itself (the rest are ``engine.ops``'s): ``hello`` before
#: anything heavy is imported, ``attach`` by following another run's event log.
ANSWERED_HERE: dict[str, Callable[[protocol.Request, Path, TextIO, Emitter], dict[str, Any]]] = {
    "hello": _hello,
    "attach": _attach,
}


def dispatch(
    request: protocol.Request, profile_path: Path, stdout: TextIO, emitter: Emitter
) -> dict[str, Any]:
    """Run one validated request; return the closing event it produced."""
    own = ANSWERED_HERE.get(request.op)
    if own is not None:
        return own(request, profile_path, stdout, emitter)
    from engine.profile import load_profile  # only once an operation needs it

    profile = load_profile(profile_path)
    run_operation = _engine_core()
    if is_mutating(request):
        detach_from_session()
        with running_marker(profile, request.id):
            data = run_operation(request, profile, emitter)
            return emitter.emit(protocol.result_event(request.op, **data))
    data = run_operation(request, profile, emitter)
    return emitter.emit(protocol.result_event(request.op, **data))


def serve(profile_path: Path, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Answer one request; return the exit status (0 result, 1 error)."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    if original is not None:
        _log(stderr, f"ignoring the client's command {original[:200]!r} (forced command)")
    raw = b""
    request: protocol.Request | None = None
    refusal: BadRequest | None = None
    try:
        _wait_for_input(stdin)
        raw = read_request_line(stdin)
        request = parse_request(raw)
    except BadRequest as exc:
        refusal = exc
    emitter = Emitter(request.id if request else _safe_id(raw), [json_sink(stdout)], first_seq=0)
    emitter.emit(protocol.hello_event(__version__))
    if request is None:
        assert refusal is not None
        _log(stderr, f"refused request: {refusal.code}")
        emitter.emit(protocol.error_event(refusal.code, refusal.message))
        return 1
    try:
        closing = dispatch(request, profile_path, stdout, emitter)
    except BadRequest as exc:
        closing = emitter.emit(protocol.error_event(exc.code, exc.message))
    except EngineError as exc:
        closing = emitter.emit(protocol.error_event_of(exc))
    except Exception as exc:
        import traceback

        _log(stderr, "unexpected failure:\n" + "".join(traceback.format_exception(exc)))
        closing = emitter.emit(
            protocol.error_event(
                "internal",
                f"the engine failed unexpectedly ({type(exc).__name__}); see its log",
            )
        )
    return 0 if closing.get("type") == "result" else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.serve --profile P``, until the CLI wires ``serve``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.serve")
    parser.add_argument("--profile", required=True, type=Path)
    args = parser.parse_args(argv)
    return serve(args.profile, sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
