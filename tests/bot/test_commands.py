"""Slash commands over real HTTP: what each person sees when they ask for a rotation."""

from __future__ import annotations

import re

from bot.fakes.slack_api import has_buttons
from handlers.rotation_request import State
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    DAVE,
    ONCALL,
    PANEL,
    MakeBot,
    answers_to,
    card_request_id,
    wait_until,
)
from tests.support.fake_engine import OLD_FP


def test_rotate_key_posts_a_card_with_the_whole_plan(make_bot: MakeBot) -> None:
    """/rotate-key is acknowledged at once, then a card shows who, why, the plan and the buttons."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    ack = bot.last_ack
    assert (ack.status, ack.text) == (200, "")
    assert bot.fake.ephemerals(ALICE) == [
        ":hourglass_flowing_sand: Asking the engine on prod-eu for a plan (rotate-key)…"
    ]
    card = bot.fake.latest_card(CHANNEL, ts)
    text = card.all_text()
    expected_fragments = [
        ":key: Key rotation requested: panel prod-eu",
        "Requested by <@U0ALICE>",
        "suspected .env disclosure, INC-4412",
        "1,204 stored credentials in 4 columns will be re-encrypted",
        "oscam_installs.webif_password 812",
        "saved_servers.ssh_credential_encrypted 377",
        "email_configurations: table not present, skipped",
        "layout: base64(iv·tag·ciphertext), key read as hex",
        f"current key {OLD_FP[:8]}…",
        "panel host prod-eu.example.net",
        "host key SHA256:Yx0fakehostkeyQ",
        "engine 0.4.0",
        f"Needs 1 approval from <!subteam^{ONCALL}> (not <@U0ALICE>)",
        "expires ",
        "(in 30 min)",
        f"Request `{request_id}`",
    ]
    assert [f for f in expected_fragments if f not in text] == []
    assert has_buttons(card)
    buttons = next(b for b in card.params["blocks"] if b["type"] == "actions")["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        ("approve_rotation", request_id),
        ("deny_rotation", request_id),
    ]
    preview = card.text
    assert "Key rotation requested: panel prod-eu" in preview and "plan " in preview
    assert bot.store.get(request_id).message_ts == ts


def test_the_card_ts_is_saved_with_the_transition_that_posted_it(make_bot: MakeBot) -> None:
    """The request's history shows the card being posted, and the audit entry carries its ts."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    events = [t.event for t in bot.store.history(request_id)]
    assert events == ["created", "card_posted"]
    posted = [e for e in bot.store.audit_entries() if e["kind"] == "request.card_posted"]
    assert [('"message_ts":"' + ts + '"') in posted[0]["data"]] == [True]


