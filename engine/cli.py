"""``python -I -m engine``: the command line people use on the panel host.

With ``--json`` it prints the protocol's JSON Lines; otherwise readable
progress (steps, counts, a progress bar for re-encryption, elapsed times) and
a summary. The exit status follows ``EXIT_STATUS`` (printed by ``--help``),
whatever the kind of mistake.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Any, TextIO

from engine import __version__
from engine.errors import EngineError, ProfileError
from engine.events import Emitter, json_sink
from engine.protocol import PROTOCOL_VERSION, Request, error_event_of, result_event
from engine.protocol.codes import EXIT_FAILED, EXIT_NEEDS_RECOVER, EXIT_OK, EXIT_UNVERIFIED, EXIT_USAGE
from engine.protocol.outcome import Outcome
from engine.protocol.words import plural

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
    parser = argparse.ArgumentParser(
        prog="myosicam-rotator",
        description="Rotate a MyOsicam panel's PANEL_ENCRYPTION_KEY safely, on the panel host.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", required=True, type=Path, help="panel profile (TOML)")
    parser.add_argument("--version", action="version", version=f"myosicam-rotator engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("probe", help="detect the ciphertext layout and count stored values (read-only)")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("plan", help="what rotate-key (or, with agents, rotate-agent) would do (read-only)")
    p.add_argument("agents", nargs="*", help="plan rotate-agent for these agents (or --all)")
    p.add_argument("--all", action="store_true", dest="all_agents", help="plan rotate-agent for every agent")
    p.add_argument("--incident", action="store_true", help="plan rotate-incident (everything a leaked .env exposed)")
    p.add_argument("--db-password", action="store_true", help="plan rotate-db-password")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")

    p = sub.add_parser("rotate-key", help="rotate PANEL_ENCRYPTION_KEY")
    p.add_argument("--dry-run", action="store_true", help="run the preflight only; change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")
    p.add_argument("--reason", help="why (kept in the journal)")

    p = sub.add_parser("rotate-db-password", help="rotate the panel's database password (DB_PASSWORD)")
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

    p = sub.add_parser(
        "rotate-incident",
        help="after a leaked .env: rotate the database password, the key and every agent token, in that order",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan only; change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON Lines events")
    p.add_argument("--reason", help="why (kept in the journal)")

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


def print_incident(out: IO[str], data: dict[str, Any]) -> None:
    """The incident plan or result: each part, then what a person must rotate elsewhere."""
    marks = {"done": "✔", "skipped": "–", "not_started": "·", "rolled_back": "↩", "failed": "✖",
             "needs_recover": "✖"}  # fmt: skip
    out.write(f"Panel {data.get('panel', '')}: incident rotation\n")
    for part in data.get("parts") or []:
        state = part.get("state")
        head = f"{marks.get(state, '•')} {part.get('title')}" + (f": {state.replace('_', ' ')}" if state else "")
        if part.get("part") == "db_password" and "db_user" in part:
            head += f" (database user {part['db_user']})"
        if part.get("part") == "key" and "total" in part and "state" not in part:
            head += f": {_values(part['total'])} in {plural(len(part.get('columns') or {}), 'column')}"
        if part.get("part") == "agents" and "state" not in part:
            head += f": {plural(part.get('total', 0), 'agent')}"
        if part.get("new_fingerprint"):
            head += f" · {part.get('old_fingerprint')}… → {part['new_fingerprint']}…"
        if part.get("detail") or part.get("error"):
            head += f" · {part.get('error') or part.get('detail')}"
        out.write(head + "\n")
        if "state" not in part:
            for label, count in (part.get("columns") or {}).items():
                out.write(f"    {label}: {count:,}\n")
    out.write("Not rotated by this tool:\n")
    for item in data.get("manual") or []:
        out.write(f"  {item['name']}: {item['action']}\n")
        if item.get("message"):
            out.write(f"    message: {item['message']}\n")
    if data.get("message"):
        out.write(f"{data['message']}\n")


def print_summary(out: IO[str], op: str, data: dict[str, Any]) -> None:
    if op == "rotate-incident" or (op == "plan" and data.get("incident")):
        print_incident(out, data)
    elif op == "rotate-key" and data.get("dry_run"):
        out.write(f"Dry run: {data['total']:,} values would be re-encrypted ({data['scheme']}). "
                  "Nothing was changed.\n")
    elif op == "rotate-key":
        out.write(
            f"Done · old key {data['old_fingerprint']}… → new key {data['new_fingerprint']}… · "
            f"{data['total']:,} values · {data['duration_ms'] / 1000:.1f} s · rotation {data['rotation_id']}\n"
        )
    elif op == "rotate-db-password" and data.get("dry_run"):
        out.write(f"Dry run: {data['db_user']}@{data['db_host']} can get a new password. Nothing was changed.\n")
    elif op == "rotate-db-password":
        out.write(
            f"Done · {data['db_user']}@{data['db_host']} password {data['old_fingerprint']}… → "
            f"{data['new_fingerprint']}… · accounts {', '.join(data.get('accounts') or ['?'])}, old password "
            f"refused on every route · {data['duration_ms'] / 1000:.1f} s · rotation {data['rotation_id']}\n"
        )
    elif op == "plan" and "password_fingerprint" in data:
        out.write(
            f"Panel {data.get('panel', '')}: the database login {data['db_user']}@{data['db_host']} "
            f"would get a new password (current {data['password_fingerprint']}…) on every account it opens: "
            + ", ".join(f"{a['account']} ({'; '.join(a['routes'])})" for a in data.get("accounts") or []) + "\n"
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
    elif op == "recover" and data.get("state") == "NOTHING_TO_RECOVER":
        out.write(
            f"Nothing to recover: no rotation is unfinished, and all {_values(data.get('verified', 0))} "
            f"open with the key in .env ({data.get('key_fingerprint')}…).\n"
        )
    elif op == "recover":
        password = data.get("db_password")
        if password and password is not data and password.get("direction"):
            out.write(
                f"Recovered database password rotation {password['rotation_id']}: "
                f"{password['state']} ({password['direction']}).\n"
            )
        if data.get("direction"):
            out.write(f"Recovered rotation {data['rotation_id']}: {data['state']} ({data['direction']}).\n")
        for agent in data.get("agents") or []:
            out.write(
                f"Closed agent rotation {agent['rotation_id']} of {agent['agent']} (stopped at {agent['state']}): "
                f"install token {agent['install_token']}, the agent holds the {agent.get('token', 'unknown')} token\n"
            )
    elif op == "plan" and "agents" in data and "columns" not in data:
        agents = data.get("agents") or []
        out.write(f"Panel {data.get('panel', '')}: {len(agents)} agent{'' if len(agents) == 1 else 's'} "
                  "would get a new token\n")
        for agent in agents:
            out.write(f"  {agent.get('name')}\n")
    elif op in ("plan", "probe"):
        if op == "plan" and data.get("panel"):
            out.write(f"Panel {data['panel']}: {_values(data.get('total', 0))} would be re-encrypted\n")
        for label, count in (data.get("columns") or {}).items():
            out.write(f"  {label}: {count:,}\n")
        for table in data.get("skipped") or []:
            out.write(f"  {table}: table not present, skipped\n")
        if data.get("scheme"):
            out.write(f"Layout: {data['scheme']} ({data.get('scheme_description', '')})\n")
        if op == "plan" and data.get("key_fingerprint"):
            out.write(f"Current key: {data['key_fingerprint']}…\n")
        if data.get("problem"):
            out.write(f"Problem: {data['problem']}\n")
        if op == "probe":
            for scheme, per_column in (data.get("opens") or {}).items():
                opened = sum(per_column.values())
                if opened:
                    out.write(f"  candidate {scheme}: opens {opened:,}\n")
    elif op == "status":
        _print_verdict(out, data.get("verdict") or {})
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
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(run.get("ts", 0)) / 1000))
    outcome = "ok" if run.get("ok") else f"failed ({run.get('code') or run.get('state')})"
    approvers = ",".join(run.get("approved_by") or []) or "-"
    plan = str(run.get("plan_hash") or "-")[:12]
    return (
        f"{when} UTC {run.get('rotation_id')} {run.get('op')}: {outcome} · requested by "
        f"{run.get('requested_by') or '-'} · approved by {approvers} · plan {plan}"
    )


def _values(n: int) -> str:
    return plural(n, "stored value")


def _needs_confirmation(args: argparse.Namespace) -> bool:
    return args.command in ("rotate-key", "rotate-agent", "rotate-incident", "rotate-db-password") and not (
        args.yes or args.dry_run
    )


def _clock(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if isinstance(at, int | float) else "?"


def _print_verdict(out: IO[str], verdict: dict[str, Any]) -> None:
    """``status``'s one answer: RUNNING, UNFINISHED (each item), or nothing unfinished."""
    running = verdict.get("running")
    if verdict.get("state") == "running" and running:
        what = f"{running.get('op') or 'an engine run'} {running.get('rotation_id') or ''}".rstrip()
        out.write(
            f"RUNNING: {what} (pid {running['pid']}), step {running.get('step') or 'not known yet'}, "
            f"since {_clock(running.get('since'))}. Let it finish; do not run recover.\n"
        )
    elif verdict.get("state") == "unfinished":
        for item in verdict.get("unfinished") or []:
            rotation = f" {item['rotation_id']}" if item.get("rotation_id") else ""
            since = f", started {_clock(item['since'])}" if item.get("since") else ""
            note = f" ({item['note']})" if item.get("note") else ""
            out.write(
                f"UNFINISHED {item['what']}{rotation}: stopped at {item['stopped_at']}{since}{note}. "
                f"Run: {item['command']}\n"
            )
    else:
        out.write("Nothing unfinished: no rotation is running or left unfinished.\n")


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
    op = args.command
    if _needs_confirmation(args) and not stdin.isatty():
        stderr.write(f"Refusing to {op} without --yes when not run from a terminal; nothing changed.\n")
        return EXIT_USAGE
    binding: dict[str, Any] = {}
    if _needs_confirmation(args):
        # the plan first (read-only), then the question; the run must match what was shown
        planning = {"incident": True} if op == "rotate-incident" else {}
        if op == "rotate-db-password":
            planning = {"db_password": True}
        status, plan = _run(args, profile, "plan", planning, stdout, stderr)
        if plan is None:
            return status
        if not _ask(f"Run {op} on panel {plan.get('panel', profile.name)} as planned above?", stdin, stderr):
            stderr.write("Aborted; nothing changed.\n")
            return EXIT_FAILED
        binding = {"plan_hash": plan.get("plan_hash")}
        if op == "rotate-key":
            binding["key_fingerprint"] = plan.get("key_fingerprint")
        elif op == "rotate-incident":
            binding.update(key_fingerprint=plan.get("key_fingerprint"), agents=list(plan.get("agents") or []),
                           password_fingerprint=plan.get("password_fingerprint"))  # fmt: skip
        elif op == "rotate-db-password":
            binding["password_fingerprint"] = plan.get("password_fingerprint")
        else:
            binding["agents"] = [str(a.get("name")) for a in plan.get("agents") or []]
            binding["all_agents"] = False
    status, _ = _run(args, profile, op, binding, stdout, stderr)
    return status


def _run(
    args: argparse.Namespace,
    profile: Any,
    op: str,
    binding: dict[str, Any],
    stdout: TextIO,
    stderr: TextIO,
) -> tuple[int, dict[str, Any] | None]:
    """One operation with its events printed; (exit status, result or None on error)."""
    from engine.operator import command_line_operator
    from engine.ops import new_rotation_id, run_operation

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
        **binding,
    }
    if op == "plan":
        options.update(dry_run=False, reason=None)
    request = Request(v=PROTOCOL_VERSION, id=rotation_id, op=op, requested_by=command_line_operator(), **options)
    try:
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
        print_summary(stdout, op, data)
    return outcome.exit_status, data
