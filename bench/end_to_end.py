"""From the approving click to the final summary in the thread, through SSH, per panel size.

    python bench/end_to_end.py [--sizes 1000,10000,100000]

For each size N: a reference panel (php-fpm behind nginx, as production serves
it) with about N credentials encrypted by PHP in MariaDB, in the seed's shape (the six
columns in their four tables, 10 % NULL, 10 % empty, a tenth of the values multi-KB
SSH keys: tests/support/panel.py ``shape_value``); a panel host as
deploy/setup-panel-host.sh makes it (its own user with the login shell /bin/sh,
the engine pip-installed from this checkout into its own virtualenv, ``sudo -n`` to
the engine wrapper) behind an OpenSSH sshd with Debian's stock
``sshd_config`` on a loopback port (needs root; ``--lab-sshd``: the test fixture's
root login instead); the real bot over HTTP, configured with a
``[panels.bench]`` entry with the host key pinned; Slack's Web API played by
the recording fake in this process (``bot.demo.rehearsal``, as the demo does). Alice requests, Bob approves; the clock
runs from Bob's click to the summary reply in the thread, and PHP then checks
that every value opens under the key in ``.env``.

Stages, in one monotonic clock:

* click -> run sent: the click -> the rotation is sent to the engine (the bot
  records the approval, marks the request running). There is no re-plan session:
  the run request names the approved plan and the engine re-checks it in the
  same process (its preflight);
* preflight, key staging, re-encryption (re-encrypt + database check), .env,
  restart, sweep, verification, backup: the engine's step events' ``elapsed_ms``;
* ssh + engine start: the rotation sent -> the engine's ``hello`` (SSH
  connection, authentication, the forced command's Python starting);
* engine, between steps: the rest of the rotate-key session (profile, lock,
  database connection, events in flight);
* Slack posting: the engine's result -> the summary reply (the fake Slack's
  timestamp of that call).

Thread replies are posted while the engine runs; their lag behind the steps is
printed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import default_engine_clients
from bot.demo.rehearsal import ALICE, BOB, Rehearsal
from bot.engine_client import EngineClient
from bot.fakes.slack_api import Call
from engine.protocol import Request
from handlers.rotation_request import State
from tests.support.panel import VALUES_PER_ROW, build_panel
from tests.support.panel_host import PanelHost, start_stock_sshd
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import SSHServer, engine_command

#: Engine steps -> the stage they count towards, in the order a rotation runs them.
STAGE_OF_STEP = {
    "preflight": "preflight",
    "stage": "key staging",
    "reencrypt": "re-encryption",
    "verify_db": "re-encryption",
    "write_env": ".env",
    "restart": "restart",
    "sweep": "sweep",
    "verify": "verification",
    "backup": "backup",
}
STAGES = [
    "click -> run sent",
    "ssh + engine start",
    *dict.fromkeys(STAGE_OF_STEP.values()),
    "engine, between steps",
    "Slack posting",
]


@dataclass
class Tapped:
    """Every engine event the bot received, with the monotonic time it arrived."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def clients(self, inner: Callable[[str], EngineClient]) -> Callable[[str], EngineClient]:
        return lambda name: _TimedClient(inner(name), self)

    def last(self, op: str, kind: str) -> tuple[float, dict[str, Any]]:
        """The latest event of ``kind`` for ``op``."""
        return next(
            (t, e) for t, o, e in reversed(self.events) if o == op and e.get("type") == kind
        )

    def finished_steps(self, op: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, e) for t, o, e in self.events
            if o == op and e.get("type") == "step" and e.get("state") != "started"
        ]  # fmt: skip


class _TimedClient:
    def __init__(self, inner: EngineClient, tap: Tapped) -> None:
        self.inner, self.tap = inner, tap

    @property
    def host_key_fingerprint(self) -> str:
        return self.inner.host_key_fingerprint

    def run(self, request: Request) -> Iterator[dict[str, Any]]:
        self.tap.events.append((time.monotonic(), request.op, {"type": "sent"}))
        for event in self.inner.run(request):
            self.tap.events.append((time.monotonic(), request.op, event))
            yield event


@dataclass
class Measurement:
    values: int
    seconds: dict[str, float]
    total: float
    reply_lag_max: float
    sessions: int
    """Engine sessions (SSH connections) the bot opened from the click to the summary."""

    def slowest(self) -> str:
        return max(self.seconds, key=lambda stage: self.seconds[stage])


def panel_host_entry(stack: contextlib.ExitStack, workdir: Path, profile: Path) -> dict[str, Any]:
    """The path a team takes: deploy/setup-panel-host.sh's user (login shell /bin/sh),
    the engine pip-installed into its own virtualenv, ``sudo -n`` to the engine wrapper,
    Debian's stock sshd_config (UsePAM yes)."""
    host = PanelHost.under(workdir)
    stack.callback(host.remove)
    made = host.setup(profile=profile, own_virtualenv=True)
    if made.returncode != 0:
        raise SystemExit(f"setup-panel-host.sh failed:\n{made.stdout}{made.stderr}")
    sshd = start_stock_sshd(workdir / "stock-sshd", host.user)
    stack.callback(sshd.stop)
    return {
        "host": "127.0.0.1", "port": sshd.port, "user": host.user, "key_file": str(host.bot_key.private_path),
        "known_hosts": str(sshd.known_hosts), "event_timeout_s": 1800.0,
    }  # fmt: skip


