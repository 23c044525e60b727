"""An offboarded person's Home tab, and an admin's ``python -m bot people`` to list and
restore the people offboarded (issue 24's two gaps).

The bot is the real Bolt app over signed HTTP with the strict fake Web API
(tests/bot/conftest.py); the CLI runs as an operator runs it (``python -m bot``, only the
store URL and the audit key in its environment), on SQLite and on MariaDB.
"""

from __future__ import annotations

import json
import os
import pwd
from typing import Any

from bot.audit import AuditLog
from bot.store import open_store
from handlers import home
from handlers.blocks import APPROVE_ACTION, DENY_ACTION
from handlers.ops.fleet import OFFBOARDED_HOME, RESTORE_HINT
from tests.bot.conftest import ALICE, AUDIT_KEY, BOB, CAROL, CHANNEL, MakeBot, answers_to, is_card, wait_until
from tests.bot.test_fleet import ERIN, make_fleet
from tests.bot.test_home import buttons, open_home, texts
from tests.support.procs import run_bot
from tests.support.secrets_scan import SecretRegistry


def operator_env(store_url: str, **extra: str) -> dict[str, str]:
    """What an admin's shell on the bot host holds for ``people``: the store and the audit
    key, no Slack setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_", "SUDO_"))}
    return env | {"ROTATOR_STORE": store_url, "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex()} | extra


def expected_actor(sudo_user: str) -> str:
    """The CLI's record of who ran it, as the engine's break-glass runs say it."""
    return f"cli:{sudo_user} via sudo" if os.getuid() == 0 else f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


def actions_of(view: dict[str, Any]) -> set[str]:
    return {action for action, _ in buttons(view)}


def audit_records(store: Any, kind: str) -> list[dict[str, Any]]:
    return [{**e, "data": json.loads(e["data"])} for e in store.audit_entries() if e["kind"] == kind]


def test_an_offboarded_persons_home_offers_nothing_and_says_why_until_an_admin_restores_her(
    make_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Erin (a requester and an approver) sees "Request a rotation" and Approve/Deny on
    Alice's request. Once her offboarding is filed, her Home tab has no button at all and
    says she was offboarded and that an admin can restore her, with the refusal's words;
    Bob's Home keeps every button; a click on her stale buttons is still refused. An admin
    runs ``python -m bot people restore U0ERIN --reason ...``: audited with who ran it and
    why; her Home offers the buttons again and her /rotate-key is accepted. A second
    restore exits 1 with a message. Nothing posted, published or printed holds a secret."""
    fleet = make_fleet(make_bot, 2, approvers=("S0ONCALL",))
    bot = fleet.bot
    bot.fake.groups["S0ONCALL"] = [BOB, CAROL, ALICE, ERIN]
    bot.fake.groups["S0SECOPS"] = [ALICE, BOB, CAROL, ERIN]
    bot.fake.users = (bot.fake.users or set()) | {ERIN}
    alices, _ = bot.request_key("panel-000 routine", user=ALICE)
    before = open_home(bot, ERIN)
    assert {home.REQUEST_ROTATION_ACTION, APPROVE_ACTION, DENY_ACTION} <= actions_of(before)

    offboard_id, _ = fleet.request("/rotate-offboard", f"<@{ERIN}|erin> left the ops team, HR-2211")
    refusals_before = len(audit_records(bot.store, "person.refused"))
    erins = open_home(bot, ERIN)
    assert buttons(erins) == []
    said = OFFBOARDED_HOME + RESTORE_HINT
    assert said in texts(erins)
    assert said == (
        "You were offboarded: you can no longer request, approve or deny rotations. "
        "If this is a mistake, an admin can restore you (`python -m bot people restore`)."
    )
    assert any(f"Pending `{alices}`" in t for t in texts(erins))  # what she may still see is unchanged
    assert len(audit_records(bot.store, "person.refused")) == refusals_before  # looking is not acting
    bobs = open_home(bot, BOB)
    assert {home.REQUEST_ROTATION_ACTION, APPROVE_ACTION, DENY_ACTION} <= actions_of(bobs)
    assert said not in texts(bobs)

    # a Home tab published before the offboarding can still be clicked: still refused
    assert bot.slack.click_in_home(APPROVE_ACTION, alices, ERIN).status == 200
    refused = answers_to(bot.fake, ERIN)[-1].text
    assert "You were offboarded: your approvals no longer count" in refused and RESTORE_HINT.strip() in refused
    assert bot.store.get(alices).approvals == ()  # type: ignore[union-attr]

    env = operator_env(bot.settings.store_url, SUDO_USER="alice")
    listed = run_bot(env, "people", "list-offboarded")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout.startswith(f"{ERIN}  offboarded by request {offboard_id} (T0TEAM/{ALICE}, ")
    restored = run_bot(env, "people", "restore", ERIN, "--reason", "offboarded by mistake, HR-2212")
    assert (restored.returncode, restored.stderr) == (0, ""), restored.stderr
    lines = restored.stdout.splitlines()
    assert lines[0] == f"Restored {ERIN}: they may request, approve and deny rotations again."
    assert f"by {expected_actor('alice')}" in lines[2]
    assert lines[3].startswith("Not restored: their TOTP enrollment and the approvals they had given")
    [record] = audit_records(bot.store, "person.restored")
    assert (record["actor"], record["request_id"]) == (expected_actor("alice"), offboard_id)
    assert record["data"] | {"offboarded_at": 0} == {
        "user": ERIN,
        "reason": "offboarded by mistake, HR-2212",
        "offboarded_by": f"T0TEAM/{ALICE}",
        "offboarded_at": 0,
        "enrollment": "not restored",
        "approvals": "not restored",
    }
    assert f"#{record['seq']} " in lines[2]

    again = open_home(bot, ERIN)
    assert {home.REQUEST_ROTATION_ACTION, APPROVE_ACTION, DENY_ACTION} <= actions_of(again)
    assert said not in texts(again)
    cards = len(bot.cards())
    sent = bot.command("/rotate-key", "panel-001 restored, quarterly review", ERIN)
    assert sent.status == 200 and not sent.answer, sent.answer
    card = bot.fake.wait_for("chat.postMessage", is_card, count=cards + 1)[-1]
    assert f"Requested by <@{ERIN}>" in card.all_text() and card.params["channel"] == CHANNEL
    wait_until(lambda: len(bot.store.pending_of(ERIN, limit=5)) == 1, what="Erin's request stored")

    twice = run_bot(env, "people", "restore", ERIN, "--reason", "offboarded by mistake, HR-2212")
    assert (twice.returncode, twice.stdout) == (1, "")
    assert twice.stderr == f"{ERIN} is not offboarded: nothing to restore (nobody is offboarded now).\n"
    assert len(audit_records(bot.store, "person.restored")) == 1
    assert AuditLog(bot.store).verify([]).ok

    published = json.dumps([c.params for c in bot.fake.calls], ensure_ascii=False)
    printed = "".join(p.stdout + p.stderr for p in (listed, restored, twice))
    assert secret_registry.scan(published + printed) == []


