"""How fast the engine answers: process start -> ``hello`` event of ``serve``.

    python bench/engine_startup.py [--repeat 21] [--ref GIT_REF]

``serve`` is the SSH forced command: every run pays its start-up once. Times,
interleaved in the same run, from ``Popen`` to the first stdout line:

  * ``python -c pass``       the interpreter alone, to its first printed line (the floor);
  * ``python -c "import pydantic"``   what one heavy import costs on this machine;
  * ``engine serve``         this tree: request written at once, time to the hello line,
                             and to the closing result of the ``hello`` op;
  * ``engine serve @REF``    (``--ref``) the same, for the engine at a git ref
                             (``git archive`` into a temp dir, first on PYTHONPATH),
                             e.g. the commit before the lazy imports.

Both trees are byte-compiled first, as ``pip install`` does.

Prints min / median / max per line (wall time, and the CPU time each process
used, which a busy machine distorts less) and the ratios of the medians. The aim
(issue 13): ``serve`` answers ``hello`` within 150 ms of process start.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELLO = b'{"v":1,"id":"bench","op":"hello"}\n'
AIM_MS = 150.0


def interpreter(code: str) -> Callable[[], tuple[float, float, float]]:
    """``python -c CODE`` that then prints a line: (to that line, to exit)."""

    def run() -> tuple[float, float, float]:
        cpu = _children_cpu()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", f"{code}\nprint('up', flush=True)"], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        to_line = time.perf_counter() - started
        proc.stdout.read()
        proc.wait()
        return to_line, time.perf_counter() - started, _children_cpu() - cpu

    return run


def engine_serve(profile: Path, pythonpath: str | None) -> Callable[[], tuple[float, float, float]]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    argv = [sys.executable, "-u", "-m", "engine", "--profile", str(profile), "serve"]

    def run() -> tuple[float, float, float]:
        """(seconds to the hello line, to the closing line, CPU seconds of the process)."""
        cpu = _children_cpu()
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(HELLO)
        proc.stdin.close()
        first = proc.stdout.readline()
        to_hello = time.perf_counter() - started
        rest = proc.stdout.read()
        to_close = time.perf_counter() - started
        proc.wait()
        if b'"hello"' not in first or b'"result"' not in rest:
            raise SystemExit(f"unexpected answer: {first!r} {rest[:200]!r}")
        return to_hello, to_close, _children_cpu() - cpu

    return run


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export_ref(ref: str, into: Path) -> Path:
    """The tree at ``ref`` (only what ``engine`` needs), unpacked under ``into``."""
    archive = into / "ref.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", ref, "engine"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def compile_tree(tree: Path) -> None:
    """Byte-compile ``engine`` as ``pip install`` does (this shell may set
    PYTHONDONTWRITEBYTECODE, which would make every start compile the sources)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "engine")], check=True)


def summary(samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"min {min(ms):6.1f}  median {statistics.median(ms):6.1f}  max {max(ms):6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--ref", help="also time the engine at this git ref (e.g. the commit before)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config").mkdir()
        (root / "config" / ".env").write_text("APP=1\n")
        profile = root / "profile.toml"
        profile.write_text(f'panel_root = "{root}"\njournal_dir = "{root / "journal"}"\nescrow = "none"\n')
        subjects: dict[str, Callable[[], tuple[float, float, float]]] = {
            "python -c pass": interpreter("pass"),
            "python -c 'import pydantic'": interpreter("import pydantic"),
            "engine serve (this tree)": engine_serve(profile, str(REPO)),
        }
        compile_tree(REPO)
        if args.ref:
            old_tree = export_ref(args.ref, root)
            compile_tree(old_tree)
            subjects[f"engine serve @{args.ref}"] = engine_serve(profile, str(old_tree))
        hello: dict[str, list[float]] = {name: [] for name in subjects}
        close: dict[str, list[float]] = {name: [] for name in subjects}
        cpu: dict[str, list[float]] = {name: [] for name in subjects}
        for run in subjects.values():  # warm the page cache and .pyc files
            run()
        for _ in range(args.repeat):
            for name, run in subjects.items():
                to_hello, to_close, used = run()
                hello[name].append(to_hello)
                close[name].append(to_close)
                cpu[name].append(used)

    print(f"engine start-up, {args.repeat} runs each, interleaved (load average {os.getloadavg()[0]:.1f})")
    width = max(len(n) for n in subjects)
    for name in subjects:
        print(f"  {name:<{width}}  to hello  {summary(hello[name])}")
        if name.startswith("engine"):
            print(f"  {'':<{width}}  to result {summary(close[name])}")
        print(f"  {'':<{width}}  CPU used  {summary(cpu[name])}")
    floor = statistics.median(hello["python -c pass"])
    ours = statistics.median(hello["engine serve (this tree)"])
    print(f"  this tree: hello {ours * 1000:.0f} ms = {ours / floor:.1f}x the bare interpreter; "
          f"aim {AIM_MS:.0f} ms: {'met' if ours * 1000 <= AIM_MS else 'NOT met'}")
    cpu_floor = statistics.median(cpu["python -c pass"])
    cpu_ours = statistics.median(cpu["engine serve (this tree)"])
    print(f"  CPU (less sensitive to a busy machine): this tree {cpu_ours * 1000:.0f} ms = "
          f"{cpu_ours / cpu_floor:.1f}x the bare interpreter's {cpu_floor * 1000:.0f} ms")
    if args.ref:
        name = f"engine serve @{args.ref}"
        old, old_cpu = statistics.median(hello[name]), statistics.median(cpu[name])
        print(f"  @{args.ref}: hello {old * 1000:.0f} ms, CPU {old_cpu * 1000:.0f} ms; this tree answers in "
              f"{ours / old:.0%} of that time ({(old - ours) * 1000:.0f} ms sooner)")


if __name__ == "__main__":
    main()
