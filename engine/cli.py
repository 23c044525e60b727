"""``python -I -m engine``: the command line people use on the panel host.

With ``--json`` it prints the protocol's JSON Lines; otherwise readable
progress (steps, counts, a progress bar for re-encryption, elapsed times) and
a summary. Exit status: 0 verified done (or, for ``--dry-run``, would
succeed); 1 failed (and rolled back, or changed nothing); 2 bad usage or
settings; 3 failed and NOT rolled back: ``recover`` is needed; 4 (rotate-agent)
no agent failed but some could not be verified ("could not verify").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any, TextIO

from engine import __version__
from engine.errors import EngineError, ProfileError, RollbackFailedError
from engine.events import Emitter, json_sink
from engine.protocol import PROTOCOL_VERSION, Request, error_event, result_event

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NEEDS_RECOVER, EXIT_UNVERIFIED = 0, 1, 2, 3, 4
MARKS = {"ok": "✔", "failed": "✖", "skipped": "–", "started": "▶"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -I -m engine",
        description="Rotate a MyOsicam panel's PANEL_ENCRYPTION_KEY safely, on the panel host.",
        epilog="Exit status: 0 done and verified, 1 failed (rolled back or nothing changed), "
        "2 bad usage or settings, 3 failed and not rolled back (run recover), "
        "4 rotate-agent could not verify every agent.",
    )
    parser.add_argument("--profile", required=True, type=Path, help="panel profile (TOML)")
    parser.add_argument("--version", action="version", version=f"myosicam-rotator engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("probe", help="detect the ciphertext layout and count stored values (read-only)")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("plan", help="what rotate-key would do (read-only)")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("rotate-key", help="rotate PANEL_ENCRYPTION_KEY")
    p.add_argument("--dry-run", action="store_true", help="run the preflight only; change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")
    p.add_argument("--reason", help="why (kept in the journal)")

    p = sub.add_parser("recover", help="converge after an interrupted rotation")
    p.add_argument("--rollback", action="store_true", help="always go back to the old key")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("status", help="the unfinished rotation, if any, and recent ones")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("rotate-agent", help="rotate agent tokens by re-running the bootstrap")
    p.add_argument("agents", nargs="*", help="agent names (or --all)")
    p.add_argument("--all", action="store_true", dest="all_agents", help="every agent")
    p.add_argument("--dry-run", action="store_true", help="check every agent is reachable; change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    sub.add_parser("serve", help="speak the bot protocol on stdin/stdout (SSH forced command)")
    return parser


class HumanPrinter:
    """Readable progress for a person at a terminal."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out, self.err = out, err
        self.tty = err.isatty()
        self._bar_shown = False

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
            detail = event.get("detail") or ""
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


def print_summary(out: IO[str], op: str, data: dict[str, Any]) -> None:
    if op == "rotate-key" and data.get("dry_run"):
        out.write(f"Dry run: {data['total']:,} values would be re-encrypted ({data['scheme']}). "
                  "Nothing was changed.\n")
    elif op == "rotate-key":
        out.write(
            f"Done · old key {data['old_fingerprint']}… → new key {data['new_fingerprint']}… · "
            f"{data['total']:,} values · {data['duration_ms'] / 1000:.1f} s · rotation {data['rotation_id']}\n"
        )
    elif op == "rotate-agent":
        for agent in data.get("agents") or []:
            mark = "✔" if agent.get("ok") else ("?" if agent.get("outcome") == "unverified" else "✖")
            detail = agent.get("outcome", "")
            if agent.get("ok") and agent.get("new_fingerprint"):
                detail += f" · token {agent.get('old_fingerprint')}… → {agent['new_fingerprint']}…"
            elif not agent.get("ok"):
                detail += f" at {agent.get('failed_step')}: {agent.get('error')}"
                if agent.get("old_token_valid"):
                    detail += " (its old token still works)"
            out.write(f"{mark} {agent.get('name')}: {detail}\n")
        out.write(f"{data.get('message', '')}\n")
    elif op == "recover":
        if data.get("direction"):
            out.write(f"Recovered rotation {data['rotation_id']}: {data['state']} ({data['direction']}).\n")
        for agent in data.get("agents") or []:
            out.write(
                f"Closed agent rotation {agent['rotation_id']} of {agent['agent']} (stopped at {agent['state']}): "
                f"install token {agent['install_token']}, the agent holds the {agent.get('token', 'unknown')} token\n"
            )
    elif op in ("plan", "probe"):
        for label, count in (data.get("columns") or {}).items():
            out.write(f"  {label}: {count:,}\n")
        for table in data.get("skipped") or []:
            out.write(f"  {table}: table not present, skipped\n")
        if data.get("scheme"):
            out.write(f"Layout: {data['scheme']} ({data.get('scheme_description', '')})\n")
        if data.get("problem"):
            out.write(f"Problem: {data['problem']}\n")
        if op == "probe":
            for scheme, per_column in (data.get("opens") or {}).items():
                opened = sum(per_column.values())
                if opened:
                    out.write(f"  candidate {scheme}: opens {opened:,}\n")
    elif op == "status":
        unfinished = data.get("unfinished")
        if unfinished:
            out.write(
                f"UNFINISHED rotation {unfinished['rotation_id']} stopped at {unfinished['state']}: "
                "run recover\n"
            )
        else:
            out.write("No unfinished rotation.\n")
        for agent in data.get("unfinished_agents") or []:
            out.write(
                f"UNFINISHED agent rotation {agent['rotation_id']} of {agent['agent']} stopped at "
                f"{agent['state']} (the agent holds the {agent.get('token', 'unknown')} token, install token "
                f"{agent.get('install_token', 'unknown')}): run rotate-agent {agent['agent']} again to resume "
                "it, or recover to close it\n"
            )
        for item in data.get("recent") or []:
            out.write(f"  {item['rotation_id']}: {item['state']} ({item['old_fingerprint']}… → "
                      f"{item['new_fingerprint']}…)\n")
        runs = [r for r in data.get("runs") or [] if r.get("event") == "finished"]
        if runs:
            out.write("Runs recorded by this host's engine (runs.jsonl), latest last:\n")
        for run in runs:
            out.write(f"  {_run_line(run)}\n")
    out.flush()


