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
from bot.settings import load_settings
from bot.store import open_store
from handlers.enroll import qr_png
from handlers.step_up import CODE_BLOCK, CODE_INPUT, TOTP_MODAL
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CAROL,
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


def enroll(bot: BotUnderTest, user: str, secret_registry: SecretRegistry) -> pyotp.TOTP:
    """/rotate-enroll, then read the secret from the direct message, as an authenticator would."""
    before = len(enrollment_dms(bot, user))
    assert bot.command("/rotate-enroll", "", user).status == 200
    bot.fake.wait_for("chat.postMessage", lambda c: is_enrollment_dm(c, user), count=before + 1)
    uri = _uri(enrollment_dms(bot, user)[-1])
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    secret_registry.register(totp.secret, f"TOTP secret of {user}")
    bot.fake.wait_text("chat.postEphemeral", "I sent you a direct message", user=user)
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


def submit_code(bot: BotUnderTest, request_id: str, user: str, code: str) -> None:
    sent = bot.slack.submit_view(TOTP_MODAL, request_id, {CODE_BLOCK: {CODE_INPUT: code}}, user)
    assert (sent.status, sent.text) == (200, "")


def approve_with_code(bot: BotUnderTest, request_id: str, ts: str, user: str, code: str) -> None:
    """Click Approve, wait for the code modal, type ``code`` in it."""
    modals = len(bot.fake.calls_to("views.open"))
    click_approve(bot, request_id, ts, user)
    modal = bot.fake.wait_for("views.open", count=modals + 1)[-1]
    assert modal.ok and modal.params["view"]["callback_id"] == TOTP_MODAL
    assert modal.params["view"]["private_metadata"] == request_id
    submit_code(bot, request_id, user, code)


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
    """Bob enrolls (link + QR code in a DM), clicks Approve, types his code: approved with TOTP."""
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    assert (totp.issuer, totp.name) == ("MyOsicam Rotator", BOB)

    # the QR code: a PNG of the same link, uploaded in three steps to Bob alone
    steps = [
        c.method
        for c in bot.fake.calls
        if c.method.startswith("files.")
    ]
    assert steps == ["files.getUploadURLExternal", UPLOAD_METHOD, "files.completeUploadExternal"]
    assert all(c.ok for c in bot.fake.calls if c.method in steps)
    (upload,) = bot.fake.uploads()
    assert upload["shared_to"] == [BOB]
    assert upload["data"] == qr_png(_uri(enrollment_dms(bot, BOB)[0]))
    assert upload["data"].startswith(b"\x89PNG\r\n\x1a\n")

    request_id, ts = bot.request_key()
    click_approve(bot, request_id, ts, BOB)
    modal = bot.fake.wait_for("views.open")[0]
    assert "6-digit code" in modal.all_text()
    assert bot.state(request_id) == "pending"  # the click alone counts for nothing

    submit_code(bot, request_id, BOB, totp.now())
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
    assert (enrolled["actor"], enrolled["data"]) == (f"T0TEAM/{BOB}", {"user": BOB, "method": "totp"})

    # the secret went to Bob's DM and QR code only: no other Slack text, not the store in clear
    elsewhere = [c for c in bot.fake.calls if not is_enrollment_dm(c, BOB)]
    assert [(c.method, n) for c in elsewhere for n in scan_text(c.raw_body + c.all_text())] == []
    db = Path(bot.settings.store_url.removeprefix("sqlite://")).read_bytes()
    assert totp.secret.encode() not in db
    assert bot.store.enrollment(BOB).sealed_secret != totp.secret  # type: ignore[union-attr]


def test_wrong_expired_and_replayed_codes_approve_nothing(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    totp = enroll(bot, BOB, secret_registry)
    request_id, ts = bot.request_key()

    approve_with_code(bot, request_id, ts, BOB, not_a_code_of_now(totp))
    wrong = bot.fake.wait_text("chat.postEphemeral", "not the current one", user=BOB)
    assert "4 tries left" in wrong.text
    approve_with_code(bot, request_id, ts, BOB, totp.at(time.time() - 120))  # four steps ago
    bot.fake.wait_for(
        "chat.postEphemeral", lambda c: "not the current one" in c.text and "3 tries left" in c.text
    )
    assert bot.state(request_id) == "pending"

    code = totp.now()
    approve_with_code(bot, request_id, ts, BOB, code)
    wait_until(lambda: bot.state(request_id) in ("approved", "running", "done"))

    second_id, second_ts = bot.request_key(f"{PANEL} second rotation, INC-4413")
    approve_with_code(bot, second_id, second_ts, BOB, code)  # the same code again
    bot.fake.wait_text("chat.postEphemeral", "already used", user=BOB)
    assert bot.state(second_id) == "pending"
    assert [e["request_id"] for e in audit(bot, "request.approved")] == [request_id]


def test_who_is_not_enrolled_is_told_how_and_the_requester_still_cannot_approve(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    bot = step_up_bot()
    enroll(bot, ALICE, secret_registry)
    request_id, ts = bot.request_key()

    click_approve(bot, request_id, ts, CAROL)
    assert "`/rotate-enroll`" in answers_to(bot.fake, CAROL)[0].text
    click_approve(bot, request_id, ts, ALICE)  # enrolled, but she asked
    assert answers_to(bot.fake, ALICE, 2)[-1].text.startswith("You asked for this rotation")
    assert bot.fake.calls_to("views.open") == []
    # a code submitted without the modal (a forged submission) changes nothing either
    submit_code(bot, request_id, CAROL, "123456")
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == CAROL, count=2)
    assert bot.state(request_id) == "pending"


def test_failures_are_rate_limited_per_approver(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """After 3 wrong codes (the configured limit) even the right code is not checked."""
    bot = step_up_bot(step_up_max_failures=3, step_up_window_minutes=15)
    totp = enroll(bot, BOB, secret_registry)
    enroll(bot, CAROL, secret_registry)
    request_id, ts = bot.request_key()
    for n in range(3):
        submit_code(bot, request_id, BOB, not_a_code_of_now(totp))
        bot.fake.wait_for("chat.postEphemeral", lambda c: "not the current one" in c.text, count=n + 1)
    click_approve(bot, request_id, ts, BOB)
    bot.fake.wait_text("chat.postEphemeral", "Too many wrong codes", user=BOB)
    assert bot.fake.calls_to("views.open") == []  # no modal while locked out
    submit_code(bot, request_id, BOB, totp.now())
    bot.fake.wait_for("chat.postEphemeral", lambda c: "Too many wrong codes" in c.text, count=2)
    assert bot.state(request_id) == "pending"
    # another approver is not locked out by Bob's failures
    click_approve(bot, request_id, ts, CAROL)
    bot.fake.wait_for("views.open")


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
        assert store.reset_enrollment(BOB, actor=f"T0TEAM/{DAVE}") is True
        assert (store.enrollment(BOB), store.failures_since(BOB, 0)) == (None, [])
        assert store.reset_enrollment(BOB, actor=f"T0TEAM/{DAVE}") is False
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
    threads = [threading.Thread(target=submit_code, args=(bot, rid, BOB, code)) for rid, _ in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bot.fake.wait_text("chat.postEphemeral", "already used", user=BOB)
    wait_until(lambda: len(audit(bot, "request.approved")) == 1)
    states = [str(bot.state(rid)) for rid, _ in (first, second)]
    assert states.count("pending") == 1
    assert len(audit(bot, "request.approved")) == 1
