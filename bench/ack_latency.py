"""Acknowledgement latency of /rotate-key over real HTTP, against a bare Bolt app, in one run.

    python bench/ack_latency.py [--requests 100] [--rounds 4] [--concurrency 20]
                                [--store sqlite|mysql|both]

Both apps are served the same way (Bolt's WSGI adapter on the bot's threaded
WSGI server on 127.0.0.1) and receive the same signed slash commands, sent by
a load generator in its own process. The bare app only acknowledges. The
rotator's app also dedupes the delivery in its store before the ack and, after
it, plans with a scripted engine and posts a card to the fake Slack API (its
own process too, as Slack is), so its acknowledgements compete with that work.
The two apps take turns, round after round, so that both meet the same
machine (other processes, CPU frequency); a rotator round ends when the cards
it owes are posted, so no round starts with another's work still running.
Runs with the SQLite and the MariaDB store by default, and prints p50/p99 per
app and store and the p99 ratio. Aim: the rotator's p99 within 1.5x of bare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slack_bolt import Ack, App  # noqa: E402
from slack_sdk import WebClient  # noqa: E402

from bot.app import Rotator, build_rotator  # noqa: E402
from bot.audit_key import AuditKey  # noqa: E402
from bot.fakes.slack_signing import SlackSender  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from bot.store import open_store  # noqa: E402
from bot.wsgi import HttpServer  # noqa: E402
from tests.support.fake_engine import FakeEngineHost  # noqa: E402

TOKEN = "xoxb-0000-bench-token-0000000000"
SECRET = "bench-signing-secret-0123456789"
CHANNEL, GROUP = "C0ROTATE", "S0ONCALL"
#: the people sending commands (each may have a few requests pending, as the cap allows)
USERS = [f"U0USER{n:02d}" for n in range(40)]
AIM_RATIO = 1.5


# --- the load generator (runs in a child process) ----------------------------------------


def load(url: str, requests: int, concurrency: int, label: str) -> list[float]:
    sender = SlackSender(url=url, signing_secret=SECRET, channel_id=CHANNEL)
    for n in range(5):  # warm-up: auth.test, first connections, caches
        sender.command("/rotate-key", f"prod-eu warm-up {label} {n}", USERS[n])

    def one(n: int) -> float:
        sent = sender.command("/rotate-key", f"prod-eu {label} {n}", USERS[n % len(USERS)])
        if sent.status != 200:
            raise RuntimeError(f"{label}: HTTP {sent.status}: {sent.answer}")
        return sent.elapsed_s * 1000

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(requests)))


def run_load(url: str, requests: int, concurrency: int, label: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--requests", str(requests),
         "--concurrency", str(concurrency), "--label", label],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return list(json.loads(out.stdout))


# --- the apps ----------------------------------------------------------------------------


@contextlib.contextmanager
def fake_slack() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.fakes.slack_api", TOKEN, f"{GROUP}={','.join(USERS)}"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(10)


def bare_app(api_url: str, inline: bool = False) -> App:
    """Bolt's defaults run the listener on Bolt's thread pool and poll for its ack every
    10 ms; ``inline`` acknowledges on the request's thread, as the rotator does (stricter)."""
    app = App(
        client=WebClient(token=TOKEN, base_url=api_url),
        signing_secret=SECRET,
        token_verification_enabled=False,
        process_before_response=inline,
    )

    @app.command("/rotate-key")
    def ack_only(ack: Ack) -> None:
        ack()

    return app


def rotator(api_url: str, workdir: Path, store_url: str) -> Rotator:
    config = workdir / "rotator.toml"
    config.write_text(
        f'channels = ["{CHANNEL}"]\napprovers = ["{GROUP}"]\nrequesters = ["{GROUP}"]\n'
        f"max_pending_per_user = 100\n"
        f'store = "{store_url}"\n\n[local_panels.prod-eu]\nprofile = "/unused"\n'
    )
    settings = load_settings(
        {
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": api_url,
            "ROTATOR_CONFIG": str(config),
        }
    )
    return build_rotator(
        settings,
        open_store(settings.store_url, audit_key=AuditKey.generate()),
        {"prod-eu": FakeEngineHost().client()},
    )


