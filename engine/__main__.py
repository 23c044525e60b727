"""``python -m engine``.

``--profile P serve`` (the SSH forced command, once per run) goes straight to
``engine.serve`` without building the CLI's argument parser: its start-up is on
every run's critical path.
"""

import os
import sys


def _serve_profile(argv: list[str]) -> str | None:
    """P of exactly ``--profile P serve`` (or ``--profile=P serve``), else None."""
    if len(argv) == 3 and argv[0] == "--profile" and argv[2] == "serve" and argv[1]:
        return argv[1]
    if len(argv) == 2 and argv[0].startswith("--profile=") and argv[1] == "serve" and argv[0][10:]:
        return argv[0][10:]
    return None


def _main() -> int:
    from engine.hardening import no_core_dumps

    no_core_dumps()  # before any key is read
    profile = _serve_profile(sys.argv[1:])
    if profile is not None:
        from pathlib import Path

        from engine.serve import serve

        return serve(Path(profile), sys.stdin, sys.stdout, sys.stderr)
    from engine.cli import main

    return main()


if __name__ == "__main__":
    try:
        sys.exit(_main())
    except BrokenPipeError:
        # The reader went away (``| head``); the operation itself has finished.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
