"""Re-encryption throughput and memory, against the real MariaDB on 127.0.0.1:3306.

    python bench/reencrypt.py [--values 100000] [--memory-scale 10] [--naive] [--rounds 3]

The panel is seeded in the seed's shape (tests/support/panel.py ``seed_shape``): the
six encrypted columns in their four tables, about 10 % NULL and 10 % empty, about a
tenth of the values 2-4 KB SSH private keys, the rest short passwords.

Prints, from one run on the same data:
  * the engine's re-encryption (the very functions a rotation runs: the unlocked
    snapshot pass of keyset reads, open + seal + round trip in a forked worker process
    pipelined with the reads and writes, staged multi-row INSERTs; then the locked
    UPDATE ... JOIN per column where the row still holds what was read, the server's
    fingerprint of each column, commit) in values/s and MB/s, and a whole
    ``rotate-key`` (preflight to DONE);
  * the physical limit of what a rotation must do: a bare read of every value (the
    same keyset SELECTs, nothing else) plus the bare bulk write of precomputed
    ciphertexts (a temporary table in the engine's staging storage engine, the same
    UPDATE ... STRAIGHT_JOIN, commit), per column; the two times add up;
  * with ``--naive``, a naive baseline: one SELECT, then decrypt, encrypt and
    UPDATE row by row;
  * pure AES-GCM decrypt + encrypt in memory, one core;
  * the ratios, and the engine's peak memory at N and at N x memory-scale values
    (Python heap of the engine process by tracemalloc, and peak RSS of the engine
    process plus its crypto worker), to show it stays flat.

Each of ``--rounds`` rounds measures the engine, the limit and a whole rotate-key
back to back, each once InnoDB has purged the previous bulk rewrite's old versions;
the ratios are taken per round and their median printed, because the machine is
shared and its load moves between rounds more than within one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.fakes.panel import PANEL_COLUMNS
from bot.fakes.panel.database import schema_statements
from engine import envfile
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import STAGING_ENGINES, ConnectionSettings, PanelDB
from engine.events import Emitter
from engine.ops.key.rotation import KeyRotation
from engine.ops.key.scan import reencrypt
from engine.profile import ColumnSpec, profile_from_dict
from tests.support.panel import SHAPE_TABLES, Shape, seed_shape, shape_value

SCHEME = Scheme.parse("iv12_tag_ct/hex")
DB = f"rotator_bench_{os.getpid()}"
BATCH = 5000


def admin() -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", user="root", autocommit=True)


SHAPE: list[Shape] = []


def fill(n: int, key: str) -> Shape:
    """About ``n`` values in the seed's shape (tests/support/panel.py ``seed_shape``)."""
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(f"USE {DB}")
        statements = schema_statements()
        for table in SHAPE_TABLES:
            cur.execute(statements[table])
    shape = seed_shape(lambda: pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False),
                       key, SCHEME.label, n)
    SHAPE[:] = [shape]
    return shape


def settle(limit_s: float = 30.0) -> None:
    """Wait until InnoDB has purged the old versions of the last bulk rewrite (its history
    list is short), so that no measurement pays for the previous one's purge."""
    deadline = time.monotonic() + limit_s
    with admin() as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT COUNT FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'")
            row = cur.fetchone()
            if row is None or int(row[0]) < 1000:
                return
            time.sleep(0.2)


def panel_db() -> PanelDB:
    return PanelDB(ConnectionSettings("127.0.0.1", 3306, DB, "root", "", None, 10.0))


def column_spec() -> list[ColumnSpec]:
    return [ColumnSpec(table=t, column=c) for t, c in PANEL_COLUMNS]


def engine_reencrypt(old: str, new: str) -> tuple[float, int]:
    db = panel_db()
    start = time.perf_counter()
    result = reencrypt(db, column_spec(), Codec(SCHEME, old), Codec(SCHEME, new), BATCH)
    db.commit()
    took = time.perf_counter() - start
    db.close()
    return took, result.n_written


def _where(column: str) -> str:
    return f"`{column}` IS NOT NULL AND `{column}` <> ''"


def naive(old: str, new: str) -> tuple[float, int]:
    src, dst = Codec(SCHEME, old), Codec(SCHEME, new)
    conn = pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False)
    start = time.perf_counter()
    count = 0
    with conn.cursor() as cur:
        for table, column in PANEL_COLUMNS:
            cur.execute(f"SELECT id, `{column}` FROM `{table}` WHERE {_where(column)}")
            rows = cur.fetchall()
            for pk, stored in rows:
                plain = src.open(stored)
                assert plain is not None
                cur.execute(f"UPDATE `{table}` SET `{column}` = %s WHERE id = %s", (dst.seal(plain), pk))
            count += len(rows)
    conn.commit()
    took = time.perf_counter() - start
    conn.close()
    return took, count


