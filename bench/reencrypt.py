"""Re-encryption throughput and memory, against the real MariaDB on 127.0.0.1:3306.

    python bench/reencrypt.py [--values 100000] [--memory-scale 10]

Prints, from one run on the same data:
  * the engine's re-encryption (the very function a rotation runs: locked keyset
    reads, decrypt + seal in a worker thread, staged multi-row INSERTs, one
    UPDATE ... JOIN with compare-and-swap, commit) in values/s, and a whole
    ``rotate-key`` (preflight to DONE, with its three verification passes);
  * a naive baseline: one SELECT, then decrypt, encrypt and UPDATE row by row;
  * the raw limit: a bare bulk write of precomputed ciphertexts through a
    temporary table and UPDATE ... JOIN (no reads, no crypto);
  * pure AES-GCM decrypt + encrypt in memory;
  * the ratios, and the engine's peak Python memory (tracemalloc) at N and at
    N x memory-scale values, to show it stays flat.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import ConnectionSettings, PanelDB
from engine.events import Emitter
from engine.profile import profile_from_dict
from engine.rotation import KeyRotation
from engine.scan import reencrypt

SCHEME = Scheme.parse("iv12_tag_ct/hex")
DB = f"rotator_bench_{os.getpid()}"


def admin() -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", user="root", autocommit=True)


def fill(n: int, key: str) -> None:
    codec = Codec(SCHEME, key)
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(
            f"CREATE TABLE {DB}.oscam_installs (id INT AUTO_INCREMENT PRIMARY KEY, "
            "name VARCHAR(100), webif_password TEXT NULL) ENGINE=InnoDB"
        )
        chunk = 20_000
        for start in range(0, n, chunk):
            rows = [
                (f"install-{i}", codec.seal(f"webif-pw-{i}-{secrets.token_hex(6)}".encode()))
                for i in range(start, min(n, start + chunk))
            ]
            cur.executemany(
                f"INSERT INTO {DB}.oscam_installs (name, webif_password) VALUES (%s, %s)", rows
            )


def panel_db() -> PanelDB:
    return PanelDB(ConnectionSettings("127.0.0.1", 3306, DB, "root", "", None, 10.0))


def column_spec():  # type: ignore[no-untyped-def]
    from engine.profile import ColumnSpec

    return [ColumnSpec(table="oscam_installs", column="webif_password")]


def engine_reencrypt(old: str, new: str) -> tuple[float, int]:
    db = panel_db()
    start = time.perf_counter()
    result = reencrypt(db, column_spec(), Codec(SCHEME, old), Codec(SCHEME, new), 5000, lock_rows=True)
    db.commit()
    took = time.perf_counter() - start
    db.close()
    return took, result.n_written


def naive(old: str, new: str) -> tuple[float, int]:
    src, dst = Codec(SCHEME, old), Codec(SCHEME, new)
    conn = pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False)
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("SELECT id, webif_password FROM oscam_installs WHERE webif_password IS NOT NULL")
        rows = cur.fetchall()
        for pk, stored in rows:
            plain = src.open(stored)
            assert plain is not None
            cur.execute("UPDATE oscam_installs SET webif_password = %s WHERE id = %s", (dst.seal(plain), pk))
    conn.commit()
    took = time.perf_counter() - start
    conn.close()
    return took, len(rows)


def raw_limit(old: str, new: str) -> tuple[float, int]:
    """Bulk write only: ciphertexts computed before the clock starts."""
    src, dst = Codec(SCHEME, old), Codec(SCHEME, new)
    conn = pymysql.connect(host="127.0.0.1", user="root", database=DB, autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT id, webif_password FROM oscam_installs")
        rows = [(pk, dst.seal(src.open(v) or b"")) for pk, v in cur.fetchall()]
    conn.commit()
    statements = []
    for i in range(0, len(rows), 5000):
        statements.append(
            "INSERT INTO staging (k, new_v) VALUES "
            + ",".join(f"({pk},'{ct}')" for pk, ct in rows[i : i + 5000])
        )
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMPORARY TABLE staging (PRIMARY KEY (k)) "
            "SELECT id AS k, webif_password AS new_v FROM oscam_installs LIMIT 0"
        )
        conn.begin()
        for sql in statements:
            cur.execute(sql)
        cur.execute(
            "UPDATE oscam_installs t JOIN staging s ON t.id = s.k SET t.webif_password = s.new_v"
        )
    conn.commit()
    took = time.perf_counter() - start
    conn.close()
    return took, len(rows)


def pure_crypto(n: int) -> float:
    src_key, dst_key = secrets.token_hex(32), secrets.token_hex(32)
    src, dst = Codec(SCHEME, src_key), Codec(SCHEME, dst_key)
    values = [src.seal(f"webif-pw-{i}".encode()) for i in range(n)]
    start = time.perf_counter()
    for v in values:
        dst.seal(src.open(v) or b"")
    return time.perf_counter() - start


def peak_memory(n: int) -> int:
    """Peak Python allocation of the engine's re-encryption over ``n`` values."""
    key, new = secrets.token_hex(32), secrets.token_hex(32)
    fill(n, key)
    tracemalloc.start()
    engine_reencrypt(key, new)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


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
                "restart_command": ["true"],
                "env_owner": user,
                "env_group": group,
                "journal_dir": str(Path(tmp) / "journal"),
                "ciphertext": SCHEME.label,
            }
        )
        start = time.perf_counter()
        KeyRotation(Context(profile, Emitter("bench")), rotation_id="bench").run()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--memory-scale", type=int, default=10)
    parser.add_argument("--memory-base", type=int, default=20_000)
    args = parser.parse_args()
    n = args.values
    try:
        k1, k2, k3, k4 = (secrets.token_hex(32) for _ in range(4))
        print(f"values: {n:,} in MariaDB (one TEXT column, base64 AES-256-GCM)")
        fill(n, k1)
        t_engine, written = engine_reencrypt(k1, k2)
        assert written == n, (written, n)
        t_naive, _ = naive(k2, k3)
        t_raw, _ = raw_limit(k3, k4)
        t_crypto = pure_crypto(n)
        fill(n, k1)
        t_whole = whole_rotation(k1)

        def rate(t: float) -> str:
            return f"{n / t:>10,.0f} values/s  ({t:6.2f} s)"

        print(f"engine re-encryption       {rate(t_engine)}")
        print(f"engine whole rotate-key    {rate(t_whole)}  preflight..DONE, 3 verification passes")
        print(f"naive row-by-row baseline  {rate(t_naive)}")
        print(f"raw bulk-write limit       {rate(t_raw)}")
        print(f"pure AES-GCM open+seal     {rate(t_crypto)}")
        print(f"engine / naive             {t_naive / t_engine:5.2f}x   (aim >= 3x)")
        print(f"engine / raw limit         {t_raw / t_engine:5.0%}    (aim >= 80%)")
        base, scale = args.memory_base, args.memory_scale
        small = peak_memory(base)
        large = peak_memory(base * scale)
        print(
            f"peak memory                {small / 1e6:6.1f} MB at {base:,} values, "
            f"{large / 1e6:6.1f} MB at {base * scale:,}: {large / small:4.2f}x for {scale}x the values"
        )
    finally:
        with admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()
