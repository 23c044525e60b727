"""The end-to-end tests build on the bot's and the SSH tests' fixtures: the same bot over
real HTTP with a fake Slack API (tests/bot/conftest.py), the same real sshd whose only
door is the engine's forced command (tests/ssh/conftest.py), and the agent servers of the
agent tests (tests/agents/conftest.py)."""

from tests.agents.conftest import _stale_agent_logins, agent_world
from tests.bot.conftest import fake_slack, make_bot, slack_secrets
from tests.ssh.conftest import ssh_panel, sshd

__all__ = ["_stale_agent_logins", "agent_world", "fake_slack", "make_bot", "slack_secrets", "ssh_panel", "sshd"]
