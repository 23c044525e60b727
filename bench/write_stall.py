"""How long a panel user saving a credential waits while a rotation runs.

    python bench/write_stall.py [--values 100000] [--escrow-s 2] [--stop-s 2] [--writers 4]

A panel in the seed's shape (tests/support/panel.py ``seed_shape``: six columns in four
tables, NULL and empty rows, a tenth of the values multi-KB keys) in a fresh database
on the MariaDB at 127.0.0.1:3306. Four writers, as panel users saving a WebIF, SSH,
SMTP or Mailgun secret: each, every 5 ms, seals a random value under the key its
"worker" holds and UPDATEs a random row of a random encrypted column, autocommit, on
its own connection. Each save's time (the UPDATE's round trip, lock waits included)
is recorded.

In one run, on the same data:
  * the baseline: the writers alone, no rotation, for ``--baseline-s`` seconds;
  * the same writers while the real engine (``python -m engine rotate-key`` as a child
    process) rotates the key, with an escrow command that takes ``--escrow-s`` and the
    restart split in two: the stop takes ``--stop-s`` (php-fpm's stop measured about
    2.0 s here, docs/architecture.md) and marks the panel down, so the writers save
    nothing until the start, which makes them read the key from ``.env`` again, as new
    php-fpm workers do;
  * twice: the host's first rotation, with the stop after the apply (the engine has
    not measured this host's stop yet: as every rotation did before the stop overlapped
    the apply), then its second (the stop begun during the apply once the rest of the
    apply fits in the stop the first one measured).

Printed: saves, errors, worst wait, p99 and median, for each run; each rotation's
duration and its steps; the worst wait as a share of the rotation (aim: at most the bulk
apply plus the php-fpm stop, measured as <= 30 % with a 2 s escrow at 100k values), and
how long the panel was down (from the stop's start to the start's end: what a user
meets instead of a wait). Then PHP opens every stored value with the key in ``.env``
(bot/fakes/panel/php/crypto.php).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.fakes.panel import PANEL_COLUMNS
from bot.fakes.panel.ctl import parse_env
from bot.fakes.panel.database import schema_statements
from bot.fakes.panel.files import to_toml
from engine.cipher import Codec, Scheme
from tests.support.panel import SHAPE_TABLES, Shape, seed_shape
from tests.support.php_crypto import php_decrypt

SCHEME = Scheme.parse("iv12_tag_ct/hex")
DB = f"rotator_stall_{os.getpid()}"
PERIOD_S = 0.005


def connect(autocommit: bool) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=autocommit, ssl_disabled=True)


def fill(n: int, key: str) -> Shape:
    with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(f"USE {DB}")
        statements = schema_statements()
        for table in SHAPE_TABLES:
            cur.execute(statements[table])
    return seed_shape(lambda: connect(False), key, SCHEME.label, n)


@dataclass
class Panel:
    """The writers' view of the panel: the key its workers hold, and whether it is up.

    Workers read the key from ``.env`` when they start; the stop ends them (a save
    already sent to MySQL still lands, as one from a killed php-fpm worker does), and
    the start command writes a new epoch, so the workers of the new master read
    ``.env`` again."""

    env: Path
    down: Path
    epoch_file: Path
    rows: int
    key: str = ""
    epoch: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker_key(self) -> str | None:
        """The key a worker serving a request now holds; None while the panel is stopped."""
        if self.down.exists():
            return None
        epoch = self.epoch_file.read_text() if self.epoch_file.exists() else ""
        with self.lock:
            if not self.key or epoch != self.epoch:
                self.key = parse_env(self.env.read_text())["PANEL_ENCRYPTION_KEY"]
                self.epoch = epoch
            return self.key


@dataclass
class Saves:
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        if not self.waits:
            return "no saves"
        waits = sorted(self.waits)
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
        return (
            f"{len(waits):6,} saves, {len(self.errors)} errors · worst {waits[-1] * 1000:8.1f} ms · "
            f"p99 {p99 * 1000:7.1f} ms · median {statistics.median(waits) * 1000:5.1f} ms"
        )

    @property
    def worst(self) -> float:
        return max(self.waits, default=0.0)


def writer(panel: Panel, saves: Saves, stop: threading.Event, seed: int) -> None:
    rnd = random.Random(seed)
    conn = connect(True)
    codecs: dict[str, Codec] = {}
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                started = time.perf_counter()
                key = panel.worker_key()
                if key is not None:
                    codec = codecs.get(key) or codecs.setdefault(key, Codec(SCHEME, key))
                    table, column = rnd.choice(PANEL_COLUMNS)
                    row = rnd.randint(1, panel.rows)
                    value = codec.seal(f"saved-{rnd.getrandbits(64):016x}".encode())
                    began = time.perf_counter()
                    try:
                        cur.execute(f"UPDATE `{table}` SET `{column}` = %s WHERE id = %s", (value, row))
                        took = time.perf_counter() - began
                        with saves.lock:
                            saves.waits.append(took)
                    except pymysql.MySQLError as exc:
                        with saves.lock:
                            saves.errors.append(f"{table}.{column}#{row}: MySQL error {exc.args[0]}")
                stop.wait(max(0.0, PERIOD_S - (time.perf_counter() - started)))
    finally:
        conn.close()


def with_writers(panel: Panel, n: int, during: callable) -> tuple[Saves, object]:  # type: ignore[valid-type]
    saves, stop = Saves(), threading.Event()
    threads = [threading.Thread(target=writer, args=(panel, saves, stop, i), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        result = during()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return saves, result


def profile(root: Path, key: str, escrow_s: float, stop_s: float, down: Path, epoch: Path) -> Path:
    import grp
    import pwd

    panel_root = root / "panel"
    (panel_root / "config").mkdir(parents=True)
    (panel_root / "config" / ".env").write_text(
        f"DB_HOST=127.0.0.1\nDB_PORT=3306\nDB_DATABASE={DB}\nDB_USERNAME=root\nDB_PASSWORD=\n"
        f"PANEL_ENCRYPTION_KEY={key}\n"
    )
    settings = {
        "panel_root": str(panel_root),
        "env_owner": pwd.getpwuid(os.getuid()).pw_name,
        "env_group": grp.getgrgid(os.getgid()).gr_name,
        "journal_dir": str(root / "journal"),
        "ciphertext": SCHEME.label,
        "restart_command": ["true"],
        "restart_stop_command": ["sh", "-c", f'date +%s.%N > "{down}"; sleep {stop_s}'],
        "restart_start_command": ["sh", "-c", f'date +%s.%N > "{epoch}"; cat "{down}" >> "{down}.log"; '
                                  f'cat "{epoch}" >> "{down}.log"; rm -f "{down}"'],
        "escrow_command": ["sh", "-c", f"cat > /dev/null; sleep {escrow_s}"],
        "escrow_label": "a slow vault",
        "hook_timeout_s": 600,
        "restart_timeout_s": 600,
    }
    path = root / "profile.toml"
    path.write_text(to_toml(settings))
    return path


def rotate(profile_path: Path) -> tuple[float, dict[str, float], dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("MYOSICAM_ENGINE_FAULT", None)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-u", "-m", "engine", "--profile", str(profile_path), "rotate-key", "--yes", "--json"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not events or events[-1].get("state") != "DONE":
        said = events[-1] if events else proc.stderr[-800:]
        raise SystemExit(f"the rotation failed (exit {proc.returncode}): {said}")
    steps = {
        str(e["name"]): e.get("elapsed_ms", 0) / 1000
        for e in events if e.get("type") == "step" and e.get("state") == "ok"
    }  # fmt: skip
    def ok(name: str) -> dict[str, object]:
        return next((e for e in events if e.get("type") == "step" and e.get("name") == name
                     and e.get("state") == "ok"), {})

    print(f"reencrypt: {ok('reencrypt').get('detail')}; sweep: {ok('sweep').get('detail')}")
    return took, steps, ok("restart")


def last_down_s(down: Path) -> float:
    """How long the panel was down in the latest restart: its stop's start to its start."""
    stopped, started = (float(x) for x in Path(f"{down}.log").read_text().split()[-2:])
    return started - stopped


