"""``python -m bot audit keygen|export|verify``: needs the store and the audit key, not Slack.

The store URL comes from ``--store``, else ``ROTATOR_STORE``, else the
``store`` line of the ``ROTATOR_CONFIG`` file (the rest of that file and the
Slack tokens are not read). The audit key comes from ``ROTATOR_AUDIT_KEY_FILE``
or ``ROTATOR_AUDIT_KEY``. Only ``verify --slack`` reads the Slack settings,
to fetch the anchors from the request threads.

Exit codes (``EXIT_CODES``, also in ``--help`` and README's table): 0 verified against an
anchor, 1 NOT verified (changed, reordered or cut), 2 a usage or settings error, 3 intact
but NOT anchored: entries cut off the end can't be ruled out, so monitoring should alert
as it does on an unfinished rotation (the engine's ``status`` exits 3 then too).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import BotError, SettingsError

if TYPE_CHECKING:
    from bot.audit import Anchor

STORE_ENV = "ROTATOR_STORE"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser(
        "audit",
        help="export or verify the audit log (needs the store and the audit key, not Slack)",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    keygen = audit_sub.add_parser("keygen", help="create a new audit key file (mode 0600)")
    keygen.add_argument("path", help="the key file to create (never overwritten)")
    export = audit_sub.add_parser(
        "export", help="write the audit log as JSON Lines, ending with its signed head"
    )
    export.add_argument("--since", default=None, help="ISO date/time (UTC) or a Unix timestamp")
    export.add_argument("--output", default="-", help="file to write (default stdout)")
    export.add_argument("--store", default=None, help="store URL (default: ROTATOR_STORE, ROTATOR_CONFIG)")
    export.add_argument(
        "--incident", default=None, metavar="ID",
        help="write the postmortem appendix of this request (rotation id) instead of the whole log",
    )  # fmt: skip
    export.add_argument(
        "--fleet", default=None, metavar="ID",
        help="write the record of this fleet request (one row per panel) instead of the whole log",
    )  # fmt: skip
    export.add_argument(
        "--format", default=None, choices=("jsonl", "markdown"),
        help="jsonl (the whole log, default) or markdown (with --incident or --fleet)",
    )  # fmt: skip
    verify = audit_sub.add_parser(
        "verify", help="check the chain, its HMACs, and the anchors seen outside the store",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("--file", default=None, help="verify an exported JSON Lines file instead")
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:DIGEST",
        help="a chain position from a closing summary (`audit #57 3f9a…` is 57:3f9a…); repeatable",
    )
    verify.add_argument(
        "--slack",
        action="store_true",
        help="also read the anchors from the request threads in Slack (needs the Slack settings)",
    )
    verify.add_argument("--store", default=None, help="store URL (default: ROTATOR_STORE, ROTATOR_CONFIG)")


def since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BotError(
            f"--since: {value!r} is neither an ISO date/time nor a Unix timestamp"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def store_url(given: str | None) -> str:
    """``--store``, ``ROTATOR_STORE``, or the ``store`` of ``ROTATOR_CONFIG`` (relative to it)."""
    from bot.settings import DEFAULT_STORE

    url = given or os.environ.get(STORE_ENV)
    if url:
        return url
    config = os.environ.get("ROTATOR_CONFIG")
    if not config:
        raise SettingsError(
            f"no store: give --store URL, or set {STORE_ENV} or ROTATOR_CONFIG"
        )
    from bot.settings import read_config_file  # pydantic: only when the store comes from the config

    path = Path(config)
    raw = read_config_file(path)
    url = raw.get("store", DEFAULT_STORE)
    if not isinstance(url, str):
        raise SettingsError(f"ROTATOR_CONFIG ({path}): store: must be a URL")
    if url.startswith("sqlite://"):
        db = Path(url[len("sqlite://") :])
        if not db.is_absolute():
            db = path.resolve().parent / db
        return f"sqlite://{db}"
    return url


def run(args: argparse.Namespace) -> int:
    from bot.audit import Anchor, AuditLog, read_export, verify_entries
    from bot.audit_key import AuditKey, load_audit_key, write_key_file

    if args.audit_command == "keygen":
        key = AuditKey.generate()
        write_key_file(Path(args.path), key)
        print(f"wrote a new audit key to {args.path} (fingerprint {key.fingerprint})")
        print(f"set ROTATOR_AUDIT_KEY_FILE={args.path} for the bot and for `audit` commands")
        return 0
    key = load_audit_key()
    anchors = [Anchor.parse(text) for text in getattr(args, "anchor", [])]
    if getattr(args, "slack", False):
        anchors += _slack_anchors()
    if args.audit_command == "verify" and args.file:
        try:
            with open(args.file, encoding="utf-8") as stream:
                exported = read_export(stream, args.file)
        except OSError as exc:
            raise BotError(f"--file: cannot read {args.file} ({exc.strerror})") from None
        report = verify_entries(exported.entries, key, anchors=anchors, export=exported)
        print(report.summary())
        return verify_exit(report)
    from bot.store import open_store

    store = open_store(store_url(args.store), audit_key=key)
    try:
        audit = AuditLog(store)
        if args.audit_command == "export" and args.fleet:
            return _export_fleet(store, args)
        if args.audit_command == "export" and (args.incident or args.format == "markdown"):
            return _export_incident(store, args)
        if args.audit_command == "export":
            if args.output == "-":
                audit.export(sys.stdout, since=since(args.since))
            else:
                with open(args.output, "w", encoding="utf-8") as out:
                    count = audit.export(out, since=since(args.since))
                print(f"wrote {count} entries and their signed head to {args.output}", file=sys.stderr)
            return 0
        report = audit.verify(anchors)
        print(report.summary())
        return verify_exit(report)
    finally:
        store.close()


EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_USAGE, EXIT_NOT_ANCHORED = 0, 1, 2, 3
EXIT_CODES = """\
exit status of verify:
  0  verified: intact, and its head matches an anchor seen outside the store
  1  NOT verified: an entry was changed, reordered or cut (the output names it)
  2  bad usage or settings (a missing key, store or option)
  3  intact but NOT anchored: give --anchor SEQ:DIGEST or --slack (entries cut off the
     end can't be ruled out without one)"""


def verify_exit(report: Any) -> int:
    """The exit status of a verification, by what the operator must do next."""
    if not report.ok:
        return EXIT_NOT_VERIFIED
    return EXIT_VERIFIED if report.anchors_checked else EXIT_NOT_ANCHORED


def _export_incident(store: Any, args: argparse.Namespace) -> int:
    """``export --incident ID --format markdown``: the request's postmortem appendix."""
    from bot.incident_report import markdown

    if not args.incident:
        raise BotError("--format markdown writes one request's appendix: add --incident ID")
    if args.format == "jsonl":
        raise BotError("--incident writes a Markdown appendix: use --format markdown")
    request = store.get(args.incident)
    if request is None:
        raise BotError(f"--incident: no request {args.incident!r} in the store")
    audit = request.outcome.get("audit") or {}
    anchor = f"{audit['seq']}:{audit['digest']}" if audit.get("seq") and audit.get("digest") else None
    text = markdown(request, store.history(request.id), store.audit_entries(), anchor)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"wrote the appendix of {request.id} to {args.output}", file=sys.stderr)
    return 0


