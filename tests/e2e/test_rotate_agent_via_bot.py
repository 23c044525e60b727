"""/rotate-agent from Slack to a re-registered agent: the bot, the real engine, a real
agent server behind its own sshd, and the PHP panel that issues and checks tokens."""

from __future__ import annotations

from bot.fakes.slack_api import has_buttons
from bot.local_client import LocalEngineClient
from tests.bot.conftest import ALICE, BOB, CHANNEL, is_card


def test_rotate_agent_from_slack_rotates_the_token_and_reports_each_agent(agent_world, make_bot):
    """Alice asks, Bob approves; the agent re-registers with a new token, the old one is refused,
    the thread has every agent step and the card the per-agent outcome; no token reaches Slack."""
    agent = agent_world.add_agent("agent-1", agent_world.start_host())
    before = agent_world.install(agent)
    profile = agent_world.profile()
    bot = make_bot(engine_clients={"prod-eu": LocalEngineClient(profile)}, profiles={"prod-eu": profile})

    bot.command("/rotate-agent", "agent-1 prod-eu laptop with the agent's token was lost", ALICE)
    card = bot.fake.wait_for("chat.postMessage", is_card)[0]
    ts = str(card.response["ts"])
    assert "agent-1" in card.all_text()
    request_id = card.all_text().split("Request `")[1].split("`")[0]
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)

    after = agent_world.state(agent)
    assert after.fingerprint != before.fingerprint
    assert agent_world.heartbeat(agent.id, before.token)[0] == 401
    thread = "\n".join(bot.fake.thread(CHANNEL, ts))
    for step in ("preflight", "bootstrap", "old"):
        assert step in thread, (step, thread)
    assert "agent-1" in final.text
    assert not has_buttons(bot.fake.latest_card(CHANNEL, ts))
    recorded = "\n".join(call.all_text() for call in bot.fake.calls)
    assert agent_world.leaks(recorded) == []