def report(name: str, during: Saves, outcome: tuple[float, dict[str, float], dict[str, object]],
           down_s: float) -> float:
    took, steps, restart = outcome
    print(f"{name}: {during.summary()}")
    print(f"  rotation {took:.2f} s, engine start to exit; steps: "
          + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    stop_s = float(restart.get("stop_ms", 0)) / 1000  # type: ignore[arg-type]
    bound = steps.get("reencrypt", 0) + steps.get("verify_db", 0) + steps.get("write_env", 0) + stop_s
    share = during.worst / took
    print(f"  worst wait / rotation  {share:5.1%}  (aim <= 30 %); worst {during.worst:.2f} s against "
          f"apply + db check + .env + php-fpm stop {bound:.2f} s; the stop "
          + ("begun during the apply" if restart.get("stop_begun_during_apply") else "after the apply")
          + f"; panel down {down_s:.2f} s (php-fpm stop {stop_s:.2f} s)")
    for error in during.errors[:5]:
        print(f"  save failed: {error}")
    return share


def php_opens_everything(key: str) -> tuple[int, int]:
    """(values PHP opened with ``key``, values it did not), over every stored value."""
    opened = failed = 0
    with connect(False) as conn, conn.cursor() as cur:
        for table, column in PANEL_COLUMNS:
            cur.execute(f"SELECT `{column}` FROM `{table}` WHERE `{column}` IS NOT NULL AND `{column}` <> ''")
            values = [str(r[0]) for r in cur.fetchall()]
            for i in range(0, len(values), 20_000):
                for plain in php_decrypt(SCHEME.label, key, values[i : i + 20_000]):
                    if plain is False or plain is None:
                        failed += 1
                    else:
                        opened += 1
    return opened, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--escrow-s", type=float, default=2.0)
    parser.add_argument("--stop-s", type=float, default=2.0, help="how long the php-fpm stop takes")
    parser.add_argument("--baseline-s", type=float, default=5.0)
    args = parser.parse_args()
    key = secrets.token_hex(32)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
            root = Path(tmp)
            shape = fill(args.values, key)
            print(f"seed's shape: {shape.describe()}", flush=True)
            down, epoch = root / "panel-down", root / "panel-epoch"
            prof = profile(root, key, args.escrow_s, args.stop_s, down, epoch)
            panel = Panel(root / "panel" / "config" / ".env", down, epoch, shape.rows)
            print(f"{args.writers} writers, each saving a random encrypted value every {PERIOD_S * 1000:.0f} ms; "
                  f"escrow {args.escrow_s:.1f} s, php-fpm stop {args.stop_s:.1f} s", flush=True)
            base, _ = with_writers(panel, args.writers, lambda: time.sleep(args.baseline_s))
            print(f"no rotation ({args.baseline_s:.0f} s)   {base.summary()}", flush=True)
            after, outcome = with_writers(panel, args.writers, lambda: rotate(prof))
            report("1st: stop after the apply  ", after, outcome, last_down_s(down))  # type: ignore[arg-type]
            during, outcome = with_writers(panel, args.writers, lambda: rotate(prof))
            report("2nd: stop during the apply ", during, outcome, last_down_s(down))  # type: ignore[arg-type]
            print(f"worst wait vs no rotation: {during.worst * 1000:.0f} ms (stop after the apply: "
                  f"{after.worst * 1000:.0f} ms) / {base.worst * 1000:.0f} ms")
            new_key = parse_env(panel.env.read_text())["PANEL_ENCRYPTION_KEY"]
            opened, failed = php_opens_everything(new_key)
            print(f"PHP, key in .env: {opened:,} values open, {failed:,} do not")
            return 0 if not during.errors and not after.errors and not failed else 1
    finally:
        with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    sys.exit(main())