def test_people_restore_and_list_on_both_store_backends(any_store_url: str, secret_registry: SecretRegistry) -> None:
    """On SQLite and MariaDB: ``list-offboarded`` names who is offboarded; ``restore`` needs
    a reason, a user id and the audit key (exit 2, a one-line message, nothing changed),
    refuses someone not offboarded (exit 1, naming who is), restores once (audited, tied
    to the offboarding) and a second time exits 1. No traceback, no store password."""
    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    assert store.mark_offboarded(ERIN, request_id="r-20261207-104023-00fa", actor=f"T0TEAM/{ALICE}")
    store.close()
    env = operator_env(any_store_url, SUDO_USER="bob")
    runs = []

    def bot_cli(*args: str, environ: dict[str, str] = env) -> Any:
        done = run_bot(environ, "people", *args)
        runs.append(done)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    listed = bot_cli("list-offboarded")
    assert (listed.returncode, listed.stdout.split(" (")[0]) == (
        0,
        f"{ERIN}  offboarded by request r-20261207-104023-00fa",
    )
    no_reason = bot_cli("restore", ERIN)
    assert no_reason.returncode == 2 and "the following arguments are required: --reason" in no_reason.stderr
    blank = bot_cli("restore", ERIN, "--reason", "  ")
    assert (blank.returncode, blank.stderr) == (
        2,
        'error: --reason: say why, e.g. --reason "offboarded by mistake, HR-2211"\n',
    )
    not_an_id = bot_cli("restore", "erin", "--reason", "mistake")
    assert (not_an_id.returncode, not_an_id.stderr) == (
        2,
        "error: 'erin' is not a Slack user id (like U0ERIN): see `people list-offboarded`\n",
    )
    no_key = bot_cli("restore", ERIN, "--reason", "mistake", environ={**env, "ROTATOR_AUDIT_KEY": ""})
    assert no_key.returncode == 2 and no_key.stderr.startswith("error: ") and "ROTATOR_AUDIT_KEY" in no_key.stderr
    someone_else = bot_cli("restore", BOB, "--reason", "mistake")
    assert (someone_else.returncode, someone_else.stderr) == (
        1,
        f"{BOB} is not offboarded: nothing to restore (offboarded now: {ERIN}).\n",
    )

    restored = bot_cli("restore", ERIN, "--reason", "HR-2212: contract extended")
    assert restored.returncode == 0 and restored.stdout.startswith(f"Restored {ERIN}: ")
    assert "Not restored: their TOTP enrollment" in restored.stdout
    again = bot_cli("restore", ERIN, "--reason", "HR-2212: contract extended")
    assert (again.returncode, again.stderr) == (
        1,
        f"{ERIN} is not offboarded: nothing to restore (nobody is offboarded now).\n",
    )
    assert bot_cli("list-offboarded").stdout == "Nobody is offboarded.\n"

    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    try:
        assert not store.is_offboarded(ERIN) and store.offboarded_people() == []
        records = [(e["kind"], e["request_id"], e["actor"]) for e in store.audit_entries()]
        assert records == [
            ("person.offboarded", "r-20261207-104023-00fa", f"T0TEAM/{ALICE}"),
            ("person.restored", "r-20261207-104023-00fa", expected_actor("bob")),
        ]
        assert json.loads(list(store.audit_entries())[-1]["data"])["reason"] == "HR-2212: contract extended"
        assert AuditLog(store).verify([]).ok
    finally:
        store.close()
    assert secret_registry.scan("".join(r.stdout + r.stderr for r in runs)) == []
