"""Step-up enrollment that holds against a stolen Slack session, and tries that can't be raced.

* The secret lives in Slack only until its owner types a first valid code; then the bot
  deletes the DM and the QR file, and nothing Slack still keeps holds it (issue 20, item 2).
* An enroll admin can't reset their own factor without its code (item 3).
* Parallel code submissions get no extra tries (item 7), on SQLite and MariaDB.
* A refusal is said in the open modal, over HTTP and Socket Mode; a wrong enrollment key
  is said plainly, to the approver and by doctor (item 12).
* A new enrollment approves nothing until an enroll admin approves it (item 15).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import doctor, socket_mode
from bot.enrollment_key import KEY_ENV, EnrollmentKey
from bot.fakes.slack_api import FakeSlack
from bot.fakes.socket_mode import FakeSocketMode
from bot.totp import STEP_S
from bot.wsgi import HttpLimits
from handlers.blocks import APPROVE_ACTION
from handlers.step_up_modal import CODE_BLOCK, CODE_INPUT, TOTP_MODAL
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CAROL,
    DAVE,
    BotUnderTest,
    MakeBot,
    SlackSecrets,
    card_request_id,
    is_card,
    wait_until,
)
from tests.bot.test_step_up import (
    approve_enrollment,
    approve_with_code,
    audit,
    click_approve,
    confirm,
    enroll,
    enrollment_dms,
    modal_error,
    not_a_code_of_now,
    start_enrollment,
    submit_code,
    type_first_code,
)
from tests.support.secrets_scan import SecretRegistry


@pytest.fixture
def enrollment_key(monkeypatch: pytest.MonkeyPatch, secret_registry: SecretRegistry) -> EnrollmentKey:
    key = EnrollmentKey.generate()
    secret_registry.register(key.hex(), "ROTATOR_ENROLLMENT_KEY")
    monkeypatch.setenv(KEY_ENV, key.hex())
    return key


@pytest.fixture
def step_up_bot(make_bot: MakeBot, enrollment_key: EnrollmentKey) -> MakeBot:
    def make(**config: object) -> BotUnderTest:
        config.setdefault("step_up", "totp")
        config.setdefault("enroll_admins", [DAVE, CAROL])
        return make_bot(**config)

    return make


def everything_slack_keeps(fake: FakeSlack) -> str:
    """Every message still in every conversation and every file still kept, bytes as text."""
    kept = fake.present()
    files = [dict(f, data=f["data"].hex()) for f in kept["files"]]
    raw = "".join(f["data"].decode("latin-1") for f in kept["files"])
    return json.dumps({"messages": kept["messages"], "files": files}, ensure_ascii=False) + raw


# --- item 2: the secret leaves Slack once the first code is right --------------------------


def test_no_message_or_file_holding_the_secret_survives_confirmation(
    step_up_bot: MakeBot, secret_registry: SecretRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Bob's DM (the otpauth:// link) and the QR file are deleted when his first code is right:
    nothing Slack keeps (history of every conversation, every file's bytes) holds the secret,
    the link or the QR image, and the audit log says what was deleted."""
    caplog.set_level(logging.DEBUG)
    bot = step_up_bot()
    totp = start_enrollment(bot, BOB, secret_registry)
    dm = enrollment_dms(bot, BOB)[-1]
    (upload,) = bot.fake.uploads()
    uri = totp.provisioning_uri(name=BOB, issuer_name="MyOsicam Rotator")
    before = everything_slack_keeps(bot.fake)
    assert totp.secret in before and upload["data"].hex() in before  # the scan sees them

    confirm(bot, BOB, totp)
    wait_until(lambda: len(audit(bot, "step_up.secret_deleted")) == 1)

    kept = everything_slack_keeps(bot.fake)
    for needle in (totp.secret, "otpauth://", uri, upload["data"].hex(), upload["data"].decode("latin-1")):
        assert needle not in kept
    assert bot.fake.deleted() == {"messages": [str(dm.response["ts"])], "files": [upload["id"]]}
    deletions = bot.fake.calls_to("chat.delete") + bot.fake.calls_to("files.delete")
    assert [(c.method, c.ok) for c in deletions] == [("chat.delete", True), ("files.delete", True)]
    (deleted,) = audit(bot, "step_up.secret_deleted")
    assert (deleted["actor"], deleted["data"]) == (
        f"T0TEAM/{BOB}",
        {"user": BOB, "message": "deleted", "file": "deleted"},
    )
    # Slack's own answers for what is gone, asked the way a client would
    client = WebClient(token=bot.fake.token, base_url=bot.fake.url)
    for call in (
        lambda: client.files_info(file=upload["id"]),
        lambda: client.chat_delete(channel=BOB, ts=str(dm.response["ts"])),
    ):
        with pytest.raises(SlackApiError) as gone:
            call()
        assert gone.value.response["error"] in ("file_not_found", "message_not_found")
    # what Bob is told, and where: a DM without the secret
    told = [c.text for c in bot.fake.calls_to("chat.postMessage") if c.params.get("channel") == BOB]
    assert "I deleted the message and the QR code" in told[-1]
    # confirmed is not approved: until an enroll admin approves, his code approves nothing
    assert bot.store.enrollment(BOB).status == "awaiting_approval"  # type: ignore[union-attr]
    logged = caplog.text
    assert totp.secret not in logged and "otpauth://" not in logged


