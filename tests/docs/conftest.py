"""The guide's test plays Slack with the bot tests' stand-ins (tests/bot/conftest.py)."""

from tests.bot.conftest import fake_slack, slack_secrets

__all__ = ["fake_slack", "slack_secrets"]