class StoreCallsInAcks:
    """Counts store transactions made while a request is being acknowledged (aim: none).

    The rotator's acks do no I/O: the durable delivery dedupe, the request's
    insert and its audit entry run after the ack, on the worker threads.
    """

    def __init__(self, rotator: Rotator) -> None:
        self.count = 0
        self._local = threading.local()
        gate, store = rotator.gate, rotator.store
        acknowledging, transaction = gate.acknowledging, store.transaction

        @contextlib.contextmanager
        def counted_ack() -> Iterator[None]:
            self._local.acking = True
            try:
                with acknowledging():
                    yield
            finally:
                self._local.acking = False

        @contextlib.contextmanager
        def counted_transaction() -> Iterator[Any]:
            if getattr(self._local, "acking", False):
                self.count += 1
            with transaction() as tx:
                yield tx

        gate.acknowledging = counted_ack  # type: ignore[method-assign]
        store.transaction = counted_transaction  # type: ignore[method-assign]


def served(app: App, gate: Any = None) -> tuple[HttpServer, str]:
    acknowledging = gate.acknowledging if gate else contextlib.nullcontext
    server = HttpServer(app, lambda: True, acknowledging=acknowledging).start()
    return server, f"{server.url}/slack/events"


def cards_posted(api_url: str) -> int:
    with urllib.request.urlopen(api_url.replace("/api/", "/_record")) as response:
        return int(json.loads(response.read())["cards"])


def wait_for_cards(api_url: str, count: int, timeout: float = 120.0) -> int:
    """Until the rotator's work after its acks (plan, store, card) is done: a round starts quiet."""
    deadline = time.monotonic() + timeout
    while (cards := cards_posted(api_url)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return cards


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def report(name: str, ms: list[float]) -> float:
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(f"  {name:<9} p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   mean {statistics.mean(ms):6.1f} ms")
    return p99


@contextlib.contextmanager
def store_url(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite://{workdir / 'rotator.db'}"
        return
    from tests.support.mariadb import ALL_TABLES, create_database

    db = create_database(exclude_tables=ALL_TABLES)
    try:
        yield f"mysql://{db.user}@{db.host}:{db.port}/{db.name}"
    finally:
        db.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="per round and app")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--store", choices=("sqlite", "mysql", "both"), default="both")
    parser.add_argument(
        "--baseline",
        choices=("default", "inline"),
        default="default",
        help="bare Bolt with its defaults, or acknowledging inline like the rotator (stricter)",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(load(args.load, args.requests, args.concurrency, args.label)))
        return 0
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" per burst

    kinds = ("sqlite", "mysql") if args.store == "both" else (args.store,)
    results: dict[str, tuple[list[float], list[float], int]] = {}
    with fake_slack() as api_url, tempfile.TemporaryDirectory() as tmp:
        bare_server, bare_url = served(bare_app(api_url, inline=args.baseline == "inline"))
        try:
            for kind in kinds:
                workdir = Path(tmp) / kind
                workdir.mkdir()
                with store_url(kind, workdir) as url:
                    ours = rotator(api_url, workdir, url)
                    in_acks = StoreCallsInAcks(ours)
                    server, ours_url = served(ours.app, ours.gate)
                    bare_ms: list[float] = []
                    ours_ms: list[float] = []
                    expected = cards_posted(api_url)
                    try:
                        for n in range(args.rounds):  # interleaved: both see the same machine
                            bare_ms += run_load(bare_url, args.requests, args.concurrency, f"b{n}")
                            ours_ms += run_load(ours_url, args.requests, args.concurrency, f"r{n}")
                            expected += args.requests + 5
                            if wait_for_cards(api_url, expected) < expected:
                                raise SystemExit(f"{kind}: the rotator did not post every card")
                    finally:
                        server.stop()
                        ours.close(wait=True)
                        ours.store.close()
                    results[kind] = (bare_ms, ours_ms, in_acks.count)
        finally:
            bare_server.stop()
    verdict = 0
    print(
        f"/rotate-key acknowledgement latency: {args.rounds} interleaved rounds of "
        f"{args.requests} signed commands per app, {args.concurrency} at a time; "
        f"baseline: bare Bolt, {args.baseline} acknowledgement"
    )
    for kind, (bare_ms, ours_ms, store_calls) in results.items():
        print(f"store {kind}:")
        bare_p99 = report("bare Bolt", bare_ms)
        p99 = report("rotator", ours_ms)
        ratio = p99 / bare_p99
        print(
            f"  p99 ratio rotator/bare {ratio:.2f}x (aim <= {AIM_RATIO}x); "
            f"store transactions inside acknowledgements: {store_calls}"
        )
        verdict |= ratio > AIM_RATIO or store_calls > 0
    return verdict


if __name__ == "__main__":
    sys.exit(main())