def test_a_pending_enrollment_approves_nothing_and_expires_after_10_minutes(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Before its first code, Bob's enrollment approves nothing; 10 minutes later its first
    code is refused as expired, and the DM and file that held it are deleted then."""
    now = [time.time()]
    bot = step_up_bot(clock=lambda: now[0])
    totp = start_enrollment(bot, BOB, secret_registry)
    request_id, ts = bot.request_key()

    modals = len(bot.fake.calls_to("views.open"))
    click_approve(bot, request_id, ts, BOB)
    bot.fake.wait_text("chat.postEphemeral", "Your enrollment is not finished", user=BOB)
    assert len(bot.fake.calls_to("views.open")) == modals
    forged = modal_error(submit_code(bot, request_id, BOB, totp.at(now[0])))  # no click: forged
    assert forged is not None and "not finished" in forged
    assert bot.state(request_id) == "pending"

    now[0] += 10 * 60 + 1
    late = modal_error(type_first_code(bot, BOB, totp.at(now[0])))
    assert late is not None and "expired" in late and "/rotate-enroll" in late
    wait_until(lambda: len(audit(bot, "step_up.secret_deleted")) == 1)
    assert totp.secret not in everything_slack_keeps(bot.fake)
    assert bot.store.enrollment(BOB).status == "pending"  # type: ignore[union-attr]

    # enrolling again replaces the expired one
    again = start_enrollment(bot, BOB, secret_registry)
    assert again.secret != totp.secret


# --- item 15: a second person approves every new enrollment ---------------------------------


def test_a_new_enrollment_needs_another_enroll_admin_before_it_approves(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """A stolen session of Bob (an approver who never enrolled) enrolls and confirms: its code
    approves nothing until an enroll admin approves the enrollment. Dave can't approve his own."""
    bot = step_up_bot()
    totp = start_enrollment(bot, BOB, secret_registry)
    confirm(bot, BOB, totp)
    request_id, ts = bot.request_key()

    refused = modal_error(submit_code(bot, request_id, BOB, totp.at(time.time() + STEP_S)))
    assert refused is not None and "must approve the enrollment" in refused
    assert bot.state(request_id) == "pending"

    # Bob (not an enroll admin) clicks the approval himself: refused
    assert approve_enrollment(bot, BOB, BOB).status == 200
    bot.fake.wait_text("chat.postEphemeral", "can approve an enrollment", user=BOB)
    assert bot.store.enrollment(BOB).status == "awaiting_approval"  # type: ignore[union-attr]

    assert approve_enrollment(bot, BOB, DAVE).status == 200
    wait_until(lambda: bot.store.enrollment(BOB).status == "active")  # type: ignore[union-attr]
    bot.fake.wait_for("chat.update", lambda c: f"approved by <@{DAVE}>" in c.text)
    (approved,) = audit(bot, "step_up.approved")
    assert (approved["actor"], approved["data"]) == (f"T0TEAM/{DAVE}", {"user": BOB, "method": "totp"})
    assert approve_with_code(bot, request_id, ts, BOB, totp.at(time.time() + STEP_S)) is None
    wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))

    # an enroll admin's own enrollment: another admin must approve it
    carol = start_enrollment(bot, CAROL, secret_registry)
    confirm(bot, CAROL, carol)
    assert approve_enrollment(bot, CAROL, CAROL).status == 200
    bot.fake.wait_text("chat.postEphemeral", "can't approve your own enrollment", user=CAROL)
    assert bot.store.enrollment(CAROL).status == "awaiting_approval"  # type: ignore[union-attr]
    (self_approval,) = audit(bot, "step_up.reset_refused")
    assert self_approval["data"] == {"user": CAROL, "reason": "approving one's own enrollment"}


