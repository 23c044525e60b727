#!/usr/bin/env python3
"""The reference agent bootstrap, run on the agent server (over SSH by the engine)::

    python3 bootstrap.py --panel URL --agent-id N [--heartbeat-s S] [--wait-s W]
                         [--register-timeout-s T] [--scheme S] [--brick]
                         [--say-token]                 < install token on stdin

Installs the agent (``ref_agent.py`` next to this file, copied to
``~/.myosicam-agent/agent.py``), starts it detached with the install token on
its stdin, then waits up to ``W`` seconds for the agent to say how its
registration went:

* registered: prints ``agent N registered`` and exits 0;
* the panel refused the token (expired, used, unknown): prints why, exits 3;
* still trying (the panel does not answer yet): says so and exits 0; the
  agent keeps trying on its own, and whoever ran the bootstrap watches the panel.

Standard library only; the token is never on a command line, in a file or in
the output, except with ``--say-token`` (tests only): then the last line is
``agent N registered, token <the new agent token>``, as careless bootstraps do.
``--scheme`` and ``--brick`` are handed to the agent (see ref_agent.py).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def home() -> Path:
    """The login's home from the password database (``$HOME`` may be someone else's)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def install(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = state_dir / "agent.py"
    tmp = state_dir / ".agent.py.tmp"
    shutil.copyfile(HERE / "ref_agent.py", tmp)
    tmp.chmod(0o700)
    os.replace(tmp, target)
    return target


def start_agent(agent: Path, state_dir: Path, args: argparse.Namespace, token: str, run_id: str) -> int:
    """Start the agent in its own session, detached from this SSH session; returns its pid."""
    argv = [
        sys.executable, "-u", str(agent), "run",
        "--panel", args.panel, "--agent-id", str(args.agent_id), "--state-dir", str(state_dir),
        "--heartbeat-s", str(args.heartbeat_s), "--register-timeout-s", str(args.register_timeout_s),
        "--run-id", run_id, "--scheme", args.scheme,
    ] + (["--brick"] if args.brick else [])
    with open(state_dir / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            cwd=state_dir,
        )
    assert proc.stdin is not None
    proc.stdin.write((token + "\n").encode())
    proc.stdin.close()
    return proc.pid


def wait_for_status(state_dir: Path, run_id: str, wait_s: float) -> dict[str, str]:
    deadline = time.monotonic() + wait_s
    status: dict[str, str] = {"state": "starting"}
    while time.monotonic() < deadline:
        try:
            found = json.loads((state_dir / "status.json").read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("run_id") == run_id:
            status = found
            if status.get("state") != "registering":
                return status
        time.sleep(0.05)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(prog="bootstrap.py")
    parser.add_argument("--panel", required=True)
    parser.add_argument("--agent-id", required=True, type=int)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--wait-s", type=float, default=10.0)
    parser.add_argument("--register-timeout-s", type=float, default=300.0)
    parser.add_argument("--scheme", choices=("reference", "nodes"), default="reference")
    parser.add_argument("--brick", action="store_true")
    parser.add_argument("--say-token", action="store_true")
    parser.add_argument("--name", default=None, help="the agent's name (recorded, as received)")
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    if not token:
        print("bootstrap: no install token on stdin", file=sys.stderr)
        return 2
    state_dir = home() / ".myosicam-agent"
    agent = install(state_dir)
    with open(state_dir / "agent.log", "a") as log:  # what a bootstrap's argv holds (never the token)
        print(f"{time.strftime('%H:%M:%S')} bootstrap argv: {' '.join(sys.argv)}", file=log)
    if args.name is not None:  # the name as it arrived: the argument, and ROTATOR_AGENT_NAME
        received = {"argument": args.name, "environment": os.environ.get("ROTATOR_AGENT_NAME")}
        (state_dir / "bootstrap-name.json").write_text(json.dumps(received))
    run_id = secrets.token_hex(8)
    pid = start_agent(agent, state_dir, args, token, run_id)
    del token
    status = wait_for_status(state_dir, run_id, args.wait_s)
    state = status.get("state")
    if state == "registered":
        if args.say_token:
            said = (state_dir / "agent.token").read_text().strip()
            print(f"agent {args.agent_id} registered, token {said}")
        else:
            print(f"agent {args.agent_id} registered (pid {pid})")
        return 0
    if state in ("refused", "gave_up"):
        print(f"bootstrap: the agent could not register: {status.get('detail', state)}", file=sys.stderr)
        return 3
    print(f"agent {args.agent_id} started (pid {pid}); registration pending, the agent keeps trying")
    return 0


if __name__ == "__main__":
    sys.exit(main())