def bare_read() -> tuple[float, int]:
    """Every value read as the engine's pass reads it (keyset pages of each column, a
    consistent snapshot), nothing done with it."""
    conn = pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False)
    seen = 0
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        for table, column in PANEL_COLUMNS:
            cur.execute(f"SELECT id, `{column}` FROM `{table}` WHERE {_where(column)} ORDER BY id LIMIT %s",
                        (BATCH,))
            rows = cur.fetchall()
            while rows:
                seen += len(rows)
                if len(rows) < BATCH:
                    break
                cur.execute(
                    f"SELECT id, `{column}` FROM `{table}` WHERE id > %s AND {_where(column)} "
                    "ORDER BY id LIMIT %s", (rows[-1][0], BATCH),
                )
                rows = cur.fetchall()
    took = time.perf_counter() - start
    conn.rollback()
    conn.close()
    return took, seen


def bare_bulk_write(old: str, new: str) -> tuple[float, int]:
    """Bulk write only: ciphertexts and statements computed before the clock starts."""
    src, dst = Codec(SCHEME, old), Codec(SCHEME, new)
    conn = pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False)
    statements: dict[tuple[str, str], list[str]] = {}
    count = 0
    with conn.cursor() as cur:
        for table, column in PANEL_COLUMNS:
            cur.execute(f"SELECT id, `{column}` FROM `{table}` WHERE {_where(column)}")
            rows = [(pk, dst.seal(src.open(v) or b"")) for pk, v in cur.fetchall()]
            count += len(rows)
            statements[table, column] = [
                f"INSERT INTO `staging_{table}_{column}` (k, new_v) VALUES "
                + ",".join(f"({pk},'{ct}')" for pk, ct in rows[i : i + BATCH])
                for i in range(0, len(rows), BATCH)
            ]
    conn.commit()
    start = time.perf_counter()
    with conn.cursor() as cur:
        for table, column in PANEL_COLUMNS:
            cur.execute(
                f"CREATE TEMPORARY TABLE `staging_{table}_{column}` (PRIMARY KEY (k)){STAGING_ENGINES[0]} "
                f"SELECT id AS k, `{column}` AS new_v FROM `{table}` LIMIT 0"
            )
        conn.begin()
        for (table, column), sqls in statements.items():
            for sql in sqls:
                cur.execute(sql)
            cur.execute(
                f"UPDATE `{table}` t STRAIGHT_JOIN `staging_{table}_{column}` s ON t.id = s.k "
                f"SET t.`{column}` = s.new_v"
            )
    conn.commit()
    took = time.perf_counter() - start
    conn.close()
    return took, count


def pure_crypto(n: int) -> float:
    src_key, dst_key = secrets.token_hex(32), secrets.token_hex(32)
    src, dst = Codec(SCHEME, src_key), Codec(SCHEME, dst_key)
    rnd = random.Random(1)
    values = [src.seal(shape_value(i, rnd) or b"") for i in range(n)]  # type: ignore[arg-type]
    start = time.perf_counter()
    for v in values:
        dst.seal(src.open(v) or b"")
    return time.perf_counter() - start


def memory_child() -> None:
    """In a fresh process (keys on stdin): one engine re-encryption, then its peak memory."""
    old, new = sys.stdin.read().split()
    tracemalloc.start()
    engine_reencrypt(old, new)
    _, heap = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"heap": heap, "rss": own, "worker_rss": worker}))


def peak_memory(n: int) -> dict[str, int]:
    """Peak memory of the engine's re-encryption over ``n`` values, in a fresh process."""
    key, new = secrets.token_hex(32), secrets.token_hex(32)
    fill(n, key)
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", "--db", DB],
        input=f"{key} {new}\n", capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the memory run over {n:,} values failed: {proc.stderr[-1500:]}")
    result: dict[str, int] = json.loads(proc.stdout)
    return result


STEPS: dict[str, float] = {}
NEW_KEY: list[str] = []


def _key_after_rotation() -> str:
    return NEW_KEY.pop()