def lab_sshd_entry(stack: contextlib.ExitStack, workdir: Path, profile: Path) -> dict[str, Any]:
    """The test fixture's sshd: root, the engine command forced directly (no sudo). Root's
    own shell start-up (here: a bashrc running pyenv init, 350 ms) counts too."""
    sshd = SSHServer.start(workdir / "sshd")
    stack.callback(sshd.stop)
    key = sshd.authorize("bot", engine_command(profile))
    return {
        "host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(key.private_path),
        "known_hosts": str(sshd.known_hosts), "event_timeout_s": 1800.0,
    }  # fmt: skip


def measure(values: int, workdir: Path, lab: bool = False) -> Measurement:
    """One rotation of a panel of ``values`` credentials, from Bob's click to the summary."""
    with contextlib.ExitStack() as stack:
        started = time.monotonic()
        panel = build_panel(
            workdir / "panel", rows=max(1, round(values / VALUES_PER_ROW)), server=True, fpm=True,
            shape=True, registry=SecretRegistry(),
        )  # fmt: skip
        held = [p for p in panel.plaintexts.values() if p is not None]
        stored_mb = sum(len(v or "") for v in panel.stored_values().values()) / 1e6
        print(f"  seed's shape: {len(held):,} values in {len(panel.columns)} columns, "
              f"{sum(len(p) > 1000 for p in held) / len(held):.0%} multi-KB, {stored_mb:.1f} MB stored", flush=True)
        stack.callback(panel.close)
        entry = (lab_sshd_entry if lab else panel_host_entry)(stack, workdir, panel.profile_path)
        tap = Tapped()
        bot = Rehearsal(
            workdir,
            {"panels": {"bench": entry}},
            engine_clients=lambda settings: tap.clients(default_engine_clients(settings)),
        )
        stack.callback(bot.close)
        bot.start()
        print(f"  set up in {time.monotonic() - started:.1f} s; requesting and approving", flush=True)

        bot.command(ALICE, "/rotate-key", "bench end-to-end benchmark")
        request = bot.posted_request(timeout_s=600)
        clicked = time.monotonic()
        bot.approve(BOB, request)
        final = bot.finished(request.id, timeout_s=3600)
        *replies, summary = bot.thread_calls(final)
        if final.state != State.DONE:
            raise SystemExit(f"the rotation of {values:,} values did not succeed:\n{summary.text}")
        problems = panel.php_check_all()
        if problems:
            raise SystemExit(f"{len(problems)} values do not open under the key in .env: {problems[:3]}")
        return _stages(values, tap, clicked, summary, replies)


def _stages(values: int, tap: Tapped, clicked: float, summary: Call, thread: list[Call]) -> Measurement:
    sent, _ = tap.last("rotate-key", "sent")
    hello, _ = tap.last("rotate-key", "hello")
    closed, _ = tap.last("rotate-key", "result")
    steps = tap.finished_steps("rotate-key")
    seconds = dict.fromkeys(STAGES, 0.0)
    seconds["click -> run sent"] = sent - clicked
    seconds["ssh + engine start"] = hello - sent
    for _, event in steps:
        stage = STAGE_OF_STEP.get(event["name"], "engine, between steps")
        seconds[stage] += event.get("elapsed_ms", 0) / 1000
    in_steps = sum(event.get("elapsed_ms", 0) for _, event in steps) / 1000
    seconds["engine, between steps"] += (closed - hello) - in_steps
    seconds["Slack posting"] = summary.at - closed
    sessions = sum(1 for t, _, e in tap.events if e.get("type") == "sent" and t >= clicked)
    lags = [reply.at - arrived for (arrived, _), reply in zip(steps, thread, strict=False)]
    return Measurement(values, seconds, summary.at - clicked, max(lags, default=0.0), sessions)


def report(m: Measurement) -> None:
    slowest = m.slowest()
    print(f"  {m.values:,} values: click -> summary in the thread {m.total:.2f} s")
    for stage, seconds in m.seconds.items():
        share = seconds / m.total
        bar = "█" * round(share * 40)
        mark = "  ◀ slowest" if stage == slowest else ""
        print(f"    {stage:<22} {seconds:8.3f} s {share:6.1%}  {bar}{mark}")
    print(
        f"    ({m.sessions} engine session(s) after the click;"
        f" thread replies trailed their steps by at most {m.reply_lag_max * 1000:.0f} ms)"
    )


def table(results: list[Measurement]) -> None:
    print("\nshare of click -> summary, per panel size")
    print(f"  {'stage':<22}" + "".join(f"{m.values:>16,}" for m in results))
    for stage in STAGES:
        cells = "".join(
            f"{m.seconds[stage]:>8.2f} s {m.seconds[stage] / m.total:>5.1%}" for m in results
        )
        print(f"  {stage:<22}{cells}")
    print(f"  {'total':<22}" + "".join(f"{m.total:>8.2f} s {'':>5}" for m in results))
    print(f"  {'total - restart':<22}" + "".join(f"{m.total - m.seconds['restart']:>8.2f} s {'':>5}"
                                                for m in results))
    aims = {1000: 1.0, 100_000: 5.0}
    for m in results:
        if m.values in aims:
            print(f"  {m.values:,} values: {m.total - m.seconds['restart']:.2f} s + the restart "
                  f"({m.seconds['restart']:.2f} s); aim <= {aims[m.values]:.1f} s + the restart")
    print(f"  {'slowest':<22}" + "".join(f"{m.slowest():>16}" for m in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000,10000,100000", help="comma-separated panel sizes (values)"
    )
    parser.add_argument(
        "--lab-sshd", action="store_true",
        help="log in as root through the test fixture's sshd instead of a host made by setup-panel-host.sh",
    )
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    results = []
    for values in sizes:
        print(f"panel of {values:,} values", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            results.append(measure(values, Path(tmp), lab=args.lab_sshd))
        report(results[-1])
    table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
