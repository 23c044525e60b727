"""The fake Web API refuses what Slack refuses (issue 16), so a green bot test means a card Slack shows.

Each case was answered ``ok: true`` before; here the bot's own client
(slack_sdk's ``WebClient``) talks to the fake over HTTP, as the bot does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.fakes.slack_api import FakeSlack
from handlers.blocks import deny_modal
from tests.bot.conftest import ALICE, CHANNEL, MakeBot, card_request_id, is_card, wait_until

TOKEN = "xoxb-test-fake-slack"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    started = FakeSlack(token=TOKEN, channels=[CHANNEL], users=[ALICE]).start()
    yield started
    started.stop()


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token=TOKEN, base_url=fake.url)


def error_of(call: Any) -> str:
    with pytest.raises(SlackApiError) as refused:
        call()
    return str(refused.value.response["error"])


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button_with_confirm(confirm_text: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": "approve",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": "r-1",
                "confirm": {
                    "title": {"type": "plain_text", "text": "Sure?"},
                    "text": {"type": "mrkdwn", "text": confirm_text},
                    "confirm": {"type": "plain_text", "text": "Yes"},
                    "deny": {"type": "plain_text", "text": "Back"},
                },
            }
        ],
    }


def test_a_valid_card_is_posted_and_can_be_updated(client: WebClient, fake: FakeSlack) -> None:
    posted = client.chat_postMessage(channel=CHANNEL, text="t", blocks=[button_with_confirm("ok")])
    updated = client.chat_update(channel=CHANNEL, ts=posted["ts"], text="t2", blocks=[section("x")])
    assert (posted["ok"], updated["ok"]) == (True, True)


@pytest.mark.parametrize(
    ("blocks", "reason"),
    [
        ([button_with_confirm("x" * 301)], "cannot exceed 300 characters"),
        ([{"type": "carousel_of_doom"}], "unknown block type"),
        ([section("x")] * 51, "between 1 and 50 blocks"),
        ([section("x" * 3001)], "cannot exceed 3000 characters"),
        ([section("")], "more than 0 characters"),
        ([{**section("x"), "colour": "red"}], "invalid additional property 'colour'"),
    ],
    ids=["confirm-301", "unknown-type", "51-blocks", "section-3001", "empty-text", "unknown-field"],
)
def test_blocks_slack_refuses_are_refused_with_the_reason(
    client: WebClient, blocks: list[dict[str, Any]], reason: str
) -> None:
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel=CHANNEL, text="t", blocks=blocks)
    answer = refused.value.response
    assert answer["error"] == "invalid_blocks"
    assert any(reason in message for message in answer["response_metadata"]["messages"])


def test_messages_need_a_channel_that_exists_and_updates_a_message_that_exists(
    client: WebClient,
) -> None:
    assert error_of(lambda: client.api_call("chat.postMessage", json={"text": "t"})) == (
        "channel_not_found"
    )
    assert error_of(lambda: client.chat_postMessage(channel="C0NOWHERE", text="t")) == (
        "channel_not_found"
    )
    assert error_of(lambda: client.chat_postMessage(channel="U0STRANGER", text="t")) == (
        "channel_not_found"
    )
    assert error_of(lambda: client.chat_update(channel=CHANNEL, ts="1.000", text="t")) == (
        "message_not_found"
    )
    assert client.chat_postMessage(channel=ALICE, text="a direct message")["ok"]


def test_a_trigger_id_opens_one_modal_within_three_seconds(
    client: WebClient, fake: FakeSlack
) -> None:
    view = deny_modal("r-1", "Rotate key requested")
    fresh, stale = fake.issue_trigger_id(), fake.issue_trigger_id(age_s=3.5)
    assert error_of(lambda: client.views_open(trigger_id="123.456.abc", view=view)) == (
        "invalid_trigger_id"
    )
    assert error_of(lambda: client.views_open(trigger_id=stale, view=view)) == "expired_trigger_id"
    assert client.views_open(trigger_id=fresh, view=view)["ok"]
    assert error_of(lambda: client.views_open(trigger_id=fresh, view=view)) == (
        "exchanged_trigger_id"
    )
    too_long_title = {**view, "title": {"type": "plain_text", "text": "x" * 25}}
    assert error_of(
        lambda: client.views_open(trigger_id=fake.issue_trigger_id(), view=too_long_title)
    ) == ("invalid_arguments")


def test_rate_limiting_answers_429_with_retry_after_and_a_retrying_client_gets_through(
    client: WebClient, fake: FakeSlack
) -> None:
    fake.rate_limit(every=2, methods=["chat.postMessage"], retry_after=0)
    assert client.chat_postMessage(channel=CHANNEL, text="first")["ok"]
    with pytest.raises(SlackApiError) as limited:
        client.chat_postMessage(channel=CHANNEL, text="second")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "0"
    retrying = WebClient(token=TOKEN, base_url=fake.url)
    retrying.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    assert retrying.chat_postMessage(channel=CHANNEL, text="third")["ok"]  # call 3: passes
    assert retrying.chat_postMessage(channel=CHANNEL, text="fourth")["ok"]  # 429, then retried
    statuses = [(c.text, c.status) for c in fake.calls_to("chat.postMessage")]
    assert statuses == [
        ("first", 200),
        ("second", 429),
        ("third", 200),
        ("fourth", 429),
        ("fourth", 200),
    ]


def test_the_bot_retries_a_rate_limited_card_and_the_card_appears(make_bot: MakeBot) -> None:
    bot = make_bot()
    bot.fake.rate_limit(every=1, methods=["chat.postMessage"], times=2)  # twice 429, then ok
    bot.command("/rotate-key", "prod-eu suspected disclosure")
    card = bot.fake.wait_for("chat.postMessage", lambda c: is_card(c) and c.ok)[0]
    tries = [c.status for c in bot.fake.calls_to("chat.postMessage") if is_card(c)]
    assert tries == [429, 429, 200]
    request_id = card_request_id(card)
    wait_until(lambda: bot.state(request_id, "message_ts") == card.response["ts"])


def test_views_publish_takes_a_valid_home_view_of_at_most_100_blocks_for_a_person_who_exists(
    client: WebClient, fake: FakeSlack
) -> None:
    """As Slack: a Home tab of 100 blocks is published and read back; 101 blocks, a modal
    instead of a home view, a broken block or an unknown person are refused."""
    home = {"type": "home", "blocks": [section(f"line {i}") for i in range(100)]}
    assert client.views_publish(user_id=ALICE, view=home)["ok"]
    assert home == fake.home_view(ALICE)
    too_many = {"type": "home", "blocks": [section("x")] * 101}
    assert "invalid_arguments" == error_of(lambda: client.views_publish(user_id=ALICE, view=too_many))
    modal = {**home, "type": "modal", "title": {"type": "plain_text", "text": "t"}}
    assert "invalid_arguments" == error_of(lambda: client.views_publish(user_id=ALICE, view=modal))
    broken = {"type": "home", "blocks": [section("")]}
    assert "invalid_arguments" == error_of(lambda: client.views_publish(user_id=ALICE, view=broken))
    assert "user_not_found" == error_of(lambda: client.views_publish(user_id="U0NOBODY", view=home))
    assert home == fake.home_view(ALICE), "a refused view changes nothing"


def test_channel_membership_is_as_strict_as_slack() -> None:
    """``conversations.members`` lists who is in a channel, a page at a time; an ephemeral to
    someone outside it is refused with ``user_not_in_channel``; an unknown channel is
    ``channel_not_found``; a channel given no member list holds every known user."""
    members = [f"U0M{i:03d}" for i in range(5)]
    fake = FakeSlack(token=TOKEN, channels=[CHANNEL, "C0OPEN"], users=[*members, "U0OUT"],
                     members={CHANNEL: members}).start()  # fmt: skip
    try:
        client = WebClient(token=TOKEN, base_url=fake.url)
        seen, cursor = [], ""
        while True:
            page = client.conversations_members(channel=CHANNEL, limit=2, **({"cursor": cursor} if cursor else {}))
            seen += page["members"]
            cursor = page["response_metadata"]["next_cursor"]
            if not cursor:
                break
        assert sorted([*members, "U0BOT"]) == sorted(seen)
        assert "user_not_in_channel" == error_of(
            lambda: client.chat_postEphemeral(channel=CHANNEL, user="U0OUT", text="hi"))  # fmt: skip
        assert client.chat_postEphemeral(channel=CHANNEL, user="U0M001", text="hi")["ok"]
        assert "U0OUT" in client.conversations_members(channel="C0OPEN")["members"]
        assert "channel_not_found" == error_of(lambda: client.conversations_members(channel="C0NOPE"))
    finally:
        fake.stop()