def whole_rotation(key: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "panel"
        (root / "config").mkdir(parents=True)
        (root / "config" / ".env").write_text(
            f"DB_HOST=127.0.0.1\nDB_PORT=3306\nDB_DATABASE={DB}\nDB_USERNAME=root\nDB_PASSWORD=\n"
            f"PANEL_ENCRYPTION_KEY={key}\n"
        )
        import grp
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        profile = profile_from_dict(
            {
                "panel_root": str(root),
                "escrow": "none",
                "restart_command": ["true"],
                "env_owner": user,
                "env_group": group,
                "journal_dir": str(Path(tmp) / "journal"),
                "ciphertext": SCHEME.label,
            }
        )
        start = time.perf_counter()
        def timed(event: dict[str, object]) -> None:
            if event.get("type") == "step" and event.get("state") == "ok":
                STEPS[str(event["name"])] = int(event.get("elapsed_ms") or 0) / 1000  # type: ignore[call-overload]

        emitter = Emitter("bench", [timed])
        result = KeyRotation(Context(profile, emitter), rotation_id="bench").run()
        took = time.perf_counter() - start
        assert result["state"] == "DONE", result
        NEW_KEY.append(envfile.read_key(root / "config" / ".env", "PANEL_ENCRYPTION_KEY"))
        return took


def main() -> None:
    global DB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--memory-scale", type=int, default=10, help="0 skips the memory runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also run the (slow) row-by-row baseline")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        DB = args.db
        memory_child()
        return
    n = args.values
    try:
        keys = [secrets.token_hex(32)]
        shape = fill(n, keys[-1])
        n = shape.total
        print(f"seed's shape: {shape.describe()} (base64 AES-256-GCM), batches of {BATCH:,}")
        rounds: list[dict[str, float]] = []
        for i in range(args.rounds):
            keys.append(secrets.token_hex(32))
            settle()
            took, written = engine_reencrypt(keys[-2], keys[-1])
            assert written == n, (written, n)
            settle()
            t_read = bare_read()[0]
            keys.append(secrets.token_hex(32))
            settle()
            t_write = bare_bulk_write(keys[-2], keys[-1])[0]
            settle()
            t_whole = whole_rotation(keys[-1])
            keys.append(_key_after_rotation())
            rounds.append({"engine": took, "read": t_read, "write": t_write, "limit": t_read + t_write,
                           "whole": t_whole})
            print(f"round {i + 1}: engine {took:5.2f} s · read {t_read:5.2f} s + write {t_write:5.2f} s = limit "
                  f"{t_read + t_write:5.2f} s ({(t_read + t_write) / took:4.0%}) · whole rotate-key {t_whole:5.2f} s "
                  f"({took / t_whole:4.0%}; " + ", ".join(f"{k} {v:.2f}" for k, v in STEPS.items()) + ")",
                  flush=True)
        t_naive = None
        if args.naive:
            keys.append(secrets.token_hex(32))
            t_naive, _ = naive(keys[-2], keys[-1])
        t_crypto = pure_crypto(n)

        megabytes = shape.stored_bytes / 1e6

        def rate(t: float) -> str:
            return f"{n / t:>10,.0f} values/s {megabytes / t:6.1f} MB/s ({t:6.2f} s)"

        def median(key: str) -> float:
            return statistics.median(r[key] for r in rounds)

        print(f"medians of {len(rounds)} rounds (each round measures everything back to back):")
        print(f"engine re-encryption         {rate(median('engine'))}")
        print(f"engine whole rotate-key      {rate(median('whole'))}  preflight..DONE")
        print(f"bare read                    {rate(median('read'))}  the same keyset SELECTs, snapshot")
        print(f"bare bulk write              {rate(median('write'))}  precomputed ciphertexts")
        print(f"read + write limit           {rate(median('limit'))}  the two above, back to back")
        if t_naive is not None:
            print(f"naive row-by-row baseline    {rate(t_naive)}")
        print(f"pure AES-GCM open+seal       {n / t_crypto:>10,.0f} values/s  one core, in memory, same shape")
        limit_ratio = statistics.median(r["limit"] / r["engine"] for r in rounds)
        whole_ratio = statistics.median(r["engine"] / r["whole"] for r in rounds)
        print(f"engine / read+write limit    {limit_ratio:5.0%}    (median of per-round ratios; aim >= 80%)")
        print(f"whole rotate-key / engine    {whole_ratio:5.0%}    (median of per-round ratios; aim >= 50%)")
        if t_naive is not None:
            print(f"engine / naive               {t_naive / median('engine'):5.1f}x")
        base, scale = n, args.memory_scale
        if scale:
            small = peak_memory(base)
            large = peak_memory(base * scale)
            for what, name in (("heap", "engine Python heap"), ("rss", "engine process RSS"),
                               ("worker_rss", "crypto worker RSS")):
                print(
                    f"peak {name:<23} {small[what] / 1e6:7.1f} MB at {base:,} values, "
                    f"{large[what] / 1e6:7.1f} MB at {base * scale:,}: {large[what] / small[what]:4.2f}x "
                    f"for {scale}x the values (aim < 2x)"
                )
    finally:
        with admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
