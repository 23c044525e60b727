"""Step-up approval with TOTP, over signed HTTP with the strict fake Web API.

Codes are made the way an authenticator makes them, from the secret in the
enrollment's ``otpauth://`` link: ``pyotp`` at a given time (``at``), so an
expired code is one of two minutes ago and no test waits for the clock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pyotp
import pytest

from bot.enrollment_key import KEY_ENV, EnrollmentKey
from bot.errors import SettingsError
from bot.fakes.slack_api import UPLOAD_METHOD, Call
from bot.fakes.slack_signing import Sent
from bot.settings import load_settings
from bot.store import open_store
from bot.totp import STEP_S
from handlers.enroll import APPROVE_ENROLLMENT_ACTION, CONFIRM_ACTION, CONFIRM_MODAL, qr_png
from handlers.step_up_modal import CODE_BLOCK, CODE_INPUT, TOTP_MODAL
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    PANEL,
    BotUnderTest,
    MakeBot,
    answers_to,
    wait_until,
    write_config,
)
from tests.support.secrets_scan import SecretRegistry, scan_text


@pytest.fixture
def step_up_bot(
    make_bot: MakeBot, monkeypatch: pytest.MonkeyPatch, secret_registry: SecretRegistry
) -> MakeBot:
    """``make_bot`` with step_up = "totp"; the enrollment key comes from the environment."""
    key = EnrollmentKey.generate()
    secret_registry.register(key.hex(), "ROTATOR_ENROLLMENT_KEY")
    monkeypatch.setenv(KEY_ENV, key.hex())

    def make(**config: object) -> BotUnderTest:
        config.setdefault("step_up", "totp")
        config.setdefault("enroll_admins", [DAVE])
        return make_bot(**config)

    return make


def start_enrollment(bot: BotUnderTest, user: str, secret_registry: SecretRegistry) -> pyotp.TOTP:
    """/rotate-enroll, then read the secret from the direct message, as an authenticator would."""
    before = len(enrollment_dms(bot, user))
    assert bot.command("/rotate-enroll", "", user).status == 200
    bot.fake.wait_for("chat.postMessage", lambda c: is_enrollment_dm(c, user), count=before + 1)
    uri = _uri(enrollment_dms(bot, user)[-1])
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    secret_registry.register(totp.secret, f"TOTP secret of {user}")
    secret_registry.register(uri, f"otpauth URI of {user}")
    bot.fake.wait_for(
        "chat.postEphemeral",
        lambda c: "I sent you a direct message" in c.text and c.params.get("user") == user,
        count=before + 1,
    )
    return totp


def type_first_code(bot: BotUnderTest, user: str, code: str) -> Sent:
    """Click the DM's "Type my first code", then submit ``code`` in the modal it opens."""
    dm = enrollment_dms(bot, user)[-1]
    button = next(
        e
        for b in dm.params["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == CONFIRM_ACTION
    )
    modals = len(bot.fake.calls_to("views.open"))
    body = bot.slack.click_body(CONFIRM_ACTION, button["value"], user, str(dm.response["ts"]), channel=user)
    assert bot.slack.post(body).status == 200
    modal = bot.fake.wait_for("views.open", count=modals + 1)[-1]
    assert modal.ok and modal.params["view"]["callback_id"] == CONFIRM_MODAL
    return bot.slack.submit_view(
        CONFIRM_MODAL, modal.params["view"]["private_metadata"], {CODE_BLOCK: {CODE_INPUT: code}}, user
    )


def confirm(bot: BotUnderTest, user: str, totp: pyotp.TOTP) -> None:
    """The first code: the previous step's, so that the code of now is still unused after it.

    Typed early in a step: one typed in a step's last seconds may arrive in the next one,
    where it is two steps old, refused, and a counted failure later tests would see."""
    wait_until(lambda: STEP_S - time.time() % STEP_S > 8, timeout=STEP_S, what="early in a time step")
    sent = type_first_code(bot, user, totp.at(time.time() - STEP_S))
    assert (sent.status, sent.answer) == (200, ""), sent.answer
    bot.fake.wait_for(
        "chat.postMessage", lambda c: c.params.get("channel") == user and "Your authenticator is" in c.text
    )


def approve_enrollment(bot: BotUnderTest, user: str, admin: str = DAVE) -> Sent:
    """The enroll admin's click on the approval message in the rotations channel."""
    message = bot.fake.wait_for("chat.postMessage", lambda c: is_approval_message(c, user))[-1]
    return bot.slack.click(APPROVE_ENROLLMENT_ACTION, user, admin, str(message.response["ts"]))


def is_approval_message(call: Call, user: str) -> bool:
    return call.params.get("channel") == CHANNEL and any(
        e.get("action_id") == APPROVE_ENROLLMENT_ACTION and e.get("value") == user
        for b in call.params.get("blocks") or []
        for e in b.get("elements") or []
    )


def enroll(
    bot: BotUnderTest, user: str, secret_registry: SecretRegistry, *, admin: str | None = DAVE
) -> pyotp.TOTP:
    """Enroll ``user`` the whole way: the DM, the first code, an enroll admin's approval."""
    totp = start_enrollment(bot, user, secret_registry)
    confirm(bot, user, totp)
    if admin is not None:
        assert approve_enrollment(bot, user, admin).status == 200
        wait_until(lambda: bot.store.enrollment(user).status == "active")  # type: ignore[union-attr]
    return totp


def is_enrollment_dm(call: Call, user: str) -> bool:
    return call.params.get("channel") == user and "otpauth://" in call.text


def enrollment_dms(bot: BotUnderTest, user: str) -> list[Call]:
    return [c for c in bot.fake.calls_to("chat.postMessage") if is_enrollment_dm(c, user)]


def _uri(call: Call) -> str:
    start = call.text.index("otpauth://")
    return call.text[start : call.text.index("`", start)]


def click_approve(bot: BotUnderTest, request_id: str, ts: str, user: str) -> None:
    assert bot.approve(request_id, ts, user).status == 200


def submit_code(bot: BotUnderTest, request_id: str, user: str, code: str) -> Sent:
    sent = bot.slack.submit_view(TOTP_MODAL, request_id, {CODE_BLOCK: {CODE_INPUT: code}}, user)
    assert sent.status == 200
    return sent


def modal_error(sent: Sent) -> str | None:
    """The error the modal shows on the code's block (it stays open), or None (it closed)."""
    answer = sent.json()
    if not answer:
        assert sent.answer == "", sent.answer
        return None
    assert answer["response_action"] == "errors", answer
    assert list(answer["errors"]) == [CODE_BLOCK]
    return str(answer["errors"][CODE_BLOCK])


def approve_with_code(bot: BotUnderTest, request_id: str, ts: str, user: str, code: str) -> str | None:
    """Click Approve, wait for the code modal, type ``code`` in it; the modal's error, if any."""
    modals = len(bot.fake.calls_to("views.open"))
    click_approve(bot, request_id, ts, user)
    modal = bot.fake.wait_for("views.open", count=modals + 1)[-1]
    assert modal.ok and modal.params["view"]["callback_id"] == TOTP_MODAL
    assert modal.params["view"]["private_metadata"] == request_id
    return modal_error(submit_code(bot, request_id, user, code))


def not_a_code_of_now(totp: pyotp.TOTP) -> str:
    now = time.time()
    valid = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


def audit(bot: BotUnderTest, kind: str) -> list[dict[str, object]]:
    return [
        {**e, "data": json.loads(str(e["data"]))} for e in bot.store.audit_entries() if e["kind"] == kind
    ]


def test_enroll_then_approve_with_a_good_code(
    step_up_bot: MakeBot, secret_registry: SecretRegistry, tmp_path: Path
) -> None:
    """Bob enrolls (link + QR code in a DM, his first code, Dave's approval), clicks Approve,
    types his code: approved with TOTP."""
    bot = step_up_bot()
    totp = start_enrollment(bot, BOB, secret_registry)
    assert (totp.issuer, totp.name) == ("MyOsicam Rotator", BOB)

    # the QR code: a PNG of the same link, uploaded in three steps to Bob alone
    steps = [c.method for c in bot.fake.calls if c.method.startswith("files.")]
    assert steps == ["files.getUploadURLExternal", UPLOAD_METHOD, "files.completeUploadExternal"]
    assert all(c.ok for c in bot.fake.calls if c.method in steps)
    (upload,) = bot.fake.uploads()
    assert upload["shared_to"] == [BOB]
    assert upload["data"] == qr_png(_uri(enrollment_dms(bot, BOB)[0]))
    assert upload["data"].startswith(b"\x89PNG\r\n\x1a\n")
    confirm(bot, BOB, totp)
    assert approve_enrollment(bot, BOB, DAVE).status == 200
    wait_until(lambda: bot.store.enrollment(BOB).status == "active")  # type: ignore[union-attr]

    request_id, ts = bot.request_key()
    modals = len(bot.fake.calls_to("views.open"))
    click_approve(bot, request_id, ts, BOB)
    modal = bot.fake.wait_for("views.open", count=modals + 1)[-1]
    assert "6-digit code" in modal.all_text()
    assert bot.state(request_id) == "pending"  # the click alone counts for nothing

    assert modal_error(submit_code(bot, request_id, BOB, totp.now())) is None  # the modal closes
    wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))
    bot.fake.wait_for(
        "chat.postMessage",
        lambda c: c.params.get("thread_ts") == ts and "approved with TOTP" in c.text,
    )
    # the card says the approval was checked with TOTP (and the store keeps it)
    bot.fake.wait_for(
        "chat.update", lambda c: f":white_check_mark: Approved by <@{BOB}> (with TOTP) at " in c.all_text()
    )
    assert [a.factor for a in bot.store.get(request_id).approvals] == ["TOTP"]  # type: ignore[union-attr]
    (approved,) = audit(bot, "request.approved")
    assert approved["actor"] == f"T0TEAM/{BOB}"
    assert approved["data"]["detail"]["approved_with"] == "TOTP"  # type: ignore[index]
    (enrolled,) = audit(bot, "step_up.enrolled")
    assert (enrolled["actor"], enrolled["data"]) == (
        f"T0TEAM/{BOB}",
        {"user": BOB, "method": "totp", "status": "pending"},
    )

    # the secret went to Bob's DM and QR code only: no other Slack text, not the store in clear
    elsewhere = [c for c in bot.fake.calls if not is_enrollment_dm(c, BOB)]
    assert [(c.method, n) for c in elsewhere for n in scan_text(c.raw_body + c.all_text())] == []
    db = Path(bot.settings.store_url.removeprefix("sqlite://")).read_bytes()
    assert totp.secret.encode() not in db
    assert bot.store.enrollment(BOB).sealed_secret != totp.secret  # type: ignore[union-attr]


