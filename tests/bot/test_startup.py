"""What an operator sees when the bot starts: nothing but what matters."""

from __future__ import annotations

import json
import logging

import pytest

from bot.__main__ import RedactingFilter
from bot.activity import JsonLinesFormatter
from tests.bot.conftest import ALICE, BOB, PANEL, MakeBot, SlackSecrets, wait_until


def test_starting_with_the_token_in_the_environment_logs_no_bolt_notice(
    make_bot: MakeBot, slack_secrets: SlackSecrets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Production starts with SLACK_BOT_TOKEN in the environment; Bolt would then warn on every
    start that the token it read is unused (the bot gives it a client). No such line."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_secrets.bot_token)
    caplog.set_level(logging.DEBUG)
    make_bot()
    assert [] == [r.getMessage() for r in caplog.records if "will be unused" in r.getMessage()]


def test_each_request_approval_and_run_is_one_structured_log_line(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture
) -> None:
    """Operators read the bot's log: a request, its approval, the run's start and end each
    leave one line with who and what (the same fields in JSON), and nothing else repeats."""
    caplog.set_level(logging.INFO, logger="bot.activity")
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    wait_until(lambda: bot.state(request_id) == "done", what="the run's end")
    wait_until(lambda: any(r.activity["event"] == "request.finished" for r in activity(caplog)), what="log")

    lines = [(r.activity["event"], r.activity["actor"], r.activity["to"]) for r in activity(caplog)]
    events = [event for event, _, _ in lines]
    assert ("request.created", ALICE, "pending") == lines[0]
    assert ("request.approved", BOB, "approved") in lines
    assert ["request.created", "request.card_posted", "request.approved", "request.started", "request.finished"] == [
        e for e in events if e != "request.reported"
    ]
    created = activity(caplog)[0]
    assert (created.activity["panel"], created.activity["op"], created.activity["requester"]) == (
        PANEL, "rotate-key", ALICE
    )
    assert f"request={request_id}" in created.getMessage()
    line = json.loads(JsonLinesFormatter().format(activity(caplog)[2]))
    assert (line["event"], line["request"], line["approvers"], line["level"]) == (
        "request.approved", request_id, [BOB], "info"
    )


def test_json_log_lines_redact_secrets_in_every_field() -> None:
    """A secret that reaches any field of a JSON log line is redacted in the line printed."""
    secret = "s3cr3t-" + "x" * 20
    record = logging.LogRecord("bot.activity", logging.INFO, __file__, 1, "said %s", (secret,), None)
    record.activity = {"event": "request.created", "reason": f"pasted {secret} by mistake"}
    printed = JsonLinesFormatter(RedactingFilter([secret]).clean).format(record)
    assert secret not in printed and json.loads(printed)["reason"] == "pasted [redacted] by mistake"


def activity(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.activity"]
