"""The fake Web API enforces Slack's rate limits as Slack does: per method and workspace
(``chat.postMessage`` per channel), HTTP 429 with ``Retry-After`` in whole seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.fakes.slack_api import FakeSlack
from bot.fakes.slack_limits import SLACK_LIMITS, Limit, RateLimits

TOKEN = "xoxb-1-limits"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    slack = FakeSlack(token=TOKEN, channels=["C0ONE", "C0TWO"], limits=SLACK_LIMITS).start()
    yield slack
    slack.stop()


def test_chat_post_message_is_limited_per_channel_with_a_short_burst(fake: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=fake.url)
    for n in range(4):  # the burst
        client.chat_postMessage(channel="C0ONE", text=f"burst {n}")
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="C0ONE", text="one too many")
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers.get("Retry-After") in ("1", ["1"])
    assert refused.value.response["error"] == "ratelimited"
    client.chat_postMessage(channel="C0TWO", text="another channel has its own limit")


def test_chat_update_is_tier_3_for_the_workspace(fake: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=fake.url)
    ts = client.chat_postMessage(channel="C0ONE", text="x")["ts"]
    for n in range(5):
        client.chat_update(channel="C0ONE", ts=ts, text=f"update {n}")
    with pytest.raises(SlackApiError) as refused:
        client.chat_update(channel="C0ONE", ts=ts, text="too fast")
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers.get("Retry-After") in ("2", ["2"])  # 50 a minute: 1.2 s


def test_a_client_that_honours_retry_after_gets_through(fake: FakeSlack) -> None:
    fake.enforce_limits(RateLimits({"chat.update": Limit(60, burst=1)}))
    client = WebClient(token=TOKEN, base_url=fake.url)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    ts = client.chat_postMessage(channel="C0ONE", text="x")["ts"]
    started = time.monotonic()
    client.chat_update(channel="C0ONE", ts=ts, text="first")
    client.chat_update(channel="C0ONE", ts=ts, text="second, after a 429")
    assert time.monotonic() - started >= 1.0
    statuses = [c.status for c in fake.calls_to("chat.update")]
    assert statuses == [200, 429, 200]