def test_wrong_expired_and_replayed_codes_approve_nothing(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Each refusal is said in the modal itself (it stays open); nothing is approved."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    request_id, ts = bot.request_key()
    told = bot.fake.ephemerals(BOB)

    wrong = approve_with_code(bot, request_id, ts, BOB, not_a_code_of_now(totp))
    assert wrong is not None and "not the current one" in wrong and "4 tries left" in wrong
    old = approve_with_code(bot, request_id, ts, BOB, totp.at(time.time() - 120))  # four steps ago
    assert old is not None and "not the current one" in old and "3 tries left" in old
    assert bot.state(request_id) == "pending"
    assert bot.fake.ephemerals(BOB) == told  # said in the modal, not in the channel

    code = totp.now()
    assert approve_with_code(bot, request_id, ts, BOB, code) is None
    wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))

    second_id, second_ts = bot.request_key(f"{PANEL} second rotation, INC-4413")
    again = approve_with_code(bot, second_id, second_ts, BOB, code)  # the same code again
    assert again is not None and "already used" in again
    assert bot.state(second_id) == "pending"
    assert [e["request_id"] for e in audit(bot, "request.approved")] == [request_id]


def test_a_code_two_steps_away_is_refused(step_up_bot: MakeBot, secret_registry: SecretRegistry) -> None:
    """The window is one 30-second step either side: a code of 60 s ago or 60 s ahead is wrong,
    however right it once was (or will be)."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    request_id, ts = bot.request_key()
    for offset in (-2 * STEP_S, 2 * STEP_S):
        now = time.time()
        code = totp.at(now + offset)
        if code in {totp.at(now + d * STEP_S) for d in (-1, 0, 1)}:
            continue  # a rare collision of two 6-digit codes: not a test of the window
        refused = approve_with_code(bot, request_id, ts, BOB, code)
        assert refused is not None and "not the current one" in refused, offset
    assert bot.state(request_id) == "pending"
    assert audit(bot, "request.approved") == []


def test_who_is_not_enrolled_is_told_how_and_the_requester_still_cannot_approve(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    enroll(bot, ALICE, secret_registry)
    request_id, ts = bot.request_key()
    modals = len(bot.fake.calls_to("views.open"))

    click_approve(bot, request_id, ts, CAROL)
    assert "`/rotate-enroll`" in answers_to(bot.fake, CAROL)[0].text
    click_approve(bot, request_id, ts, ALICE)  # enrolled, but she asked
    assert answers_to(bot.fake, ALICE, 2)[-1].text.startswith("You asked for this rotation")
    assert len(bot.fake.calls_to("views.open")) == modals
    # a code submitted without the modal (a forged submission) changes nothing either
    forged = modal_error(submit_code(bot, request_id, CAROL, "123456"))
    assert forged is not None and "/rotate-enroll" in forged
    assert bot.state(request_id) == "pending"


def test_the_requester_submitting_the_code_form_with_her_own_valid_code_is_refused(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Alice, enrolled, asks for a rotation and then sends the code form herself, signed, with
    no click before it and a right code: the two-person rule holds, her code is not even
    spent, and no try is counted."""
    bot = step_up_bot()
    totp = enroll(bot, ALICE, secret_registry)
    last_step = bot.store.enrollment(ALICE).last_step  # type: ignore[union-attr]
    request_id, _ = bot.request_key()

    refused = modal_error(submit_code(bot, request_id, ALICE, totp.now()))
    assert refused is not None and refused.startswith("You asked for this rotation")
    assert bot.state(request_id) == "pending"
    assert bot.store.get(request_id).approvals == ()  # type: ignore[union-attr]
    assert audit(bot, "request.approved") == [] and audit(bot, "request.approval_added") == []
    assert bot.store.enrollment(ALICE).last_step == last_step  # type: ignore[union-attr]
    assert bot.store.failures_since(ALICE, 0) == []


