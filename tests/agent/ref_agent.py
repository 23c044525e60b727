#!/usr/bin/env python3
"""The reference MyOsicam agent: registers with an install token, then heartbeats.

Standalone (standard library only): the bootstrap copies it onto the agent
server, where nothing of this repository is installed, and starts it as::

    agent.py run --panel URL --agent-id N --state-dir DIR [--heartbeat-s S]
                 [--register-timeout-s T] [--run-id ID] [--scheme reference|nodes]
                 [--brick]                                  < install token on stdin
    agent.py check [--panel URL] [--agent-id N] [--scheme S]   < agent token on stdin

``--scheme`` picks the panel's dialect: ``reference`` (bot/fakes/panel/php/panel/agents.php)
or ``nodes`` (nodes.php: ``/api/nodes/enrol``, UUID secrets, ``Authorization: Node``).
``--brick`` (tests only) keeps a wrong token after registering, as a botched
config write would: the agent then runs, but every heartbeat is refused.
``check`` answers whether the panel accepts the token on stdin, as the
engine's ``old_token_check_command`` expects: exit 0 accepted, 1 refused, 2 no
answer (``--panel``/``--agent-id`` default to ``ROTATOR_PANEL_URL``/``ROTATOR_AGENT_ID``).

1. Reads the single-use install token from stdin (never argv, never a file).
2. Registers: ``POST URL/agents/register``; retries with backoff while the panel
   does not answer, gives up at once when the panel refuses the token.
3. Keeps the new agent token in ``DIR/agent.token`` (0600, written atomically).
4. Replaces the previous agent: the process named in ``DIR/agent.pid`` is
   stopped only *after* this one registered, so a failed registration leaves
   the old agent (and its still valid token) running.
5. Heartbeats every ``S`` seconds, signed as bot/fakes/panel/php/panel/agents.php checks.

Progress goes to ``DIR/status.json`` (``{"run_id", "state": "registering" |
"registered" | "refused" | "gave_up", "detail"}``), which the bootstrap
watches. The log never holds a token.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEARTBEAT_PATH = "/agents/heartbeat"


def canonical(agent_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The string the panel's heartbeat signature covers (see agents.php)."""
    parts = ["POST", HEARTBEAT_PATH, agent_id, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    return "\n".join(parts).encode()


def signed_headers(agent_id: int | str, token: str, body: bytes, *, timestamp: int | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    """X-Agent-Id, X-Timestamp, X-Nonce and X-Signature for one heartbeat."""
    agent = str(agent_id)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    once = nonce or secrets.token_urlsafe(18)
    signature = hmac.new(token.encode(), canonical(agent, ts, once, body), hashlib.sha256).hexdigest()
    return {"X-Agent-Id": agent, "X-Timestamp": ts, "X-Nonce": once, "X-Signature": signature}


def nodes_headers(agent_id: int | str, token: str, body: bytes) -> dict[str, str]:
    """The nodes dialect: ``Authorization: Node <id>:<ts>:<hmac of "<ts>.<body>">``."""
    ts = str(int(time.time()))
    mac = hmac.new(token.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Authorization": f"Node {agent_id}:{ts}:{mac}"}


#: Per dialect: (registration path, the body's field, the answer's token field, heartbeat path, signer).
SCHEMES = {
    "reference": ("/agents/register", "install_token", "agent_token", HEARTBEAT_PATH, signed_headers),
    "nodes": ("/api/nodes/enrol", "code", "secret", "/api/nodes/ping", nodes_headers),
}


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, dict]:
    """(HTTP status, JSON body); status 0 when the panel does not answer."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": type(exc).__name__}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} agent[{os.getpid()}] {message}", flush=True)


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def set_status(state_dir: Path, run_id: str, state: str, detail: str = "") -> None:
    write_private(state_dir / "status.json", json.dumps({"run_id": run_id, "state": state, "detail": detail}))


def register(panel: str, install_token: str, deadline: float, scheme: str = "reference") -> tuple[str | None, str]:
    """(agent token, "") on success, (None, why) when refused or out of time."""
    path, field, answer_field, _, _ = SCHEMES[scheme]
    url = panel.rstrip("/") + path
    body = json.dumps({field: install_token}).encode()
    delay = 0.2
    while True:
        status, answer = post(url, body, {})
        if status == 200 and isinstance(answer.get(answer_field), str):
            return answer[answer_field], ""
        if 400 <= status < 500:
            return None, f"refused ({status}: {answer.get('error', 'no reason given')})"
        log(f"registration: panel answered {status or 'nothing'}; retrying")
        if time.monotonic() + delay > deadline:
            return None, "gave up: the panel did not answer"
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def is_agent(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"agent.py" in cmdline and b"run" in cmdline


def replace_previous(pid_file: Path) -> None:
    """Stop the agent named in the pid file (if it is one), then name ourselves there."""
    with contextlib.suppress(OSError, ValueError):
        old = int(pid_file.read_text().split()[0])
        if old != os.getpid() and is_agent(old):
            os.kill(old, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while is_agent(old) and time.monotonic() < deadline:
                time.sleep(0.05)
            if is_agent(old):
                os.kill(old, signal.SIGKILL)
            log(f"replaced the previous agent (pid {old})")
    write_private(pid_file, f"{os.getpid()}\n")


def heartbeat_forever(panel: str, agent_id: str, token: str, interval: float, scheme: str = "reference") -> None:
    _, _, _, path, signer = SCHEMES[scheme]
    url = panel.rstrip("/") + path
    while True:
        body = json.dumps({"agent_id": int(agent_id), "version": "ref-1", "ts": time.time()}).encode()
        status, answer = post(url, body, signer(agent_id, token, body))
        if status not in (200, 204):
            log(f"heartbeat: {status or 'no answer'} {answer.get('error', '')}".rstrip())
        time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    install_token = sys.stdin.readline().strip()
    sys.stdin.close()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not install_token:
        set_status(state_dir, args.run_id, "refused", "no install token on stdin")
        return 2
    set_status(state_dir, args.run_id, "registering")
    token, why = register(args.panel, install_token, time.monotonic() + args.register_timeout_s, args.scheme)
    del install_token
    if token is None:
        log(f"registration failed: {why}")
        set_status(state_dir, args.run_id, "gave_up" if why.startswith("gave up") else "refused", why)
        return 3
    if args.brick:
        token = secrets.token_hex(32)  # a botched config write: the panel never issued this one
    write_private(state_dir / "agent.token", token + "\n")
    replace_previous(state_dir / "agent.pid")
    set_status(state_dir, args.run_id, "registered")
    log(f"registered as agent {args.agent_id}")
    heartbeat_forever(args.panel, str(args.agent_id), token, args.heartbeat_s, args.scheme)
    return 0


def check(args: argparse.Namespace) -> int:
    """Does the panel accept the token on stdin? 0 yes, 1 no (401/403), 2 cannot tell."""
    token = sys.stdin.readline().strip()
    _, _, _, path, signer = SCHEMES[args.scheme]
    body = json.dumps({"agent_id": int(args.agent_id), "check": True}).encode()
    status, answer = post(args.panel.rstrip("/") + path, body, signer(args.agent_id, token, body))
    print(f"{path} answered {status or 'nothing'} {answer.get('error', '')}".rstrip(), file=sys.stderr)
    if 200 <= status < 300:
        return 0
    return 1 if status in (401, 403) else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="register with the install token on stdin, then heartbeat")
    p.add_argument("--panel", required=True)
    p.add_argument("--agent-id", required=True, type=int)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--heartbeat-s", type=float, default=30.0)
    p.add_argument("--register-timeout-s", type=float, default=300.0)
    p.add_argument("--run-id", default="manual")
    p.add_argument("--scheme", choices=sorted(SCHEMES), default="reference")
    p.add_argument("--brick", action="store_true", help="tests only: keep a wrong token after registering")
    c = sub.add_parser("check", help="exit 0 if the panel accepts the token on stdin, 1 if it refuses it")
    c.add_argument("--panel", default=os.environ.get("ROTATOR_PANEL_URL"))
    c.add_argument("--agent-id", default=os.environ.get("ROTATOR_AGENT_ID"))
    c.add_argument("--scheme", choices=sorted(SCHEMES), default="reference")
    args = parser.parse_args(argv)
    if args.command == "check":
        if not args.panel or not args.agent_id:
            parser.error("check needs --panel and --agent-id (or ROTATOR_PANEL_URL and ROTATOR_AGENT_ID)")
        return check(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
