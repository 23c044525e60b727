"""``python -I -m engine``: the command line people use on the panel host.

With ``--json`` it prints the protocol's JSON Lines; otherwise readable
progress (steps, counts, a progress bar for re-encryption, elapsed times) and
a summary. The exit status follows ``EXIT_STATUS`` (printed by ``--help``),
whatever the kind of mistake.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from engine import __version__
from engine.errors import EngineError, ProfileError
from engine.events import Emitter, json_sink
from engine.protocol import PROTOCOL_VERSION, Request, error_event_of, result_event
from engine.protocol.codes import EXIT_FAILED, EXIT_NEEDS_RECOVER, EXIT_OK, EXIT_UNVERIFIED, EXIT_USAGE
from engine.protocol.outcome import Outcome

if TYPE_CHECKING:
    from engine.ops import Implementation
    from engine.profile import Profile

__all__ = ["EXIT_FAILED", "EXIT_NEEDS_RECOVER", "EXIT_OK", "EXIT_STATUS", "EXIT_UNVERIFIED", "EXIT_USAGE", "main"]
EXIT_STATUS = """\
exit status:
  0  done and verified; --dry-run: it would succeed; recover: nothing is unfinished
     and every stored value opens with the key in .env; probe: one layout opens them all
  1  failed: rolled back and verified, or nothing was changed (answering "no" too)
     rotate-incident: a part failed (the result says which parts are done and what is left)
  2  bad usage or settings: the command line, the profile, or a file or user it
     names (a missing .env, an unknown env_owner, a bad column); nothing was changed
  3  a rotation is unfinished or its rollback failed: run recover
     status: something is unfinished (a rotation, or a temporary file a killed run left);
     a rotation running now is not unfinished: 0
  4  rotate-agent: no agent failed, but some could not be verified ("could not verify")"""
MARKS = {"ok": "✔", "failed": "✖", "skipped": "–", "started": "▶"}


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per operation the registry gives a command line, then ``serve``."""
    from engine.ops import IMPLEMENTATIONS

    parser = argparse.ArgumentParser(
        prog="myosicam-rotator",
        description="Rotate a MyOsicam panel's PANEL_ENCRYPTION_KEY safely, on the panel host.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", required=True, type=Path, help="panel profile (TOML)")
    parser.add_argument("--version", action="version", version=f"myosicam-rotator engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for implementation in IMPLEMENTATIONS.values():
        if implementation.help is None:
            continue
        p = sub.add_parser(implementation.name, help=implementation.help)
        for flags, options in implementation.options:
            p.add_argument(*flags, **options)
    sub.add_parser("serve", help="speak the bot protocol on stdin/stdout (SSH forced command)")
    return parser


class HumanPrinter:
    """Readable progress for a person at a terminal."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out, self.err = out, err
        self.tty = err.isatty()
        self._bar_shown = False
        #: details of failed steps already printed, so the closing error is not said twice
        self.failures: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "progress":
            self._progress(event)
            return
        self._clear_bar()
        if kind == "step":
            state = event.get("state", "")
            if state == "started":
                return
            took = f" · {event['elapsed_ms'] / 1000:.2f} s" if "elapsed_ms" in event else ""
            name = str(event.get("name", "")).replace("_", " ")
            if event.get("agent"):
                name = f"[{event['agent']}] {name}"
            if event.get("part"):
                name = f"{event['part']}: {name}"
            detail = event.get("detail") or ""
            if state == "failed":
                self.failures.append(str(detail))
            self.out.write(f"{MARKS.get(state, '·')} {name}: {detail}{took}\n")
        self.out.flush()

    def _progress(self, event: dict[str, Any]) -> None:
        done, total = int(event.get("done", 0)), max(int(event.get("total", 0)), 1)
        if not self.tty:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        self.err.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
        self.err.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.err.write("\r" + " " * 60 + "\r")
            self._bar_shown = False


def _needs_confirmation(args: argparse.Namespace, implementation: Implementation) -> bool:
    return implementation.confirm and not (args.yes or args.dry_run)


def _ask(question: str, stdin: IO[str], out: IO[str]) -> bool:
    out.write(f"{question} Type 'yes' to go on: ")
    out.flush()
    return stdin.readline().strip().lower() == "yes"


def main(
    argv: list[str] | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from engine.serve import serve

        return serve(args.profile, stdin, stdout, stderr)
    # Imported here, not at the top: `serve` answers `hello` before it needs them.
    from engine.profile import load_profile

    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    from engine.ops import IMPLEMENTATIONS

    op = args.command
    implementation = IMPLEMENTATIONS[op]
    confirm = _needs_confirmation(args, implementation)
    if confirm and not stdin.isatty():
        stderr.write(f"Refusing to {op} without --yes when not run from a terminal; nothing changed.\n")
        return EXIT_USAGE
    approved: dict[str, Any] = {}
    if confirm:
        # the plan first (read-only), then the question; the run must match what was shown
        status, plan = _run(args, profile, "plan", {"plan_for": op}, stdout, stderr)
        if plan is None:
            return status
        if not _ask(f"Run {op} on panel {plan.get('panel', profile.name)} as planned above?", stdin, stderr):
            stderr.write("Aborted; nothing changed.\n")
            return EXIT_FAILED
        approved = implementation.kind_module().approved(plan)
    status, _ = _run(args, profile, op, approved, stdout, stderr)
    return status


def _run(
    args: argparse.Namespace,
    profile: Profile,
    op: str,
    fields: dict[str, Any],
    stdout: TextIO,
    stderr: TextIO,
) -> tuple[int, dict[str, Any] | None]:
    """One operation with its events printed; (exit status, result or None on error)."""
    from engine.operator import command_line_operator
    from engine.ops import IMPLEMENTATIONS, run_operation
    from engine.ops.approval import new_rotation_id

    rotation_id = new_rotation_id()
    printer = None if args.json else HumanPrinter(stdout, stderr)
    emitter = Emitter(rotation_id, [printer or json_sink(stdout)])
    options: dict[str, Any] = {
        "dry_run": getattr(args, "dry_run", False),
        "rollback": getattr(args, "rollback", False),
        "reason": getattr(args, "reason", None),
        "agents": getattr(args, "agents", None) or None,
        "all_agents": getattr(args, "all_agents", False),
        "incident": getattr(args, "incident", False),
        "db_password": getattr(args, "db_password", False),
        "plan_for": getattr(args, "plan_for", None),
        **fields,
    }
    if "plan_for" in fields:  # the plan a confirmation shows: read-only, whatever the run's options
        options.update(dry_run=False, reason=None)
    try:
        request = Request(v=PROTOCOL_VERSION, id=rotation_id, op=op, requested_by=command_line_operator(), **options)
        data = run_operation(request, profile, emitter)
    except EngineError as exc:
        outcome = Outcome.of(emitter.emit(error_event_of(exc)), op)
        if printer is not None:
            if exc.message not in printer.failures:
                stderr.write(f"✖ {exc.message}\n")
            if exc.rolled_back:
                stderr.write("↩ Rolled back: the panel is as it was, verified under the old key.\n")
        return outcome.exit_status, None
    outcome = Outcome.of(emitter.emit(result_event(op, **data)))
    if printer is not None:
        IMPLEMENTATIONS[op].print_result(stdout, request, data, profile)
        stdout.flush()
    return outcome.exit_status, data
