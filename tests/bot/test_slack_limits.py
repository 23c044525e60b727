"""Cards Slack accepts whatever the inputs, and text from people arrives as text (issues 16, 9).

Through the real bot path against the strict fake Web API, which refuses what
Slack refuses: before the fix, a ``/rotate-agent`` of a dozen hostname-style
agents got ``invalid_blocks`` (the Approve confirmation went past Slack's 300
characters) and no card appeared; a reason of ``<!channel>`` pinged the channel.
"""

from __future__ import annotations

from bot.fakes.slack_api import Call, has_buttons
from handlers.blocks import APPROVE_ACTION
from tests.bot.conftest import BOB, CHANNEL, PANEL, MakeBot, card_request_id, wait_until

AGENTS = [f"agent-{i:02d}.eu-west-1.compute.internal" for i in range(50)]


def confirm_text(card: Call) -> str:
    (actions,) = [b for b in card.params["blocks"] if b["type"] == "actions"]
    (approve,) = [e for e in actions["elements"] if e["action_id"] == APPROVE_ACTION]
    return str(approve["confirm"]["text"]["text"])


def test_a_card_for_fifty_agents_is_posted_and_its_confirmation_names_a_few(
    make_bot: MakeBot,
) -> None:
    bot = make_bot()
    bot.engine.plan_result = {
        **bot.engine.plan_result,
        "agents": [
            {"name": name, "server": f"oscam-{i:02d}.example.net", "last_seen": "2 min ago"}
            for i, name in enumerate(AGENTS)
        ],
    }
    bot.command("/rotate-agent", ",".join(AGENTS) + " laptop with the agents' configs stolen")
    card = bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)[0]
    assert card.response == {**card.response, "ok": True}, card.response
    confirm = confirm_text(card)
    assert len(confirm) <= 300
    assert f"50 agents on panel {PANEL} ({', '.join(AGENTS[:3])} and 47 more)" in confirm
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    bot.approve(request_id, ts, BOB)
    updated = bot.fake.wait_for("chat.update", lambda c: c.params.get("ts") == ts)[0]
    assert updated.ok and not has_buttons(updated), updated.response


def test_a_reason_with_mentions_and_links_arrives_escaped(make_bot: MakeBot) -> None:
    """``<!channel> <https://evil|click>`` shows as typed: no ping, no disguised link."""
    bot = make_bot()
    reason = "<!channel> <https://evil.example|click> & co"
    request_id, ts = bot.request_key(f"{PANEL} {reason}")
    escaped = "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co"
    card = bot.fake.latest_card(CHANNEL, ts)
    assert f"“{escaped}”" in card.all_text()
    bot.click("deny_rotation", request_id, ts, BOB)
    bot.fake.wait_for("views.open")
    said = [c.all_text() for c in bot.fake.calls if c.method != "views.open"]
    assert not [text for text in said if "<!channel>" in text or "<https://evil" in text]