def _run_line(run: dict[str, Any]) -> str:
    """One line of the host's run record: when, what, who, which plan, how it ended."""
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(run.get("ts", 0)) / 1000))
    outcome = "ok" if run.get("ok") else f"failed ({run.get('code') or run.get('state')})"
    approvers = ",".join(run.get("approved_by") or []) or "-"
    plan = str(run.get("plan_hash") or "-")[:12]
    return (
        f"{when} UTC {run.get('rotation_id')} {run.get('op')}: {outcome} · requested by "
        f"{run.get('requested_by') or '-'} · approved by {approvers} · plan {plan}"
    )


def _confirm(args: argparse.Namespace, stdin: IO[str], out: IO[str]) -> bool:
    if getattr(args, "yes", False) or getattr(args, "dry_run", False):
        return True
    if not stdin.isatty():
        out.write("Refusing to rotate without --yes when not run from a terminal.\n")
        return False
    out.write(f"Rotate on the panel of {args.profile}? Type 'yes' to go on: ")
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
    from engine.ops import new_rotation_id, run_operation
    from engine.profile import load_profile

    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    op = args.command
    if op in ("rotate-key", "rotate-agent") and not _confirm(args, stdin, stderr):
        return EXIT_USAGE
    rotation_id = new_rotation_id()
    sink = json_sink(stdout) if args.json else HumanPrinter(stdout, stderr)
    emitter = Emitter(rotation_id, [sink])
    request = Request(
        v=PROTOCOL_VERSION,
        id=rotation_id,
        op=op,
        dry_run=getattr(args, "dry_run", False),
        rollback=getattr(args, "rollback", False),
        reason=getattr(args, "reason", None),
        agents=getattr(args, "agents", None) or None,
        all_agents=getattr(args, "all_agents", False),
        requested_by="cli",
    )
    try:
        data = run_operation(request, profile, emitter)
    except EngineError as exc:
        emitter.emit(
            error_event(
                exc.code, exc.message, retryable=exc.retryable, rolled_back=exc.rolled_back, **exc.details
            )
        )
        if not args.json:
            stderr.write(f"✖ {exc.message}\n")
            if exc.rolled_back:
                stderr.write("↩ Rolled back: the panel is as it was, verified under the old key.\n")
        if isinstance(exc, RollbackFailedError):
            return EXIT_NEEDS_RECOVER
        if isinstance(exc, ProfileError):
            return EXIT_USAGE
        return EXIT_FAILED
    emitter.emit(result_event(op, **data))
    if not args.json:
        print_summary(stdout, op, data)
    if op == "rotate-agent" and not data.get("ok", True):
        return EXIT_UNVERIFIED if data.get("code") == "agent_unverified" else EXIT_FAILED
    return EXIT_OK
