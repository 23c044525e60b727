"""Block Kit builders: data in, dict out, with previews that read well on their own."""

from __future__ import annotations

import json
from dataclasses import replace

from handlers import blocks
from handlers import messages as m
from handlers.plan_view import PlanView
from handlers.rotation_request import Decision, Person, RotationRequest, State

T0 = 1_795_000_000.0  # a fixed moment, so times on the card are known
ALICE, BOB = Person("T0", "U0ALICE"), Person("T0", "U0BOB")
PLAN = PlanView(
    panel="prod-eu",
    op="rotate-key",
    engine_version="0.4.0",
    host_key_fingerprint="SHA256:Yx0Q",
    panel_host="prod-eu.example.net",
    key_fingerprint="3a9c41d2e5f60718",
    scheme="iv12_tag_ct/base64",
    scheme_description="base64(iv·tag·ciphertext), key read as hex",
    columns={"oscam_installs.webif_password": 812, "saved_servers.ssh_credential_encrypted": 377},
    skipped=("email_configurations",),
    total=1189,
)
REQUEST = RotationRequest(
    id="r-20261126-031402-7f3a",
    op="rotate-key",
    panel="prod-eu",
    reason="suspected .env disclosure, INC-4412",
    requester=ALICE,
    channel_id="C0ROTATE",
    plan=PLAN,
    created_at=T0,
    expires_at=T0 + 1800,
)


def card(request: RotationRequest, now: float = T0) -> dict:
    return blocks.request_card(
        request, approvers="<!subteam^S0ONCALL>", approvals_required=1, now=now
    )


def texts(message: dict) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_a_pending_card_has_the_plan_the_deadline_and_two_buttons() -> None:
    message = card(REQUEST, now=T0 + 60)
    assert message["text"] == (
        ":key: Key rotation requested: panel prod-eu by <@U0ALICE> · Needs 1 approval from "
        f"<!subteam^S0ONCALL> (not <@U0ALICE>) · expires {m.clock_time(T0 + 1800)} (in 29 min) · "
        f"plan {PLAN.short_hash}"
    )
    body = texts(message)
    assert "1,189 stored credentials in 2 columns will be re-encrypted" in body
    assert "email_configurations: table not present, skipped" in body
    assert [b["type"] for b in message["blocks"]][-2:] == ["actions", "context"]


def test_decided_cards_have_no_buttons_and_say_why() -> None:
    approved_at = T0 + 120
    cases = {
        State.DENIED: REQUEST.evolve(
            state=State.DENIED, decision=Decision(BOB, approved_at, "wrong panel")
        ),
        State.EXPIRED: REQUEST.evolve(state=State.EXPIRED, decision=Decision(None, T0 + 1800)),
        State.CANCELLED: REQUEST.evolve(
            state=State.CANCELLED, decision=Decision(ALICE, approved_at)
        ),
        State.VOIDED: REQUEST.evolve(
            state=State.VOIDED,
            approvals=(Decision(BOB, approved_at),),
            outcome={"differences": ["engine 0.4.0 -> 0.4.1"]},
        ),
    }
    expected = {
        State.DENIED: f":no_entry: Denied by <@U0BOB> at {m.clock_time(approved_at)}: “wrong panel”",
        State.EXPIRED: f":hourglass: Expired at {m.clock_time(T0 + 1800)} without approval",
        State.CANCELLED: f":x: Cancelled by <@U0ALICE> at {m.clock_time(approved_at)}",
        State.VOIDED: (
            ":warning: Plan changed before running (engine 0.4.0 -&gt; 0.4.1); "
            "approvals void, request again"
        ),
    }
    for state, request in cases.items():
        message = card(request)
        assert "actions" not in [b["type"] for b in message["blocks"]], state
        assert expected[state] in message["text"], state


def test_a_running_card_shows_the_current_step() -> None:
    running = REQUEST.evolve(
        state=State.RUNNING,
        approvals=(Decision(BOB, T0 + 60),),
        progress={"name": "reencrypt", "state": "started", "index": 3, "total": 9},
    )
    assert (
        card(running)["text"]
        .split(" · ", 1)[1]
        .startswith(
            f":white_check_mark: Approved by <@U0BOB> at {m.clock_time(T0 + 60)} · running: step 3/9, re-encrypting…"
        )
    )


def test_a_failed_card_that_did_not_roll_back_asks_for_recover() -> None:
    failed = REQUEST.evolve(
        state=State.FAILED,
        approvals=(Decision(BOB, T0 + 60),),
        outcome={
            "ok": False,
            "code": "rollback_failed",
            "message": "restore failed",
            "rolled_back": False,
        },
    )
    message = card(failed)
    assert (
        ":sos: Failed and NOT rolled back: run recover on prod-eu (see thread)" in message["text"]
    )
    assert "run `sudo myosicam-rotator recover` on prod-eu's host" in texts(message)


def test_step_replies_read_like_the_ux_sketch() -> None:
    assert m.step_reply(
        {"name": "restart", "state": "ok", "detail": "php8.3-fpm", "elapsed_ms": 900}
    ) == ("✔ php-fpm restarted · php8.3-fpm · 0.9 s")
    assert m.step_reply(
        {"name": "verify", "state": "failed", "detail": "GET /health returned 500"}
    ) == ("✖ verification failed: GET /health returned 500")
    assert m.step_reply(
        {"name": "bootstrap", "state": "ok", "agent": "agent-7", "elapsed_ms": 1500}
    ) == ("✔ agent-7: bootstrap ran · 1.5 s")
    assert m.step_reply(
        {"name": "verify", "state": "ok", "detail": "verified from disk · 96/96"}
    ) == ("✔ verified from disk · 96/96")
    assert m.step_reply(
        {"name": "backup", "state": "skipped", "detail": "no backup hook configured"}
    ) == ("↷ backup skipped: no backup hook configured")


def test_the_deny_modal_asks_for_a_reason_and_carries_the_request_id() -> None:
    view = blocks.deny_modal(REQUEST.id, "headline")
    assert (view["callback_id"], view["private_metadata"], view["blocks"][-1]["block_id"]) == (
        blocks.DENY_MODAL,
        REQUEST.id,
        blocks.DENY_REASON_BLOCK,
    )


def test_plan_differences_name_what_changed() -> None:
    moved = replace(PLAN, engine_version="0.4.1", host_key_fingerprint="SHA256:new")
    assert PLAN.differences(moved) == [
        "engine 0.4.0 -> 0.4.1",
        "host key SHA256:Yx0Q -> SHA256:new",
    ]
    more_rows = replace(PLAN, total=5000)
    assert (PLAN.differences(more_rows), PLAN.hash == more_rows.hash) == ([], True)