def _export_fleet(store: Any, args: argparse.Namespace) -> int:
    """``export --fleet ID --format markdown``: one row per panel, from the audit log."""
    from bot.fleet_report import markdown

    if args.incident:
        raise BotError("--fleet and --incident each write one request: give one of them")
    if args.format == "jsonl":
        raise BotError("--fleet writes Markdown: use --format markdown")
    request = store.get(args.fleet)
    if request is None or not request.plan.fleet:
        raise BotError(f"--fleet: no fleet request {args.fleet!r} in the store")
    text = markdown(request, store.history(request.id), store.audit_entries())
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"wrote the record of fleet {request.id} to {args.output}", file=sys.stderr)
    return 0


def _slack_anchors() -> list[Anchor]:
    from slack_sdk import WebClient

    from bot.audit_slack import anchors_from_slack
    from bot.settings import load_settings

    settings = load_settings()
    if not settings.config.channels:
        raise SettingsError("--slack: ROTATOR_CONFIG names no channels to read the anchors from")
    client = WebClient(token=settings.bot_token, base_url=settings.api_url)
    found = anchors_from_slack(client, settings.config.channels)
    if not found:
        raise BotError(
            "--slack: no `audit #SEQ DIGEST` anchor found in the channels' recent request threads"
        )
    return found
