"""What SSH costs the bot: request sent -> ``hello``, and -> ``result`` of a ``plan``.

    python bench/ssh_roundtrip.py [--values 10000] [--repeat 5]

Builds a panel with about ``--values`` PHP-encrypted values in the real MariaDB
(127.0.0.1:3306), starts a private OpenSSH sshd on a loopback port with the
engine as forced command (tests/support/sshd.py; needs root), then times, in
the same run and interleaved, the SSH client and the local-subprocess client:

  * ``hello``: request sent -> hello event, and -> closing result;
  * ``plan``:  request sent -> hello event, and -> closing result (the plan
    reads and decrypts every value).

Prints min / median / max per client and the SSH overhead (median difference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.inventory import PanelEntry
from bot.local_client import LocalEngineClient
from bot.ssh_client import SSHEngineClient
from engine.protocol import Request
from tests.support.panel import PANEL_COLUMNS, build_panel
from tests.support.sshd import SSHServer, engine_command

Client = SSHEngineClient | LocalEngineClient


def timed(client: Client, request: Request) -> tuple[float, float]:
    """(seconds to hello, seconds to the closing event) for one request."""
    started = time.perf_counter()
    to_hello = to_close = 0.0
    for event in client.run(request):
        now = time.perf_counter() - started
        if event["type"] == "hello":
            to_hello = now
        if event["type"] in ("result", "error"):
            to_close = now
    return to_hello, to_close


def rows_for(values: int) -> int:
    """Rows per table so that about ``values`` non-empty values are stored (8 of 10 hold one)."""
    return max(1, round(values / (len(PANEL_COLUMNS) * 0.8)))


def summary(samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"min {min(ms):7.1f}  median {statistics.median(ms):7.1f}  max {max(ms):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: it runs its own sshd", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ssh-bench-") as tmp:
        root = Path(tmp)
        (root / "panel").mkdir()
        sandbox = build_panel(root / "panel", rows=rows_for(args.values))
        sshd = SSHServer.start(root / "sshd")
        try:
            stored = sum(1 for p in sandbox.plaintexts.values() if p is not None)
            pair = sshd.authorize("bench", engine_command(sandbox.profile_path))
            panel = PanelEntry(
                name="bench", host=sshd.host, port=sshd.port, user=sshd.user,
                key_file=pair.private_path, known_hosts=sshd.known_hosts,
            )  # fmt: skip
            clients: dict[str, Client] = {
                "ssh": SSHEngineClient(panel),
                "local": LocalEngineClient(sandbox.profile_path),
            }
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for op in ("hello", "plan"):
                for name, client in clients.items():  # warm-up: caches, first connection
                    timed(client, Request(v=1, id=f"warm-{name}", op=op))
                for i in range(args.repeat):
                    for name, client in clients.items():
                        sample = timed(client, Request(v=1, id=f"b-{op}-{name}-{i}", op=op))
                        results.setdefault((op, name), []).append(sample)
            print(f"plan over {stored} stored values, {args.repeat} runs each, interleaved")
            for (op, name), samples in results.items():
                print(f"{op:5} {name:5} to hello:  {summary([h for h, _ in samples])}")
                print(f"{op:5} {name:5} to result: {summary([c for _, c in samples])}")
            for op in ("hello", "plan"):
                for part, index in (("hello", 0), ("result", 1)):
                    ssh = statistics.median(s[index] for s in results[(op, "ssh")])
                    local = statistics.median(s[index] for s in results[(op, "local")])
                    print(f"SSH overhead, {op} to {part}: {(ssh - local) * 1000:+.1f} ms (median)")
        finally:
            sshd.stop()
            sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