def test_missing_reason_says_exactly_what_to_type(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-key", PANEL)
    expected = "`/rotate-key` needs a reason, e.g. `/rotate-key prod-eu suspected .env disclosure`."
    assert (sent.status, sent.text) == (200, expected)
    assert bot.cards() == []


def test_unknown_panel_lists_the_known_ones(make_bot: MakeBot) -> None:
    bot = make_bot(panels=("prod-eu", "prod-us"))
    sent = bot.command("/rotate-key", "prod-ue suspected disclosure")
    assert sent.text == "Unknown panel `prod-ue`. Known panels: prod-eu, prod-us."


def test_a_likely_typo_of_the_only_panel_is_not_taken_for_a_reason(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-key", "prod-ue suspected disclosure")
    assert sent.text == "Unknown panel `prod-ue`. Known panels: prod-eu."


def test_with_one_panel_the_panel_may_be_left_out(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, _ = bot.request_key("laptop stolen, INC-9")
    request = bot.store.get(request_id)
    assert (request.panel, request.reason) == (PANEL, "laptop stolen, INC-9")


def test_someone_who_may_not_request_is_told_who_may(make_bot: MakeBot) -> None:
    """The refusal is all Dave sees: no "Asking the engine…" first, and no plan is asked for."""
    bot = make_bot()
    sent = bot.command("/rotate-key", f"{PANEL} just curious", user=DAVE)
    assert (sent.status, sent.text) == (200, "")
    answer = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == DAVE)[0]
    assert answer.text == "Only members of <!subteam^S0SECOPS> can request rotations."
    bot.request_key()  # a later request is served, so Dave's has been dealt with in full
    assert bot.fake.ephemerals(DAVE) == [answer.text]
    assert len(bot.cards()) == 1
    assert len(bot.engine.ops("plan")) == 1


def test_requests_from_another_channel_are_sent_to_the_rotations_channel(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-key", f"{PANEL} disclosure", channel="C0ELSEWHERE")
    assert sent.text == "Rotations are requested in <#C0ROTATE>, so that the team sees them."


def test_admin_password_and_licence_key_get_the_operator_documentation_answer(
    make_bot: MakeBot,
) -> None:
    """Not rotated by this product: the admin console is run by MyOsicam staff."""
    bot = make_bot()
    admin = bot.command("/rotate-key", "admin password please")
    licence = bot.command("/rotate-key", f"{PANEL} licence key leaked")
    helped = bot.command("/rotate-help", "admin")
    assert admin.text == (
        "The admin operator password is managed by MyOsicam staff: contact MyOsicam support to rotate it."
    )
    assert "contact MyOsicam support" in licence.text and "PANEL_LICENSE_KEY" in licence.text
    assert helped.text == admin.text
    assert bot.cards() == []


def test_help_explains_every_command(make_bot: MakeBot) -> None:
    bot = make_bot()
    text = bot.command("/rotate-help", "").text
    for fragment in (
        "/rotate-key",
        "/rotate-agent",
        "/rotate-status",
        "/rotate-cancel",
        "prod-eu",
        "contact MyOsicam support",
        "expire after 30 min",
    ):
        assert fragment in text


def test_an_engine_that_cannot_plan_gets_a_short_answer_with_a_reference(make_bot: MakeBot) -> None:
    """The engine's reason, "nothing was changed", and a reference id; no card, no traceback."""
    bot = make_bot()
    bot.engine.plan_error = {
        "type": "error",
        "code": "undecryptable",
        "message": "2 values do not open with the current key: oscam_installs.webif_password#7, #9",
        "retryable": False,
        "rolled_back": None,
    }
    bot.command("/rotate-key", f"{PANEL} disclosure")
    answer = answers_to(bot.fake, ALICE)[0].text
    assert answer.startswith(
        "Could not plan on prod-eu: 2 values do not open with the current key: "
        "oscam_installs.webif_password#7, #9. Nothing was changed. Ref "
    )
    assert "Traceback" not in answer and len(answer) < 300
    assert bot.cards() == []


def test_a_card_that_cannot_be_posted_withdraws_the_request(make_bot: MakeBot) -> None:
    bot = make_bot()
    bot.fake.fail("chat.postMessage", "not_in_channel")
    bot.command("/rotate-key", f"{PANEL} disclosure")
    answer = answers_to(bot.fake, ALICE)[0].text
    assert "could not be posted" in answer and "Ref " in answer
    (request,) = bot.store.recent_final(5)
    assert request.state.value == "cancelled"


def test_status_lists_pending_requests_and_one_requests_history(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, _ = bot.request_key()
    bot.command("/rotate-status", "", user=BOB)
    listing = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == BOB)[0].text
    assert f"*Pending*  `{request_id}`  rotate-key prod-eu  by <@U0ALICE>" in listing
    assert "needs 1 approval" in listing and "min left" in listing

    bot.command("/rotate-status", request_id, user=BOB)
    history = bot.fake.wait_for(
        "chat.postEphemeral", lambda c: c.params.get("user") == BOB, count=2
    )[1]
    assert "created: pending by <@U0ALICE>" in history.text
    assert "card_posted: pending → pending (bot)" in history.text


def test_rotate_agent_plans_the_named_agents(make_bot: MakeBot) -> None:
    """The plan request names the agents; the card lists them with their servers."""
    bot = make_bot()
    bot.engine.plan_result = {
        **bot.engine.plan_result,
        "agents": [
            {"name": "agent-7", "server": "oscam-7.example.net", "last_seen": "2 min ago"},
            {"name": "agent-9", "server": "oscam-9.example.net", "last_seen": "1 min ago"},
        ],
    }
    bot.command("/rotate-agent", "agent-7,agent-9 lost laptop")
    card = bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)[0]
    text = card.all_text()
    assert "Agent token rotation requested: 2 agents on panel prod-eu (agent-7, agent-9)" in text
    assert "agent-7 on oscam-7.example.net · last seen 2 min ago" in text
    (plan,) = bot.engine.ops("plan")
    assert (plan.agents, plan.all_agents) == (["agent-7", "agent-9"], False)
    assert bot.store.get(card_request_id(card)).agents == ("agent-7", "agent-9")


def test_rotate_agent_names_any_agent_the_panel_accepts(make_bot: MakeBot) -> None:
    """Quoted names with spaces and commas, shell syntax and &, < > (which Slack sends
    escaped) reach the engine's plan request as typed (docs/agents-contract.md: names are
    data everywhere)."""
    bot = make_bot()
    typed = '"Büro 1, Keller","$(touch /tmp/x)",a&b<c> lost laptop'
    bot.command("/rotate-agent", typed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)
    (plan,) = bot.engine.ops("plan")
    assert (plan.agents, plan.all_agents) == (["Büro 1, Keller", "$(touch /tmp/x)", "a&b<c>"], False)


def test_rotate_agent_without_agents_shows_the_usage(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-agent", "")
    assert sent.text.startswith("`/rotate-agent` needs the agents to rotate, e.g.")


def test_two_requests_drawing_the_same_id_both_get_a_card(make_bot: MakeBot) -> None:
    bot = make_bot()
    ids = iter(["r-20261126-031402-aaaa", "r-20261126-031402-aaaa", "r-20261126-031402-bbbb"])
    bot.rotator.deps.new_id = lambda now: next(ids)
    first, _ = bot.request_key()
    second, _ = bot.request_key()
    assert (first, second) == ("r-20261126-031402-aaaa", "r-20261126-031402-bbbb")


def test_the_card_warns_of_an_unfinished_earlier_rotation(make_bot: MakeBot) -> None:
    bot = make_bot()
    bot.engine.plan_result = {
        **bot.engine.plan_result,
        "unfinished": {"rotation_id": "r-20261125-220000-0bad", "state": "REENCRYPTED"},
    }
    _, ts = bot.request_key()
    assert (
        ":warning: an unfinished rotation r-20261125-220000-0bad (REENCRYPTED) is on the host: "
        "the engine will ask for recover first" in bot.fake.latest_card(CHANNEL, ts).all_text()
    )


def test_status_is_only_for_requesters_and_approvers(make_bot: MakeBot) -> None:
    """Dave may neither request nor approve: /rotate-status tells him so and lists nothing."""
    bot = make_bot()
    request_id, _ = bot.request_key()
    for text in ("", request_id):
        assert bot.command("/rotate-status", text, user=DAVE).status == 200
    answers = bot.fake.wait_for(
        "chat.postEphemeral", lambda c: c.params.get("user") == DAVE, count=2
    )
    expected = "Only members of <!subteam^S0SECOPS> or <!subteam^S0ONCALL> can see rotation status."
    assert [a.text for a in answers] == [expected, expected]
    assert request_id not in str([a.params for a in answers])


def test_status_is_only_shown_in_the_rotations_channel(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, _ = bot.request_key()
    sent = bot.command("/rotate-status", request_id, user=BOB, channel="C0ELSEWHERE")
    assert (sent.status, sent.text) == (200, "Rotation status is shown in <#C0ROTATE> only.")
    bot.command("/rotate-status", "", user=BOB)  # in the channel, it is answered there
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == BOB)
    assert [
        c.params["channel"] for c in bot.fake.calls_to("chat.postEphemeral") if c.params["user"] == BOB
    ] == [CHANNEL]


def test_one_person_may_have_only_so_many_pending_requests(make_bot: MakeBot) -> None:
    """With a cap of 2, Alice's burst of five commands gives two cards and three refusals
    (naming her pending requests); the engine plans only two, and Bob may still ask."""
    bot = make_bot(max_pending_per_user=2)
    for n in range(5):
        assert bot.command("/rotate-key", f"{PANEL} burst {n}", user=ALICE).status == 200
    refusals = answers_to(bot.fake, ALICE, count=3)
    wait_until(lambda: len(bot.cards()) == 2, what="two cards")
    pending = {r.id for r in bot.store.list_in_states([State.PENDING])}
    assert len(pending) == 2 and len(bot.engine.ops("plan")) == 2
    bot.command("/rotate-key", f"{PANEL} once more", user=ALICE)
    refusals = answers_to(bot.fake, ALICE, count=4)
    for refusal in refusals:
        assert refusal.text.startswith("One person may have at most 2 pending requests")
        assert refusal.text.endswith(
            "Cancel one with `/rotate-cancel <id>`, or wait until they are decided."
        )
        assert set(re.findall(r"`(r-[0-9a-f-]+)`", refusal.text)) <= pending
    assert set(re.findall(r"`(r-[0-9a-f-]+)`", refusals[-1].text)) == pending
    bot.request_key(user=BOB)
    bot.command("/rotate-cancel", sorted(pending)[0], user=ALICE)
    answers_to(bot.fake, ALICE, count=5)
    bot.request_key(user=ALICE)
    assert len(bot.cards()) == 4
