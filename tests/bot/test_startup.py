"""What an operator sees when the bot starts: nothing but what matters."""

from __future__ import annotations

import logging

import pytest

from tests.bot.conftest import MakeBot, SlackSecrets


def test_starting_with_the_token_in_the_environment_logs_no_bolt_notice(
    make_bot: MakeBot, slack_secrets: SlackSecrets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Production starts with SLACK_BOT_TOKEN in the environment; Bolt would then warn on every
    start that the token it read is unused (the bot gives it a client). No such line."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_secrets.bot_token)
    caplog.set_level(logging.DEBUG)
    make_bot()
    assert [] == [r.getMessage() for r in caplog.records if "will be unused" in r.getMessage()]