def test_teams_that_accept_the_risk_turn_the_admin_approval_off(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot(step_up_enrollment_approval=False)
    totp = enroll(bot, BOB, secret_registry, admin=None)
    assert bot.store.enrollment(BOB).status == "active"  # type: ignore[union-attr]
    assert not [c for c in bot.fake.calls_to("chat.postMessage") if "Approve enrollment" in json.dumps(c.params)]
    request_id, ts = bot.request_key()
    assert approve_with_code(bot, request_id, ts, BOB, totp.now()) is None
    wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))


# --- item 3: no self-reset without the current code ------------------------------------------


def test_an_enroll_admin_cannot_reset_their_own_factor_without_its_code(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    totp = enroll(bot, CAROL, secret_registry, admin=DAVE)

    assert bot.command("/rotate-enroll", f"reset <@{CAROL}|carol>", CAROL).status == 200
    bot.fake.wait_text("chat.postEphemeral", "can't reset your own enrollment", user=CAROL)
    assert bot.command("/rotate-enroll", f"reset <@{CAROL}> {not_a_code_of_now(totp)}", CAROL).status == 200
    bot.fake.wait_for(
        "chat.postEphemeral",
        lambda c: "can't reset your own enrollment" in c.text and "not the current one" in c.text,
    )
    assert bot.store.enrollment(CAROL).status == "active"  # type: ignore[union-attr]
    assert [e["data"]["reason"] for e in audit(bot, "step_up.reset_refused")] == [  # type: ignore[index]
        "self-reset without a valid code (no code)",
        "self-reset without a valid code (wrong)",
    ]
    assert audit(bot, "step_up.reset") == []

    assert bot.command("/rotate-enroll", f"reset <@{CAROL}> {totp.now()}", CAROL).status == 200
    bot.fake.wait_text("chat.postEphemeral", f"Reset: <@{CAROL}>", user=CAROL)
    assert bot.store.enrollment(CAROL) is None
    (reset,) = audit(bot, "step_up.reset")
    assert (reset["actor"], reset["data"]) == (
        f"T0TEAM/{CAROL}",
        {"user": CAROL, "method": "totp", "self": True, "with_code": True},
    )


def test_another_admin_resets_a_pending_enrollment_and_its_dm_goes_with_it(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    totp = start_enrollment(bot, BOB, secret_registry)
    assert bot.command("/rotate-enroll", f"reset <@{BOB}>", DAVE).status == 200
    bot.fake.wait_text("chat.postEphemeral", f"Reset: <@{BOB}>", user=DAVE)
    assert totp.secret not in everything_slack_keeps(bot.fake)
    assert bot.store.enrollment(BOB) is None


# --- item 7: tries counted before the code is checked, atomically ----------------------------


def test_parallel_wrong_codes_get_no_extra_tries(
    step_up_bot: MakeBot, secret_registry: SecretRegistry, any_store_url: str
) -> None:
    """Ten signed submissions at once, from ten open modals, with a limit of 3: exactly three
    codes are checked; seven are refused unchecked, each in its modal; then even the right code
    is refused. On MariaDB the ten are lined up behind a lock on the tries table, so they all
    reach the store together: a count read apart from its insert lets every one of them in."""
    # 12 server threads: all ten submissions are served at once (the default is 8)
    bot = step_up_bot(step_up_max_failures=3, store_url=any_store_url, limits=HttpLimits(threads=12))
    totp = enroll(bot, BOB, secret_registry)
    request_id, _ = bot.request_key()
    wrong = not_a_code_of_now(totp)
    start = threading.Barrier(10)
    answers: list[str | None] = []

    def submit() -> None:
        start.wait()
        answers.append(modal_error(submit_code(bot, request_id, BOB, wrong)))

    threads = [threading.Thread(target=submit) for _ in range(10)]
    with tries_table_held(any_store_url, waiting=10):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join()
    checked = [a for a in answers if a and "not the current one" in a]
    limited = [a for a in answers if a and "Too many wrong codes" in a]
    assert (len(answers), len(checked), len(limited)) == (10, 3, 7)
    assert len(bot.store.failures_since(BOB, 0)) == 3
    last = modal_error(submit_code(bot, request_id, BOB, totp.now()))
    assert last is not None and "Too many wrong codes" in last
    assert bot.state(request_id) == "pending"


@contextlib.contextmanager
def tries_table_held(store_url: str, *, waiting: int) -> Iterator[None]:
    """On MariaDB: hold ``totp_failures`` (LOCK TABLES ... WRITE) until ``waiting`` statements
    on the TOTP tables are queued behind it, then let them all go. On SQLite: nothing."""
    if not store_url.startswith("mysql://"):
        yield
        return
    import pymysql

    parts = urlsplit(store_url)
    params: dict[str, Any] = {
        "host": parts.hostname, "port": parts.port, "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""), "database": parts.path.lstrip("/"),
    }  # fmt: skip
    holder, watcher = pymysql.connect(**params), pymysql.connect(**params, autocommit=True)
    try:
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLES totp_failures WRITE")
        yield

        def queued() -> int:
            with watcher.cursor() as cursor:
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID() AND info LIKE '%totp%'"
                )
                return int(cursor.fetchone()[0])

        wait_until(lambda: queued() >= waiting, what=f"{waiting} statements queued on the lock")
        with holder.cursor() as cursor:
            cursor.execute("UNLOCK TABLES")
    finally:
        holder.close()
        watcher.close()


def test_the_try_is_taken_atomically_in_the_store(any_store_url: str) -> None:
    """Twenty threads take tries at once with a limit of 5: five are taken, on each backend."""
    from bot.store import open_store

    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    try:
        store.enroll(BOB, "sealed", actor=f"T0TEAM/{BOB}")
        start = threading.Barrier(20)
        taken: list[int | None] = []

        def take() -> None:
            start.wait()
            got = store.take_try(BOB, max_tries=5, window_s=900)
            assert got is not None
            taken.append(got.id)

        threads = [threading.Thread(target=take) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(taken), len([t for t in taken if t is not None])) == (20, 5)
        assert len(store.failures_since(BOB, 0)) == 5
        assert store.take_try(CAROL, max_tries=5, window_s=900) is None  # not enrolled: no try
    finally:
        store.close()


# --- item 12: a key that no longer opens the secrets, said plainly ---------------------------


def test_a_changed_enrollment_key_is_said_in_the_modal_and_by_doctor(
    step_up_bot: MakeBot,
    enrollment_key: EnrollmentKey,
    secret_registry: SecretRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    bot.close()
    other = EnrollmentKey.generate()
    secret_registry.register(other.hex(), "the other ROTATOR_ENROLLMENT_KEY")
    monkeypatch.setenv(KEY_ENV, other.hex())
    caplog.set_level(logging.INFO)
    restarted = step_up_bot()
    request_id, ts = restarted.request_key()

    said = approve_with_code(restarted, request_id, ts, BOB, totp.now())
    assert said is not None and "ROTATOR_ENROLLMENT_KEY" in said and "no longer opens" in said
    assert restarted.state(request_id) == "pending"
    assert "Traceback" not in caplog.text and "Something went wrong" not in said
    assert "does not open with enrollment key" in caplog.text
    assert restarted.store.failures_since(BOB, 0) == []  # not the approver's failure

    checks = list(doctor.enrollment_checks(restarted.settings))
    assert [(c.subject, c.ok) for c in checks] == [("enrollment key", False)]
    assert BOB in checks[0].finding and "ROTATOR_ENROLLMENT_KEY" in checks[0].finding
    out = io.StringIO()
    doctor.render(checks, out)
    assert "/rotate-enroll reset" in out.getvalue()
    monkeypatch.setenv(KEY_ENV, enrollment_key.hex())  # the key it was sealed with
    (fine,) = doctor.enrollment_checks(restarted.settings)
    assert fine.ok and "opens all 1 stored TOTP secret" in fine.finding


# --- Socket Mode: the modal's answer travels in the acknowledgement --------------------------


@pytest.fixture
def app_token(secret_registry: SecretRegistry) -> str:
    token = f"xapp-1-A0ROTATOR-{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"
    secret_registry.register(token, "SLACK_APP_TOKEN")
    return token


@pytest.fixture
def slack_socket(fake_slack: FakeSlack, app_token: str) -> Iterator[FakeSocketMode]:
    stand_in = FakeSocketMode(app_token).start().attach(fake_slack)
    yield stand_in
    stand_in.stop()


def view_submission(callback_id: str, private_metadata: str, code: str, user: str) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "team": {"id": "T0TEAM", "domain": "fake"},
        "user": {"id": user, "team_id": "T0TEAM", "username": user.lower(), "name": user.lower()},
        "api_app_id": "A0ROTATOR",
        "trigger_id": f"{secrets.randbelow(10**10)}.{secrets.token_hex(8)}",
        "view": {
            "id": "V0VIEW",
            "team_id": "T0TEAM",
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "state": {"values": {CODE_BLOCK: {CODE_INPUT: {"type": "plain_text_input", "value": code}}}},
            "hash": "1.abc",
        },
        "response_urls": [],
        "is_enterprise_install": False,
    }


def test_over_socket_mode_a_wrong_code_stays_in_the_modal_and_the_right_one_approves(
    step_up_bot: MakeBot,
    secret_registry: SecretRegistry,
    slack_socket: FakeSocketMode,
    app_token: str,
    slack_secrets: SlackSecrets,
) -> None:
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    handler = socket_mode.connect(bot.rotator.app, app_token, bot.rotator.gate.acknowledging)
    try:
        slack_socket.command("/rotate-key", "prod-eu suspected .env disclosure, INC-4412", ALICE)
        card = bot.fake.wait_for("chat.postMessage", is_card)[0]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        wait_until(lambda: bot.state(request_id, "message_ts") == ts)
        modals = len(bot.fake.calls_to("views.open"))
        slack_socket.click(APPROVE_ACTION, request_id, BOB, ts)
        bot.fake.wait_for("views.open", count=modals + 1)

        wrong = slack_socket.deliver(
            "interactive", view_submission(TOTP_MODAL, request_id, not_a_code_of_now(totp), BOB)
        )
        assert wrong.elapsed_s < 3
        assert wrong.payload is not None and wrong.payload["response_action"] == "errors"
        assert "not the current one" in wrong.payload["errors"][CODE_BLOCK]
        # the requester's own valid code, sent as a form she never opened
        alice = enroll(bot, ALICE, secret_registry)
        hers = slack_socket.deliver("interactive", view_submission(TOTP_MODAL, request_id, alice.now(), ALICE))
        assert hers.payload is not None and "You asked for this rotation" in hers.payload["errors"][CODE_BLOCK]
        assert bot.state(request_id) == "pending"

        right = slack_socket.deliver("interactive", view_submission(TOTP_MODAL, request_id, totp.now(), BOB))
        assert not (right.payload or {}).get("errors")
        wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))
    finally:
        handler.close()  # type: ignore[no-untyped-call]



