"""Running the real engine CLI as a child process, as a person on the host would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.procs import wait_for_stopped
from tests.support.secrets_scan import register_secret, scan_text

REPO = Path(__file__).resolve().parents[2]


@dataclass
class EngineRun:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def closing(self) -> dict[str, Any]:
        return self.events[-1]

    def steps(self, state: str | None = None) -> list[str]:
        return [
            e["name"] for e in self.events
            if e["type"] == "step" and (state is None or e["state"] == state)
        ]

    def step(self, name: str, state: str = "ok") -> dict[str, Any]:
        matches = [e for e in self.events if e["type"] == "step" and e["name"] == name and e["state"] == state]
        assert matches, f"no {name}/{state} step in {self.steps()}"
        return matches[-1]

    def leaks(self) -> list[str]:
        return scan_text(self.stdout + "\n" + self.stderr)


def engine_argv(profile: Path, *args: str) -> list[str]:
    return [sys.executable, "-u", "-m", "engine", "--profile", str(profile), *args]


def _env(fault: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **(extra or {}))
    env.pop("MYOSICAM_ENGINE_FAULT", None)
    if fault:
        env["MYOSICAM_ENGINE_FAULT"] = fault
    return env


def register_made_secrets(profile: Path) -> None:
    """Register what an engine run may have made: the DB password ``.env`` holds now and
    both passwords of an unfinished database password rotation, so every test's output
    (and each later test's) is scanned for them."""
    from bot.fakes.panel.ctl import parse_env
    from engine.errors import EngineError
    from engine.profile import load_profile

    try:
        loaded = load_profile(profile)
        env = parse_env(loaded.env_path.read_text(encoding="utf-8"))
    except (EngineError, OSError, UnicodeDecodeError):
        return
    register_secret(env.get("DB_PASSWORD"), "DB_PASSWORD in .env after an engine run")
    try:
        record = json.loads((loaded.journal_dir / "db-password.json").read_text())
    except (OSError, ValueError):
        return
    register_secret(record.get("new_password"), "new DB_PASSWORD (journal)")
    register_secret(record.get("old_password"), "old DB_PASSWORD (journal)")


def _parse(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_engine(
    profile: Path, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
) -> EngineRun:
    """The engine CLI as a child; ``env`` adds variables to the test's own environment."""
    proc = subprocess.run(
        engine_argv(profile, *args), capture_output=True, text=True, timeout=timeout,
        env=_env(None, env), cwd=REPO, stdin=subprocess.DEVNULL, check=False,
    )
    register_made_secrets(profile)
    return EngineRun(proc.returncode, proc.stdout, proc.stderr, _parse(proc.stdout))


def rotate(profile: Path, *extra: str) -> EngineRun:
    return run_engine(profile, "rotate-key", "--yes", "--json", *extra)


def crash_at(profile: Path, point: str, *args: str, timeout: float = 60) -> EngineRun:
    """Start the engine, let it stop itself at ``point``, then SIGKILL it."""
    proc = subprocess.Popen(
        engine_argv(profile, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(f"stop@{point}"), cwd=REPO, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_stopped(lambda argv: proc.pid == _pid_of(argv, proc.pid), timeout=timeout)
    except TimeoutError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"engine never reached {point}: rc={proc.returncode} {err[-500:]}") from None
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=timeout)
    register_made_secrets(profile)
    return EngineRun(proc.returncode, out, err, _parse(out))


def _pid_of(argv: list[str], pid: int) -> int:
    """Match the child by pid (argv alone is the same for every engine run)."""
    try:
        own = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return -1
    return pid if [a.decode() for a in own if a] == argv else -1


def start_paused(profile: Path, point: str, *args: str) -> subprocess.Popen[str]:
    """Start the engine and return once it has stopped itself at ``point``."""
    proc = subprocess.Popen(
        engine_argv(profile, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(f"stop@{point}"), cwd=REPO, stdin=subprocess.DEVNULL,
    )
    wait_for_stopped(lambda argv: proc.pid == _pid_of(argv, proc.pid), timeout=60)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> EngineRun:
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=timeout)
    return EngineRun(proc.returncode, out, err, _parse(out))
