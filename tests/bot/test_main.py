"""`python -m bot` as an operator starts it: HTTP mode with /healthz, and start-up refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.fakes.slack_api import FakeSlack
from bot.fakes.slack_signing import SlackSender
from tests.bot.conftest import AUDIT_KEY, SlackSecrets, write_config
from tests.support.panel import free_port
from tests.support.procs import run_bot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bot_env(tmp_path: Path, fake_slack: FakeSlack, slack_secrets: SlackSecrets) -> dict[str, str]:
    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://rotator.db")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))},
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "SLACK_API_URL": fake_slack.url,
        "ROTATOR_CONFIG": str(config),
        "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex(),
    }


@pytest.fixture
def serving(bot_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--http", "--port", str(port)],
        cwd=REPO,
        env=bot_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the bot did not start: {proc.communicate()[1]}") from None
            time.sleep(0.05)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_http_mode_serves_slack_and_health_then_stops_on_sigterm(
    serving: tuple[subprocess.Popen[str], int], slack_secrets: SlackSecrets, tmp_path: Path
) -> None:
    proc, port = serving
    sender = SlackSender(
        url=f"http://127.0.0.1:{port}/slack/events", signing_secret=slack_secrets.signing_secret
    )
    answer = sender.command("/rotate-help", "", "U0ALICE")
    assert answer.status == 200 and "/rotate-key [panel] &lt;reason&gt;" in answer.text
    assert (tmp_path / "rotator.db").exists()  # the default store, beside the config
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"serving Slack on http://127.0.0.1:{port}/slack/events" in stderr
    assert slack_secrets.bot_token not in stderr and slack_secrets.signing_secret not in stderr


def test_a_missing_setting_stops_start_up_and_is_named(
    bot_env: dict[str, str], slack_secrets: SlackSecrets
) -> None:
    env = {k: v for k, v in bot_env.items() if k != "SLACK_SIGNING_SECRET"}
    result = run_bot(env, "--http")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "error: SLACK_SIGNING_SECRET: is required but not set",
    )
    assert slack_secrets.bot_token not in result.stderr


def test_socket_mode_needs_the_app_token(bot_env: dict[str, str]) -> None:
    result = run_bot(bot_env)
    assert result.returncode == 2
    assert "SLACK_APP_TOKEN is not set" in result.stderr and "--http" in result.stderr


def test_demo_and_doctor_are_dispatched_to_their_modules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bot doctor ARGS` calls bot.doctor.main(ARGS); a missing module is explained."""
    import types

    import bot.__main__ as entry

    called: list[list[str]] = []
    fake = types.SimpleNamespace(main=lambda argv: called.append(argv) or 0)

    def import_module(name: str) -> object:
        if name == "bot.doctor":
            return fake
        raise ModuleNotFoundError(name=name)

    monkeypatch.setattr(entry.importlib, "import_module", import_module)
    assert entry.main(["doctor", "--json"]) == 0
    assert called == [["--json"]]
    assert entry.main(["demo"]) == 2
    assert "`python -m bot demo` is not available in this build" in capsys.readouterr().err


def test_with_no_slack_settings_plain_python_m_bot_plays_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No SLACK_BOT_TOKEN and no ROTATOR_CONFIG: one line says so, then bot.demo.main([]) runs.
    With either one set, the same command serves Slack (here: refuses the incomplete settings)."""
    import types

    import bot.__main__ as entry

    called: list[list[str]] = []
    demo = types.SimpleNamespace(main=lambda argv: called.append(argv) or 0)
    monkeypatch.setattr(entry.importlib, "import_module", lambda name: demo)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("ROTATOR_CONFIG", raising=False)

    assert (0, [[]]) == (entry.main([]), called)
    expected = "No Slack settings (SLACK_BOT_TOKEN, ROTATOR_CONFIG): playing the local demo instead.\n"
    assert expected == capsys.readouterr().out
    monkeypatch.setenv("ROTATOR_CONFIG", "/nonexistent/rotator.toml")
    assert (2, [[]]) == (entry.main([]), called)


def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("SLACK_", "ROTATOR_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("INVOCATION_ID", raising=False)


def test_partial_slack_settings_stop_start_up_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the signing secret set: not the demo, but the missing settings, by name."""
    import bot.__main__ as entry

    _no_settings(monkeypatch)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "0123456789abcdef0123")
    assert entry.main([]) == 2
    err = capsys.readouterr().err
    assert "SLACK_BOT_TOKEN: is required but not set" in err
    assert "ROTATOR_CONFIG: is required but not set" in err
    assert "demo" not in err


def test_an_empty_environment_file_under_systemd_is_an_error_not_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bot.__main__ as entry

    _no_settings(monkeypatch)
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")  # systemd sets it for a service
    monkeypatch.setattr(entry, "_delegate", lambda name, argv: pytest.fail("the demo ran"))
    assert entry.main([]) == 2
    assert capsys.readouterr().err == (
        "error: no Slack settings in the environment (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, "
        "ROTATOR_CONFIG): is the unit's EnvironmentFile empty or missing?\n"
    )


def test_serve_never_plays_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bot serve` (the unit's ExecStart) with nothing set names every missing setting."""
    import bot.__main__ as entry

    _no_settings(monkeypatch)
    monkeypatch.setattr(entry, "_delegate", lambda name, argv: pytest.fail("the demo ran"))
    assert entry.main(["serve"]) == 2
    err = capsys.readouterr().err
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "ROTATOR_CONFIG"):
        assert f"{name}: is required but not set" in err


def test_help_says_what_a_bare_python_m_bot_does(tmp_path: Path) -> None:
    """--help states the rule (serve, or the demo with no settings at all, never under
    systemd) and what a bare run would do here and now."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_", "INVOCATION_ID"))}
    without = run_bot(clean, "--help")
    with_one = run_bot({**clean, "SLACK_BOT_TOKEN": ""}, "--help")
    under_systemd = run_bot({**clean, "INVOCATION_ID": "0123abcd"}, "--help")
    assert [without.returncode, with_one.returncode, under_systemd.returncode] == [0, 0, 0]
    rule = " ".join(without.stdout.split())
    assert "A bare `python -m bot` (no command, no option) serves Slack in Socket Mode" in rule
    assert "it plays the local demo instead, except under systemd, where it stops with an error" in rule
    assert "`python -m bot serve [options]` always serves, never the demo" in rule
    runs = (without, with_one, under_systemd)
    now = [" ".join(r.stdout.split()).split("Here and now, ")[1].split(".")[0] for r in runs]
    assert now == [
        "a bare `python -m bot` would play the local demo: none of those settings is in the environment",
        "a bare `python -m bot` would serve Slack: settings are in the environment",
        "a bare `python -m bot` would stop with an error: no settings in the environment, under systemd",
    ]
