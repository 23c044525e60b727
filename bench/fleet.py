"""A fleet through SSH at several concurrencies, in one run; the bot's memory from 20 to 500 panels.

    python bench/fleet.py [--panels 20] [--values 1000] [--concurrency 1,4,8]
                          [--restart-s 2.0] [--memory 20,500]

Speed: ``--panels`` reference panels, each with its own MariaDB database (``--values``
credentials encrypted by PHP), ``.env`` and profile, each engine behind one OpenSSH sshd
(the test fixture's, on a loopback port; needs root) with its own key and forced command.
The bot's real parts run the fleet: the planner asks each engine for its plan over SSH,
the fleet runner (``bot.fleet_runner``) runs every panel as its own engine run, the store is
SQLite, Slack's Web API is the recording fake. The restart command sleeps ``--restart-s``
(php-fpm's stop took 2.0 s here, docs: TESTING-FACTS): a fleet mostly waits on restarts,
SSH and MariaDB, which is what concurrency overlaps. Timed: from the run's start to the
fleet's closing state; each round rotates every panel again, and PHP checks every panel
after each round (outside the clock).

Memory: in a child process per size, a fleet of N panels on the scripted engine
(``tests.support.fake_engine``), same runner, same fake Slack; the child's peak RSS and
the Python heap's peak during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slack_sdk import WebClient

from bot.app import EnginePlanner
from bot.audit import AuditLog
from bot.audit_key import AuditKey
from bot.engine_client import EngineClient
from bot.fakes.slack_api import FakeSlack
from bot.fleet_runner import FleetRunner
from bot.store import Store, open_store
from handlers.access import AccessPolicy
from handlers.ops import fleet as f
from handlers.ops import fleet_model as fm
from handlers.ports import HandlerDeps
from handlers.rotation_request import Decision, Person, RotationRequest, State

TOKEN = "xoxb-0-bench"
CHANNEL = "C0BENCH"
ALICE = Person("T0BENCH", "U0ALICE")
BOB = Person("T0BENCH", "U0BOB")


class _Directory:
    def group_members(self, group_id: str) -> frozenset[str]:
        return frozenset()


def run_fleet(
    names: list[str],
    engine_clients: Callable[[str], EngineClient],
    store: Store,
    client: WebClient,
    concurrency: int,
    hosts: dict[str, str] | None = None,
) -> tuple[float, dict[str, int]]:
    """Plan every panel, file one approved fleet request, run it; (seconds, panel counts)."""
    policy = AccessPolicy(approvers=(BOB.user_id,))
    settings = f.FleetSettings(concurrency=concurrency, plan_threads=8)
    deps = HandlerDeps(
        store=store,
        planner=EnginePlanner(engine_clients, hosts or {}),
        policy=policy,
        directory=_Directory(),
        panels=names,
        start_rotation=lambda request_id: None,
        client=client,
        ops_config={fm.OP: settings},
    )
    now = time.time()
    request_id = f"r-bench-{int(now * 1000) % 10**9}-c{concurrency}"
    parsed = f.FleetParsed(tuple(names), "bench", "all panels")
    plan = f.plan_fleet(deps, parsed, request_id)
    bad = [m for m in fm.members(plan) if m.get("error")]
    if bad:
        raise SystemExit(f"could not plan: {bad[:3]}")
    ts = client.chat_postMessage(channel=CHANNEL, text="bench card")["ts"]
    request = RotationRequest(
        id=request_id, op=fm.OP, panel=plan.panel, reason="bench", requester=ALICE, channel_id=CHANNEL,
        plan=plan, created_at=now, expires_at=now + 3600, state=State.APPROVED, message_ts=str(ts),
        approvals=(Decision(person=BOB, at=now),),
    )  # fmt: skip
    store.create(request, actor=ALICE.key)
    del plan, request  # the bot lets go of them once the request is filed (its filing thread ends)
    runner = FleetRunner(
        store=store,
        audit=AuditLog(store),
        engine_clients=engine_clients,
        client=client,
        policy=policy,
        settings=settings,
        update_interval_s=3.0,
    )
    started = time.monotonic()
    thread = runner.start(request_id)
    assert thread is not None
    thread.join()
    took = time.monotonic() - started
    final = store.get(request_id)
    assert final is not None and final.state in (State.DONE, State.FAILED), final
    return took, dict(final.outcome.get("counts") or {})


def speed(args: argparse.Namespace) -> dict[str, Any]:
    from bot.inventory import PanelEntry
    from bot.ssh_client import SSHEngineClient
    from tests.support.panel import build_panel
    from tests.support.secrets_scan import SecretRegistry
    from tests.support.sshd import SSHServer, engine_command

    per_table = max(1, args.values * 187 // 1000)  # about 5.35 encrypted values per row of the 4 tables
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        sshd = SSHServer.start(root / "sshd")
        names = [f"bench-{n:02d}" for n in range(args.panels)]
        made = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            sandboxes = list(
                pool.map(
                    lambda name: build_panel(root / name, rows=per_table, blanks=False, registry=SecretRegistry()),
                    names,
                )
            )
        entries = {}
        for name, sandbox in zip(names, sandboxes, strict=True):
            profile = sandbox.write_profile(name=name, restart_command=["sleep", str(args.restart_s)])
            pair = sshd.authorize(name, engine_command(profile))
            entries[name] = PanelEntry(
                name=name, host=sshd.host, port=sshd.port, user=sshd.user, key_file=pair.private_path,
                known_hosts=sshd.known_hosts, connect_timeout_s=20, event_timeout_s=120,
            )  # fmt: skip
        values = sum(len([p for p in s.plaintexts.values() if p is not None]) for s in sandboxes)
        print(f"{args.panels} panels, {values:,} values in all, made in {time.monotonic() - made:.1f} s", flush=True)
        fake = FakeSlack(token=TOKEN, channels=[CHANNEL]).start()
        client = WebClient(token=TOKEN, base_url=fake.url)
        store = open_store(f"sqlite://{root / 'store.db'}", audit_key=AuditKey.generate())
        rounds: dict[str, Any] = {}
        try:
            for concurrency in args.concurrency:
                took, counts = run_fleet(
                    names, lambda name: SSHEngineClient(entries[name]), store, client, concurrency,
                    {n: "127.0.0.1" for n in names},
                )  # fmt: skip
                problems = [p for s in sandboxes for p in s.php_check_all()]
                rounds[str(concurrency)] = {"seconds": round(took, 2), "counts": counts, "php_problems": len(problems)}
                print(f"concurrency {concurrency}: {took:.2f} s  {counts}  PHP problems: {len(problems)}", flush=True)
        finally:
            store.close()
            fake.stop()
            for sandbox in sandboxes:
                sandbox.close()
            sshd.stop()
    one = rounds[str(args.concurrency[0])]["seconds"]
    for concurrency in args.concurrency[1:]:
        ratio = one / rounds[str(concurrency)]["seconds"]
        print(f"concurrency {concurrency} vs {args.concurrency[0]}: {ratio:.1f}x faster")
    return rounds


def _vm_kb(field: str) -> int:
    """This process's ``VmHWM`` (peak RSS) from /proc: unlike ``ru_maxrss`` it is not
    carried over from the parent across ``exec``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_child(n: int) -> None:
    """One fleet of ``n`` panels on the scripted engine; prints peak RSS and heap as JSON."""
    from tests.support.fake_engine import FakeEngineHost

    names = [f"panel-{i:03d}" for i in range(n)]
    hosts = {}
    for name in names:
        host = FakeEngineHost()
        host.plan_result["panel"] = name
        hosts[name] = host
    fake = FakeSlack(token=TOKEN, channels=[CHANNEL]).start()
    client = WebClient(token=TOKEN, base_url=fake.url)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-mem-") as tmp:
        store = open_store(f"sqlite://{Path(tmp) / 'store.db'}", audit_key=AuditKey.generate())
        before = _vm_kb("VmHWM")
        tracemalloc.start(10)
        sampled: list[int] = []
        done = threading.Event()

        def sample() -> None:  # the bot's own heap: allocations with a bot/handlers frame, no fake's
            filters = [
                tracemalloc.Filter(True, "*/bot/*", all_frames=True),
                tracemalloc.Filter(True, "*/handlers/*", all_frames=True),
                tracemalloc.Filter(False, "*/bot/fakes/*", all_frames=True),
                tracemalloc.Filter(False, "*/tests/support/*", all_frames=True),
            ]
            while not done.wait(0.1):
                snapshot = tracemalloc.take_snapshot().filter_traces(filters)
                sampled.append(sum(stat.size for stat in snapshot.statistics("filename")))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        took, counts = run_fleet(names, lambda name: hosts[name].client(), store, client, 8)
        done.set()
        sampler.join()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        store.close()
    fake.stop()
    after = _vm_kb("VmHWM")
    print(json.dumps({"panels": n, "seconds": round(took, 2), "counts": counts, "rss_before_kb": before,
                      "rss_peak_kb": after, "heap_peak_kb": peak // 1024,
                      "bot_heap_peak_kb": max(sampled, default=0) // 1024}))  # fmt: skip


def memory(sizes: list[int]) -> dict[str, Any]:
    out = {}
    for n in sizes:
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        data = json.loads(child.stdout.strip().splitlines()[-1])
        out[str(n)] = data
        print(
            f"memory, {n} panels (scripted engine): peak RSS {data['rss_peak_kb'] / 1024:.1f} MB "
            f"(before the run {data['rss_before_kb'] / 1024:.1f} MB), heap peak {data['heap_peak_kb'] / 1024:.1f} MB "
            f"(the bot's own, sampled: {data['bot_heap_peak_kb'] / 1024:.1f} MB), "
            f"{data['seconds']:.1f} s",
            flush=True,
        )
    first, last = out[str(sizes[0])], out[str(sizes[-1])]
    print(
        f"memory {sizes[-1]} vs {sizes[0]} panels: RSS {last['rss_peak_kb'] / first['rss_peak_kb']:.2f}x, "
        f"heap {last['heap_peak_kb'] / max(1, first['heap_peak_kb']):.2f}x, "
        f"the bot's own heap {last['bot_heap_peak_kb'] / max(1, first['bot_heap_peak_kb']):.2f}x"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panels", type=int, default=20)
    parser.add_argument("--values", type=int, default=1000, help="credentials per panel (about)")
    parser.add_argument("--concurrency", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--restart-s", type=float, default=2.0, help="what the restart command sleeps")
    parser.add_argument("--memory", default="20,500", type=lambda s: [int(x) for x in s.split(",") if x])
    parser.add_argument("--no-speed", action="store_true", help="only the memory part")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if not args.no_speed:
        speed(args)
    if args.memory:
        memory(args.memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