def test_failures_are_rate_limited_per_approver(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """After 3 wrong codes (the configured limit) even the right code is not checked."""
    bot = step_up_bot(step_up_max_failures=3, step_up_window_minutes=15)
    totp = enroll(bot, BOB, secret_registry)
    enroll(bot, CAROL, secret_registry)
    request_id, ts = bot.request_key()
    for left in ("2 tries left", "1 try left", "No tries left"):
        wrong = modal_error(submit_code(bot, request_id, BOB, not_a_code_of_now(totp)))
        assert wrong is not None and "not the current one" in wrong and left in wrong
    modals = len(bot.fake.calls_to("views.open"))
    click_approve(bot, request_id, ts, BOB)
    bot.fake.wait_text("chat.postEphemeral", "Too many wrong codes", user=BOB)
    assert len(bot.fake.calls_to("views.open")) == modals  # no modal while locked out
    locked = modal_error(submit_code(bot, request_id, BOB, totp.now()))
    assert locked is not None and "Too many wrong codes" in locked
    assert bot.state(request_id) == "pending"
    # another approver is not locked out by Bob's failures
    click_approve(bot, request_id, ts, CAROL)
    bot.fake.wait_for("views.open", count=modals + 1)


def test_an_admin_resets_a_lost_enrollment_with_its_own_audit_entry(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    old = enroll(bot, BOB, secret_registry)
    assert bot.command("/rotate-enroll", "", BOB).status == 200
    bot.fake.wait_text("chat.postEphemeral", "You are enrolled already", user=BOB)

    assert bot.command("/rotate-enroll", f"reset <@{BOB}|bob>", CAROL).status == 200
    bot.fake.wait_text("chat.postEphemeral", f"Only <@{DAVE}> can reset", user=CAROL)
    assert bot.store.enrollment(BOB) is not None

    assert bot.command("/rotate-enroll", f"reset <@{BOB}|bob>", DAVE).status == 200
    bot.fake.wait_text("chat.postEphemeral", f"Reset: <@{BOB}>", user=DAVE)
    (reset,) = audit(bot, "step_up.reset")
    assert (reset["actor"], reset["data"]) == (f"T0TEAM/{DAVE}", {"user": BOB, "method": "totp"})

    request_id, ts = bot.request_key()
    click_approve(bot, request_id, ts, BOB)
    bot.fake.wait_text("chat.postEphemeral", "you have not enrolled", user=BOB)
    new = enroll(bot, BOB, secret_registry)
    assert new.secret != old.secret


def test_step_up_per_panel_overrides_the_global_setting(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "rotator.toml",
        store_url=f"sqlite://{tmp_path / 'r.db'}",
        panels=("prod-eu", "lab"),
        extra={"step_up": "totp"},
    )
    config.write_text(
        config.read_text().replace('host = "lab.example.net"', 'host = "lab.example.net"\nstep_up = "none"'),
        encoding="utf-8",
    )
    env = {
        "SLACK_BOT_TOKEN": "xoxb-1-abc",
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123",
        "ROTATOR_CONFIG": str(config),
    }
    settings = load_settings(env)
    assert settings.step_up_panels == {"lab": False, "prod-eu": True}


def test_the_sealed_secret_opens_only_for_its_owner_and_older_stores_get_the_tables(
    tmp_path: Path,
) -> None:
    key = EnrollmentKey.generate()
    sealed = key.seal("JBSWY3DPEHPK3PXP", BOB)
    assert key.open(sealed, BOB) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(Exception, match="does not open"):
        key.open(sealed, CAROL)  # moved onto another approver's row
    with pytest.raises(Exception, match="does not open"):
        EnrollmentKey.generate().open(sealed, BOB)
    assert key.hex() not in repr(key)

    path = tmp_path / "old.db"
    open_store(f"sqlite://{path}").close()
    with sqlite3.connect(path) as conn:  # a store made before enrollments existed
        conn.execute("DROP TABLE totp_enrollments")
        conn.execute("DROP TABLE totp_failures")
        conn.execute("DROP TABLE schema_migrations")  # nor versioned migrations
    store = open_store(f"sqlite://{path}")
    assert store.enrollment(BOB) is None and store.failures_since(BOB, 0) == []
    store.close()



def test_the_enrollments_room_on_each_backend(any_store_url: str) -> None:
    """Each code's step is taken once (and none older after it); failures count in a window."""
    clock = iter(float(t) for t in range(1000, 2000, 10))
    store = open_store(any_store_url, lambda: next(clock), audit_key=AUDIT_KEY)
    try:
        assert store.enroll(BOB, "sealed", actor=f"T0TEAM/{BOB}") is True
        assert store.enroll(BOB, "other", actor=f"T0TEAM/{BOB}") is False
        assert store.enrollment(BOB).sealed_secret == "sealed"  # type: ignore[union-attr]
        assert [store.use_step(BOB, s) for s in (100, 100, 99, 101)] == [True, False, False, True]
        for _ in range(3):
            store.record_failure(BOB, keep_s=15)
        assert len(store.failures_since(BOB, 0)) == 2  # the first aged out when the third came
        assert store.reset_enrollment(BOB, actor=f"T0TEAM/{DAVE}") is not None
        assert (store.enrollment(BOB), store.failures_since(BOB, 0)) == (None, [])
        assert store.reset_enrollment(BOB, actor=f"T0TEAM/{DAVE}") is None
        kinds = [e["kind"] for e in store.audit_entries()]
        assert kinds == ["step_up.enrolled", "step_up.reset"]
    finally:
        store.close()


def test_step_up_without_the_enrollment_key_is_refused_with_the_fix(
    make_bot: MakeBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("ROTATOR_ENROLLMENT_KEY_FILE", raising=False)
    with pytest.raises(SettingsError, match="ROTATOR_ENROLLMENT_KEY_FILE") as refused:
        make_bot(step_up="totp")
    assert "python -m bot audit keygen" in refused.value.message


def test_an_unknown_step_up_method_is_named_in_the_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "rotator.toml", store_url=f"sqlite://{tmp_path / 'r.db'}", extra={"step_up": "sms"}
    )
    env = {
        "SLACK_BOT_TOKEN": "xoxb-1-abc",
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123",
        "ROTATOR_CONFIG": str(config),
    }
    with pytest.raises(SettingsError, match=r"step_up: Input should be 'none' or 'totp'"):
        load_settings(env)


def test_one_code_submitted_for_two_requests_at_once_approves_one(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Two submissions race with the same code (as two replicas would see them): one wins."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    first = bot.request_key()
    second = bot.request_key(f"{PANEL} second rotation, INC-4413")
    code = totp.now()
    errors: list[str | None] = []
    threads = [
        threading.Thread(target=lambda r=rid: errors.append(modal_error(submit_code(bot, r, BOB, code))))
        for rid, _ in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 2 and errors.count(None) == 1
    assert "already used" in str(next(e for e in errors if e))
    wait_until(lambda: len(audit(bot, "request.approved")) == 1)
    states = [str(bot.state(rid)) for rid, _ in (first, second)]
    assert states.count("pending") == 1
    assert len(audit(bot, "request.approved")) == 1


def test_a_store_from_before_confirmation_keeps_its_enrollments_in_use(any_store_url: str) -> None:
    """A ``totp_enrollments`` table without the status columns gains them at the next start,
    and the enrollments it held stay active (they were approving already), on each backend."""
    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    with store.transaction() as tx:
        tx.execute("DROP TABLE totp_enrollments")
        tx.execute(
            "CREATE TABLE totp_enrollments (user_id VARCHAR(32) PRIMARY KEY, "
            "sealed_secret TEXT NOT NULL, enrolled_at DOUBLE NOT NULL, last_step BIGINT NOT NULL)"
        )
        tx.execute("INSERT INTO totp_enrollments VALUES (?, ?, ?, ?)", (BOB, "sealed", 1.0, 7))
        tx.execute("DROP TABLE schema_migrations")  # such a store had no versioned migrations either
    store.close()
    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    try:
        old = store.enrollment(BOB)
        assert old is not None and (old.status, old.last_step, old.dm_ts) == ("active", 7, "")
        assert store.use_step(BOB, 8) is True
        open_store(any_store_url, audit_key=AUDIT_KEY).close()  # a second start adds nothing
    finally:
        store.close()
