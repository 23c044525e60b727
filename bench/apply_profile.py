"""Where a rotation's time goes, statement by statement, with panel writers running.

    python bench/apply_profile.py [--values 100000] [--writers 4] [--escrow-s 2] [--stop-s 2]

The panel and the writers of bench/write_stall.py (the seed's shape, four writers
saving every 5 ms); the engine's rotate-key runs in this process, its database calls
timed. Printed: every kind of statement (grouped by what the engine says it is doing),
its count and total time, per step; and how long the rows stayed locked (from the
first statement of the locked apply to the commit), against the rotation's duration.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import write_stall as ws

from engine import db as engine_db
from engine.context import Context
from engine.events import Emitter
from engine.ops.key.rotation import KeyRotation
from engine.profile import load_profile

TIMES: dict[tuple[str, str], list[float]] = defaultdict(list)
STEP = ["-"]
MARKS: dict[str, float] = {}


def _timed(name: str) -> None:
    original = getattr(engine_db.PanelDB, name)

    def wrapper(self: engine_db.PanelDB, *args: Any, **kwargs: Any) -> Any:
        doing = kwargs.get("doing") or name
        sql = str(args[0]) if args and isinstance(args[0], str) else ""
        kind = sql.split(" ", 1)[0] if sql else name
        if STEP[0] == "reencrypt" and kind == "UPDATE" and "applied = 1" in sql and "locked" not in MARKS:
            MARKS["locked"] = time.perf_counter()
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            phase = STEP[0] + ("/locked" if "locked" in MARKS and "committed" not in MARKS else "")
            TIMES[phase, f"{name}: {kind} {doing}"].append(time.perf_counter() - started)

    setattr(engine_db.PanelDB, name, wrapper)


def _timed_commit() -> None:
    original = engine_db.PanelDB.commit

    def wrapper(self: engine_db.PanelDB) -> None:
        started = time.perf_counter()
        original(self)
        phase = STEP[0] + ("/locked" if "locked" in MARKS and "committed" not in MARKS else "")
        TIMES[phase, "commit"].append(time.perf_counter() - started)
        if STEP[0] == "restart" and "committed" not in MARKS:
            MARKS["committed"] = time.perf_counter()

    engine_db.PanelDB.commit = wrapper  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--escrow-s", type=float, default=2.0)
    parser.add_argument("--stop-s", type=float, default=2.0)
    args = parser.parse_args()
    for name in ("execute", "query", "stage"):
        _timed(name)
    _timed_commit()
    key = secrets.token_hex(32)
    steps: dict[str, float] = {}

    def on_event(event: dict[str, object]) -> None:
        if event.get("type") == "step":
            if event.get("state") == "started":
                STEP[0] = str(event["name"])
            elif event.get("state") == "ok":
                steps[str(event["name"])] = int(event.get("elapsed_ms") or 0) / 1000  # type: ignore[call-overload]

    try:
        with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
            root = Path(tmp)
            shape = ws.fill(args.values, key)
            print(f"seed's shape: {shape.describe()}", flush=True)
            down, epoch = root / "panel-down", root / "panel-epoch"
            prof = ws.profile(root, key, args.escrow_s, args.stop_s, down, epoch)
            panel = ws.Panel(root / "panel" / "config" / ".env", down, epoch, shape.rows)

            def rotate() -> float:
                started = time.perf_counter()
                ctx = Context(load_profile(prof), Emitter("bench", [on_event]))
                result = KeyRotation(ctx, rotation_id="profile").run()
                assert result["state"] == "DONE", result
                return time.perf_counter() - started

            during, took = ws.with_writers(panel, args.writers, rotate)
            print(f"during the rotation   {during.summary()}")
            print(f"rotation {took:.2f} s; steps " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
            locked = MARKS.get("committed", 0) - MARKS.get("locked", 0)
            print(f"rows locked (first apply statement to commit) {locked:.2f} s = {locked / took:.0%} "
                  f"of the rotation; worst save {during.worst:.2f} s")
            for (step, what), times in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
                if sum(times) >= 0.02:
                    print(f"  {step:<17} {sum(times):7.3f} s  {len(times):5d}x  {what[:110]}")
            return 0
    finally:
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {ws.DB}")


if __name__ == "__main__":
    sys.exit(main())
