"""Blank credentials as users feel them: every response under load, during a rotation.

    python bench/blank_window.py [--values 2000] [--clients 8] [--rounds 1]

Serves the reference panel as production does (php-fpm behind nginx, workers that
load the key when they start), stores N credentials encrypted by PHP, and keeps a
steady load of concurrent clients on its /health (which decrypts every credential)
while the key is rotated. Every response is recorded with its time:

* ok:           200, every credential shows;
* blank:        500, a worker could not decrypt every credential (it holds one key
                while the rows are under the other): what the product must never show;
* unavailable:  nginx answered 502 or nothing answered (php-fpm stopped or starting).

Three orders, in the same run on the same panel:

* engine, split restart: re-encrypt in a transaction, .env, stop php-fpm, commit,
  start php-fpm (``restart_stop_command`` / ``restart_start_command``);
* engine, one restart command (``restart_split = false``): .env, restart, commit;
* naive (the baseline): commit the re-encryption, then .env, then restart.

The aim: 0 blank responses, and the panel unavailable no longer than one php-fpm
restart (the engine's own stop + start times, printed beside it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import envfile
from engine.cipher import Codec, Scheme, new_key_hex
from engine.context import Context
from engine.events import Emitter
from engine.ops.key.scan import reencrypt
from engine.profile import load_profile
from tests.support.panel import PanelSandbox, build_panel

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Load:
    """``clients`` threads, each asking /health again as soon as it is answered."""

    port: int
    clients: int
    responses: list[tuple[float, float, str]] = field(default_factory=list)
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self.lock = threading.Lock()

    def _client(self) -> None:
        while not self.stop_flag.is_set():
            started = time.monotonic()
            outcome = self._ask()
            with self.lock:
                self.responses.append((started, time.monotonic(), outcome))
            if outcome == "unavailable":
                self.stop_flag.wait(0.005)  # as a browser would not hammer a refused port

    def _ask(self) -> str:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
        except OSError:
            return "unavailable"
        return {200: "ok", 500: "blank"}.get(status, "unavailable")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for thread in self.threads:
            thread.join()

    def during(self, start: float, end: float) -> list[tuple[float, float, str]]:
        with self.lock:
            return [r for r in self.responses if r[1] >= start and r[0] <= end]


@dataclass
class Outcome:
    name: str
    counts: dict[str, int]
    unavailable_s: float
    restart_s: float | None
    took_s: float

    def line(self) -> str:
        restart = f"php-fpm restart {self.restart_s * 1000:5.0f} ms" if self.restart_s is not None else ""
        return (
            f"{self.name:<24} {self.counts['ok']:>6} ok {self.counts['blank']:>5} blank "
            f"{self.counts['unavailable']:>5} unavailable · unavailable for {self.unavailable_s * 1000:5.0f} ms · "
            f"{restart} · rotation {self.took_s:5.2f} s"
        )


def summarize(name: str, responses: list[tuple[float, float, str]], restart_s: float | None,
              took_s: float) -> Outcome:
    counts = {"ok": 0, "blank": 0, "unavailable": 0}
    for _, _, outcome in responses:
        counts[outcome] += 1
    down = [(t0, t1) for t0, t1, outcome in responses if outcome == "unavailable"]
    # From the first refused request's answer to the last one's: how long users saw it down.
    unavailable = (max(t1 for _, t1 in down) - min(t1 for _, t1 in down)) if down else 0.0
    return Outcome(name, counts, unavailable, restart_s, took_s)


def engine_rotation(panel: PanelSandbox, profile: Path) -> float | None:
    """Run the real engine; the php-fpm restart time it measured (stop + start), in s."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--profile", str(profile), "rotate-key", "--yes", "--json"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"rotation failed: {proc.stdout[-600:]}")
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event.get("name") == "restart" and event.get("state") == "ok":
            return float(event["restart_ms"]) / 1000
    return None


def naive_rotation(panel: PanelSandbox, profile_path: Path) -> float:
    """Commit first, then .env, then restart: the order this product avoids."""
    profile = load_profile(profile_path)
    ctx = Context(profile, Emitter("naive"))
    old = envfile.read_key(profile.env_path, profile.key_name)
    new = new_key_hex()
    scheme = Scheme.parse(panel.scheme)
    db = ctx.connect()
    columns, _ = ctx.columns(db)
    reencrypt(db, columns, Codec(scheme, old), Codec(scheme, new), 5000)
    db.commit()
    db.close()
    envfile.write_atomic(
        profile.env_path, envfile.replace_key(profile.env_path.read_bytes(), profile.key_name, new),
        ctx.ownership(),
    )
    started = time.monotonic()
    subprocess.run(panel.restart_command, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="rotations per order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        panel = build_panel(Path(tmp), rows={"oscam_installs": args.values}, server=True, fpm=True, blanks=False)
        try:
            server = panel.server
            split = panel.write_profile(
                restart_stop_command=server.stop_command, restart_start_command=server.start_command
            )
            single = panel.write_profile(restart_split=False)
            orders = {
                "engine, split restart": lambda: engine_rotation(panel, split),
                "engine, one restart": lambda: engine_rotation(panel, single),
                "naive order (baseline)": lambda: naive_rotation(panel, single),
            }
            print(f"{args.values:,} credentials; {args.clients} clients asking /health without pause")
            results: list[Outcome] = []
            with Load(panel.port, args.clients) as load:
                time.sleep(0.5)  # warm: every client has had answers
                for _ in range(args.rounds):
                    for name, rotate in orders.items():
                        start = time.monotonic()
                        restart_s = rotate()
                        end = time.monotonic()
                        time.sleep(0.3)  # let requests queued at the end be answered
                        results.append(summarize(name, load.during(start, end + 0.3), restart_s, end - start))
                        print(results[-1].line(), flush=True)
            problems = panel.php_check_all()
            assert problems == [], f"values do not all decrypt under the key in .env: {problems[:3]}"
            engine = [r for r in results if r.name == "engine, split restart"]
            naive = [r for r in results if r.name.startswith("naive")]
            blank = sum(r.counts["blank"] for r in engine)
            worst = max(r.unavailable_s - (r.restart_s or 0) for r in engine)
            print(
                f"engine, split restart: {blank} blank responses (aim 0; naive order "
                f"{sum(r.counts['blank'] for r in naive)}); unavailable at most {worst * 1000:+.0f} ms beyond "
                "its own php-fpm restart (aim <= 0)"
            )
        finally:
            panel.close()


if __name__ == "__main__":
    main()
