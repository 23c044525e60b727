"""No key, token or credential in anything the bot sends to Slack or writes to its log.

Every Web API call the fake Slack recorded (body and parameters) and every log
line at DEBUG level (Bolt's, slack_sdk's, the bot's, the engine's stderr) is
scanned for every registered secret: the Slack bot token, signing secret and
verification token, and, with the real engine, the panel's old and new keys,
its database password and every stored plaintext.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.local_client import LocalEngineClient
from handlers.blocks import DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from tests.bot.conftest import ALICE, BOB, DAVE, PANEL, BotUnderTest, MakeBot, SlackSecrets
from tests.support.fake_engine import FakeEngineHost, rolled_back_rotation
from tests.support.secrets_scan import SecretRegistry, scan_text


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def every_log_line() -> Iterator[list[str]]:
    handler = _Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def leaks(bot: BotUnderTest, log_lines: list[str], slack_secrets: SlackSecrets) -> list[str]:
    """Names of the secrets found anywhere, with where; [] when clean."""
    found = []
    known = {
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "verification token": slack_secrets.verification_token,
    }
    for call in bot.fake.calls:
        text = call.raw_body + json.dumps(call.params, ensure_ascii=False)
        found += [f"{name} in {call.method}" for name in scan_text(text)]
        found += [f"{name} in {call.method}" for name, value in known.items() if value in text]
    for line in log_lines:
        found += [f"{name} in log: {line[:80]}" for name in scan_text(line)]
        found += [f"{name} in log" for name, value in known.items() if value in line]
    return sorted(set(found))


def test_no_secret_reaches_slack_or_the_log_on_any_path(
    make_bot: MakeBot, every_log_line: list[str], slack_secrets: SlackSecrets
) -> None:
    """Requests, refusals, a denial, a plan failure, a rollback, forged and replayed requests."""
    engine = FakeEngineHost()
    engine.rotation_script = rolled_back_rotation
    bot = make_bot(engine=engine)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, ALICE)
    bot.approve(request_id, ts, DAVE)
    replayed = bot.slack.replay(bot.approve(request_id, ts, BOB))
    assert replayed.status == 401
    bot.fake.wait_text("chat.postMessage", "Rolled back.")
    other_id, other_ts = bot.request_key()
    bot.click(DENY_ACTION, other_id, other_ts, BOB)
    bot.fake.wait_for("views.open")
    bot.slack.submit_view(DENY_MODAL, other_id, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "no"}}, BOB)
    bot.fake.wait_text("chat.postMessage", "Denied by")
    engine.plan_error = {
        "type": "error",
        "code": "database",
        "message": "MySQL refused",
        "rolled_back": None,
    }
    bot.command("/rotate-key", f"{PANEL} again")
    bot.fake.wait_text("chat.postEphemeral", "Could not plan")
    assert bot.command("/rotate-key", "x y", secret="forged-secret-0000").status == 401
    bot.command("/rotate-status", "", user=BOB)
    bot.fake.wait_for("chat.postEphemeral", lambda c: "Last" in c.text)
    assert len(every_log_line) > 20  # DEBUG lines of Bolt and slack_sdk were captured
    assert leaks(bot, every_log_line, slack_secrets) == []


def test_no_key_or_credential_leaks_from_a_real_rotation(
    make_bot: MakeBot,
    panel_factory: Callable[..., object],
    every_log_line: list[str],
    slack_secrets: SlackSecrets,
    secret_registry: SecretRegistry,
) -> None:
    sandbox = panel_factory(rows=10)
    bot = make_bot(engine_clients={PANEL: LocalEngineClient(sandbox.profile_path)})
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")
    assert leaks(bot, every_log_line, slack_secrets) == []
    exported = [json.dumps(e) for e in bot.store.audit_entries()]
    assert [name for line in exported for name in scan_text(line)] == []


LEAKY_TESTS = '''
import logging

from tests.support.secrets_scan import register_secret

SECRET = "planted-secret-4f2a9c1e"
register_secret(SECRET, "planted secret")


def test_logs_it_at_debug():
    logging.getLogger("engine.somewhere").debug("the value is %s", SECRET)


def test_logs_it_at_info():
    logging.getLogger("bot.somewhere").info("the value is %s", SECRET)


def test_logs_something_else():
    logging.getLogger("bot.somewhere").debug("nothing to see")
'''

SCANNING_CONFTEST = '''
import pytest

from tests.support.secrets_scan import check_report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    check_report(outcome.get_result())
'''


def test_a_secret_logged_at_debug_or_info_fails_its_test(tmp_path: Path) -> None:
    """With the project's pytest settings, the scan sees DEBUG and INFO log lines (issue 16)."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conftest.py").write_text(SCANNING_CONFTEST, encoding="utf-8")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(root / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path / "test_leaky.py"),
        ],
        cwd=tmp_path,
        # not CI's variables: under CI=true pytest prints each failure's reason twice
        env={**{k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")}, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    failed = sorted(
        line.split(" ")[1] for line in result.stdout.splitlines() if line.startswith("FAILED ")
    )
    assert failed == [
        "test_leaky.py::test_logs_it_at_debug",
        "test_leaky.py::test_logs_it_at_info",
    ], result.stdout
    leak = "secret leaked into test output: planted secret in captured log call"
    assert result.stdout.count(leak) == 2 and "1 passed" in result.stdout, result.stdout
    assert "planted-secret-4f2a9c1e" not in result.stdout + result.stderr
