"""The deploy tests build on the bot's fixtures (tests/bot/conftest.py: a fake Slack Web API,
the real Bolt app, a scripted engine) and the SSH tests' real sshd (tests/ssh/conftest.py)."""

from tests.bot.conftest import fake_slack, make_bot, slack_secrets

__all__ = ["fake_slack", "make_bot", "slack_secrets"]