def test_from_the_home_tab_every_answer_is_in_a_modal(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Carol (not enrolled) clicks Approve on her Home tab: the reason opens where she looks.
    Bob (enrolled) types a wrong code in the modal opened from Home: the modal says so."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    request_id, _ = bot.request_key()
    modals = len(bot.fake.calls_to("views.open"))

    assert bot.slack.click_in_home(APPROVE_ACTION, request_id, CAROL).status == 200
    notice = bot.fake.wait_for("views.open", count=modals + 1)[-1]
    assert notice.ok and "/rotate-enroll" in notice.all_text()
    assert "submit" not in notice.params["view"]

    assert bot.slack.click_in_home(APPROVE_ACTION, request_id, BOB).status == 200
    modal = bot.fake.wait_for("views.open", count=modals + 2)[-1]
    assert modal.params["view"]["callback_id"] == TOTP_MODAL
    wrong = modal_error(submit_code(bot, request_id, BOB, not_a_code_of_now(totp)))
    assert wrong is not None and "not the current one" in wrong
    assert bot.fake.ephemerals(CAROL) == [] and bot.state(request_id) == "pending"


def test_an_expired_enrollment_leaves_slack_at_the_next_housekeeping(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Carol never types her first code: the bot's periodic housekeeping deletes the DM and the
    QR file once the 10 minutes are over, and not before."""
    now = [time.time()]
    bot = step_up_bot(clock=lambda: now[0])
    totp = start_enrollment(bot, CAROL, secret_registry)
    assert bot.rotator.expiry.housekeeping is not None
    bot.rotator.expiry.housekeeping()
    assert totp.secret in everything_slack_keeps(bot.fake)

    now[0] += 10 * 60
    bot.rotator.expiry.housekeeping()
    assert totp.secret not in everything_slack_keeps(bot.fake)
    (deleted,) = audit(bot, "step_up.secret_deleted")
    assert (deleted["actor"], deleted["data"]) == (
        "expiry",
        {"user": CAROL, "message": "deleted", "file": "deleted"},
    )
    bot.rotator.expiry.housekeeping()  # nothing left to delete: no second entry
    assert len(audit(bot, "step_up.secret_deleted")) == 1


def test_a_failure_while_checking_a_code_is_said_in_the_modal(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """The store fails under the submission: the modal says so with a reference (not Slack's
    "We had some trouble connecting"), and nothing is approved."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    request_id, _ = bot.request_key()
    bot.store.close()
    said = modal_error(submit_code(bot, request_id, BOB, totp.now()))
    assert said is not None and said.startswith("Something went wrong on our side") and "Ref " in said
