"""Socket Mode as Slack speaks it, through the loopback stand-in (bot.fakes.socket_mode).

``apps.connections.open`` on the fake Web API hands out a ``ws://127.0.0.1`` URL; the
stand-in says ``hello``, delivers ``slash_commands`` and ``interactive`` envelopes and
demands each acknowledgement by ``envelope_id`` within 3 s, and asks for a reconnect with
``disconnect`` (``refresh_requested``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import socket_mode
from bot.errors import SocketModeError
from bot.fakes.slack_api import FakeSlack, has_buttons
from bot.fakes.socket_mode import FakeSocketMode
from handlers.blocks import APPROVE_ACTION
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CHANNEL,
    PANEL,
    MakeBot,
    SlackSecrets,
    card_request_id,
    is_card,
    wait_until,
    write_config,
)
from tests.support.panel import free_port
from tests.support.secrets_scan import SecretRegistry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_token(secret_registry: SecretRegistry) -> str:
    token = f"xapp-1-A0ROTATOR-{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"
    secret_registry.register(token, "SLACK_APP_TOKEN")
    return token


@pytest.fixture
def slack_socket(fake_slack: FakeSlack, app_token: str) -> Iterator[FakeSocketMode]:
    stand_in = FakeSocketMode(app_token).start().attach(fake_slack)
    yield stand_in
    stand_in.stop()


def test_a_rotation_runs_over_socket_mode_across_a_refresh(
    make_bot: MakeBot, slack_socket: FakeSocketMode, app_token: str
) -> None:
    """Request, a second command, Slack's refresh, the approval: every envelope is acknowledged
    and the verified summary lands in the request's thread."""
    bot = make_bot()
    handler = socket_mode.connect(bot.rotator.app, app_token, bot.rotator.gate.acknowledging)
    try:
        assert (slack_socket.opens, slack_socket.connections) == (1, 1)
        ack = slack_socket.command("/rotate-key", f"{PANEL} suspected .env disclosure, INC-4412", ALICE)
        assert ack.elapsed_s < 3
        card = bot.fake.wait_for("chat.postMessage", is_card)[0]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        wait_until(lambda: bot.state(request_id, "message_ts") == ts)

        # the second message: refused as a "replay" of the first before the fix
        help_ack = slack_socket.command("/rotate-help", "", ALICE)
        assert "/rotate-key [panel] &lt;reason&gt;" in help_ack.text

        slack_socket.refresh()
        assert slack_socket.opens == 2
        wait_until(lambda: slack_socket.open_connections == 1, what="the old connection closed")

        slack_socket.click(APPROVE_ACTION, request_id, BOB, ts)
        done = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
        assert done.params.get("thread_ts") == ts
        assert f"rotation {request_id}" in done.text and "approved by <@U0BOB>" in done.text
        assert not has_buttons(bot.fake.latest_card(CHANNEL, ts))
        assert bot.state(request_id) == "done"
    finally:
        handler.close()  # type: ignore[no-untyped-call]


def test_opening_the_home_tab_over_socket_mode_publishes_it(
    make_bot: MakeBot, slack_socket: FakeSocketMode, app_token: str
) -> None:
    """The ``app_home_opened`` event arrives in an ``events_api`` envelope: acknowledged, and
    the person's Home tab is published with the panel on it."""
    bot = make_bot()
    handler = socket_mode.connect(bot.rotator.app, app_token)
    try:
        ack = slack_socket.app_home_opened(ALICE)
        assert ack.elapsed_s < 3
        bot.fake.wait_for("views.publish", lambda c: c.params.get("user_id") == ALICE)
        view = bot.fake.home_view(ALICE)
        assert view is not None and f"Panel {PANEL}" in json.dumps(view)
    finally:
        handler.close()  # type: ignore[no-untyped-call]


