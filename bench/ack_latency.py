"""Acknowledgement latency of /rotate-key over real HTTP, against a bare Bolt app, in one run.

    python bench/ack_latency.py [--requests 200] [--concurrency 20] [--store sqlite|mysql]

Both apps are served the same way (Bolt's WSGI adapter on the bot's threaded
WSGI server on 127.0.0.1) and receive the same signed slash commands, sent by
a load generator in its own process. The bare app only acknowledges. The
rotator's app also dedupes the delivery in its store before the ack and, after
it, plans with a scripted engine and posts a card to the fake Slack API (its
own process too, as Slack is), so its acknowledgements compete with that work.
Prints p50/p99 for each and the ratio. Aim: p99 under 100 ms, within 2x of bare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
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
CHANNEL, GROUP, USER = "C0ROTATE", "S0ONCALL", "U0ALICE"


# --- the load generator (runs in a child process) ----------------------------------------


def load(url: str, requests: int, concurrency: int, label: str) -> list[float]:
    sender = SlackSender(url=url, signing_secret=SECRET, channel_id=CHANNEL)
    for n in range(5):  # warm-up: auth.test, first connections, caches
        sender.command("/rotate-key", f"prod-eu warm-up {label} {n}", USER)

    def one(n: int) -> float:
        sent = sender.command("/rotate-key", f"prod-eu {label} {n}", USER)
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
        [sys.executable, "-m", "bot.fakes.slack_api", TOKEN, f"{GROUP}={USER},U0BOB"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(10)


def bare_app(api_url: str) -> App:
    app = App(
        client=WebClient(token=TOKEN, base_url=api_url),
        signing_secret=SECRET,
        token_verification_enabled=False,
    )

    @app.command("/rotate-key")
    def ack_only(ack: Ack) -> None:
        ack()

    return app


def rotator(api_url: str, workdir: Path, store_url: str) -> Rotator:
    config = workdir / "rotator.toml"
    config.write_text(
        f'channels = ["{CHANNEL}"]\napprovers = ["{GROUP}"]\nrequesters = ["{GROUP}"]\n'
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


def served(app: App, requests: int, concurrency: int, label: str, gate: Any = None) -> list[float]:
    acknowledging = gate.acknowledging if gate else contextlib.nullcontext
    server = HttpServer(app, lambda: True, acknowledging=acknowledging).start()
    try:
        return run_load(f"{server.url}/slack/events", requests, concurrency, label)
    finally:
        server.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def report(name: str, ms: list[float]) -> float:
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(f"{name:<10} p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   mean {statistics.mean(ms):6.1f} ms")
    return p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--store", choices=("sqlite", "mysql"), default="sqlite")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(load(args.load, args.requests, args.concurrency, args.label)))
        return 0

    with fake_slack() as api_url, tempfile.TemporaryDirectory() as tmp:
        drop = None
        if args.store == "mysql":
            from tests.support.mariadb import ALL_TABLES, create_database

            db = create_database(exclude_tables=ALL_TABLES)
            store_url, drop = f"mysql://{db.user}@{db.host}:{db.port}/{db.name}", db.drop
        else:
            store_url = f"sqlite://{Path(tmp) / 'rotator.db'}"
        try:
            bare = served(bare_app(api_url), args.requests, args.concurrency, "bare")
            ours_rotator = rotator(api_url, Path(tmp), store_url)
            ours = served(
                ours_rotator.app, args.requests, args.concurrency, "rotator", ours_rotator.gate
            )
            deadline = time.monotonic() + 60
            while True:  # let the lazy work finish before counting the cards it posted
                with urllib.request.urlopen(api_url.replace("/api/", "/_record")) as response:
                    cards = json.loads(response.read())["cards"]
                if cards >= args.requests + 5 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            ours_rotator.close(wait=True)
            ours_rotator.store.close()
        finally:
            if drop:
                drop()
    print(
        f"{args.requests} signed /rotate-key commands, {args.concurrency} at a time, store {args.store}"
    )
    bare_p99 = report("bare Bolt", bare)
    p99 = report("rotator", ours)
    ratio = p99 / bare_p99
    print(f"p99 ratio rotator/bare {ratio:.2f}x   (aim: p99 < 100 ms, ratio <= 2x)")
    print(f"cards the rotator posted after acknowledging: {cards}")
    return 0 if p99 < 100 and ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
