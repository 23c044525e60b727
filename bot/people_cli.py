"""``python -m bot people list-offboarded|restore``: an admin's word on who was offboarded.

Filing an offboarding (``/rotate-offboard``) records the person; from then on every
surface refuses them, and a denied or expired offboarding request does not change that.
Only ``restore`` does, run by an admin on the bot host. Like ``audit``, it needs the store
and the audit key, not Slack: the store URL comes from ``--store``, ``ROTATOR_STORE`` or
``ROTATOR_CONFIG`` (``bot.audit_cli.store_url``). The restore is audited as
``person.restored`` with who ran it (``cli:NAME via sudo``, as the engine's break-glass
runs are recorded), the reason and the person. It gives back neither the TOTP enrollment
nor the approvals revoked at the offboarding: the person enrolls again.

Exit status: 0 done, 1 the person is not offboarded (nothing changed), 2 bad usage or
settings.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from bot.errors import BotError

EXIT_DONE, EXIT_NOT_OFFBOARDED = 0, 1
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")
NOT_RESTORED = (
    "Not restored: their TOTP enrollment and the approvals they had given, both revoked at the "
    "offboarding (requests voided then stay voided). Where approvals need a code, they enroll "
    "again with /rotate-enroll."
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    people = sub.add_parser(
        "people",
        help="list the people offboarded, or restore one (needs the store and the audit key, not Slack)",
    )
    people_sub = people.add_subparsers(dest="people_command", required=True)
    listing = people_sub.add_parser("list-offboarded", help="who is offboarded, by which request")
    listing.add_argument("--store", default=None, help="store URL (default: ROTATOR_STORE, ROTATOR_CONFIG)")
    restore = people_sub.add_parser(
        "restore",
        help="let an offboarded person request, approve and deny again (audited)",
        description="Remove USER_ID's offboarding record, audited with who ran it and why. Their TOTP "
        "enrollment and approvals are not restored: they enroll again.",
        epilog="exit status: 0 restored, 1 USER_ID is not offboarded (nothing changed), 2 bad usage "
        "or settings",
    )
    restore.add_argument("user_id", metavar="USER_ID", help="the person's Slack user id, e.g. U0ERIN")
    restore.add_argument("--reason", required=True, help="why, for the audit log (e.g. a ticket)")
    restore.add_argument("--store", default=None, help="store URL (default: ROTATOR_STORE, ROTATOR_CONFIG)")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _user_id(value: str) -> str:
    if not _USER_ID.fullmatch(value):
        raise BotError(f"{value[:40]!r} is not a Slack user id (like U0ERIN): see `people list-offboarded`")
    return value


def _reason(value: str) -> str:
    from handlers.parsing import MAX_REASON, MIN_REASON  # the slash commands' limits

    reason = " ".join(value.split())
    if len(reason) < MIN_REASON:
        raise BotError('--reason: say why, e.g. --reason "offboarded by mistake, HR-2211"')
    if len(reason) > MAX_REASON:
        raise BotError(f"--reason: at most {MAX_REASON} characters")
    return reason


def run(args: argparse.Namespace) -> int:
    from bot.audit_cli import store_url
    from bot.store import open_store

    if args.people_command == "list-offboarded":
        store = open_store(store_url(args.store))  # reads only: no audit key needed
        try:
            people = store.offboarded_people()
        finally:
            store.close()
        if not people:
            print("Nobody is offboarded.")
        for person in people:
            print(f"{person.user_id}  offboarded by request {person.request_id} ({person.actor}, {_when(person.at)})")
        return EXIT_DONE
    return _restore(args)


def _restore(args: argparse.Namespace) -> int:
    from bot.audit_cli import store_url
    from bot.audit_key import load_audit_key
    from bot.store import open_store
    from engine.operator import command_line_operator

    user_id, reason = _user_id(args.user_id), _reason(args.reason)
    actor = command_line_operator()
    store = open_store(store_url(args.store), audit_key=load_audit_key())
    try:
        restored = store.restore_offboarded(user_id, actor=actor, reason=reason)
        if restored is None:
            others = [p.user_id for p in store.offboarded_people()]
            listed = f"offboarded now: {', '.join(others[:20])}" if others else "nobody is offboarded now"
            print(f"{user_id} is not offboarded: nothing to restore ({listed}).", file=sys.stderr)
            return EXIT_NOT_OFFBOARDED
    finally:
        store.close()
    record = restored.record
    print(f"Restored {user_id}: they may request, approve and deny rotations again.")
    print(f"  offboarded by request {record.request_id} ({record.actor}, {_when(record.at)})")
    print(f"  audited as person.restored #{restored.audit_seq} by {actor}")
    print(NOT_RESTORED)
    return EXIT_DONE