def test_a_second_click_on_the_same_action_is_acknowledged_but_runs_once(
    make_bot: MakeBot, slack_socket: FakeSocketMode, app_token: str
) -> None:
    """Two deliveries of one user action (same trigger id): both acknowledged, one approval."""
    bot = make_bot(approvals_required=2)
    handler = socket_mode.connect(bot.rotator.app, app_token)
    try:
        slack_socket.command("/rotate-key", f"{PANEL} suspected .env disclosure, INC-4412", ALICE)
        card = bot.fake.wait_for("chat.postMessage", is_card)[0]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        wait_until(lambda: bot.state(request_id, "message_ts") == ts)
        payload = slack_socket.click_payload(APPROVE_ACTION, request_id, BOB, ts)
        slack_socket.deliver("interactive", payload)
        slack_socket.deliver("interactive", payload)
        wait_until(lambda: len(bot.store.get(request_id).approvals) == 1)
        assert bot.state(request_id) == "pending"
    finally:
        handler.close()  # type: ignore[no-untyped-call]


def test_an_unreachable_websocket_is_reported_not_logged_as_connected(
    make_bot: MakeBot, fake_slack: FakeSlack, app_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    bot = make_bot()
    port = free_port()  # nothing listens there
    fake_slack.methods["apps.connections.open"] = lambda params, token: {
        "ok": True,
        "url": f"ws://127.0.0.1:{port}/link/?ticket=one-time",
    }
    caplog.set_level(logging.INFO)
    with pytest.raises(SocketModeError) as raised:
        socket_mode.connect(bot.rotator.app, app_token)
    assert str(raised.value) == (
        f"could not connect to Slack's Socket Mode websocket at ws://127.0.0.1:{port}: "
        "check outbound access to it (proxy, firewall)"
    )
    claims = [r.getMessage() for r in caplog.records
              if "has been established" in r.getMessage() or "connected to Slack" in r.getMessage()]  # fmt: skip
    assert claims == []


def _health(port: int) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _bot_env(tmp_path: Path, fake_slack: FakeSlack, slack_secrets: SlackSecrets, app_token: str) -> dict[str, str]:
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://rotator.db")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))},
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "SLACK_APP_TOKEN": app_token,
        "SLACK_API_URL": fake_slack.url,
        "ROTATOR_CONFIG": str(config),
        "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex(),
    }


def test_python_m_bot_serves_socket_mode_and_stops_on_sigterm(
    tmp_path: Path, fake_slack: FakeSlack, slack_secrets: SlackSecrets, app_token: str,
    slack_socket: FakeSocketMode,
) -> None:
    """`python -m bot serve --port P`: Socket Mode, and /healthz on P (for a container)."""
    env = _bot_env(tmp_path, fake_slack, slack_secrets, app_token)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)], cwd=REPO,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        slack_socket.wait_connections(1, timeout=30)
        assert "/rotate-key [panel] &lt;reason&gt;" in slack_socket.command("/rotate-help", "", ALICE).text
        assert "/rotate-key [panel] &lt;reason&gt;" in slack_socket.command("/rotate-help", "", BOB).text
        wait_until(lambda: _health(port) == (200, {"ok": True}), timeout=30, what="/healthz ok")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "serving Slack in Socket Mode" in stderr
    assert app_token not in stderr and slack_secrets.bot_token not in stderr


def test_an_app_token_slack_refuses_ends_with_one_line_naming_it(
    tmp_path: Path, fake_slack: FakeSlack, slack_secrets: SlackSecrets, app_token: str,
    slack_socket: FakeSocketMode, secret_registry: SecretRegistry,
) -> None:
    wrong = f"xapp-1-A0ROTATOR-1-{secrets.token_hex(16)}"
    secret_registry.register(wrong, "a revoked SLACK_APP_TOKEN")
    env = {**_bot_env(tmp_path, fake_slack, slack_secrets, app_token), "SLACK_APP_TOKEN": wrong}
    result = subprocess.run([sys.executable, "-m", "bot"], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Slack refused SLACK_APP_TOKEN (invalid_auth): use the app-level token (xapp-…) "
        "with the connections:write scope, from the app's Basic Information page"
    )
    assert "Traceback" not in result.stderr and wrong not in result.stderr
