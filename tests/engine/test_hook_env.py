"""Hooks, and the engine itself, get an allow-listed environment (issue 9, item 6).

A bot's Slack secrets in the environment that starts the engine never reach the
engine (local-panel mode) nor any hook it runs.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bot.local_client import LocalEngineClient
from engine.protocol import Request
from tests.engine.runner import run_engine
from tests.support.plans import named
from tests.support.secrets_scan import register_secret

#: A backup hook that writes its own environment, and its parent's (the engine's).
DUMP = 'env > "$0"; tr "\\0" "\\n" < /proc/$PPID/environ > "$1"'


@pytest.fixture
def slack_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "SLACK_BOT_TOKEN": "xoxb-" + secrets.token_hex(12),
        "SLACK_SIGNING_SECRET": secrets.token_hex(16),
        "SLACK_APP_TOKEN": "xapp-" + secrets.token_hex(12),
    }
    for name, value in values.items():
        register_secret(value, name)
        monkeypatch.setenv(name, value)
    return values


def _dumping_panel(panel_factory, tmp_path: Path):
    panel = panel_factory(rows=2)
    hook_env, engine_env = tmp_path / "hook.env", tmp_path / "engine.env"
    profile = panel.write_profile(backup_command=["sh", "-c", DUMP, str(hook_env), str(engine_env)])
    return panel, profile, hook_env, engine_env


def _names(dump: Path) -> set[str]:
    return {line.split("=", 1)[0] for line in dump.read_text().splitlines() if "=" in line}


def test_a_hook_never_sees_the_callers_secrets(panel_factory, tmp_path, slack_secrets):
    """The engine CLI started with Slack secrets set: the hook gets PATH, the locale and
    its ROTATOR_* variables, nothing else of the caller's."""
    panel, profile, hook_env, _ = _dumping_panel(panel_factory, tmp_path)

    run = run_engine(profile, "rotate-key", "--yes", "--json", env={"DB_PASSWORD_EXTRA": "x"})
    register_secret(panel.env_key(), "new key")

    assert run.returncode == 0, run.stderr
    names = _names(hook_env)
    assert {"PATH", "ROTATOR_PANEL", "ROTATOR_ROTATION_ID", "ROTATOR_KEY_FINGERPRINT"} <= names
    assert not names & {*slack_secrets, "DB_PASSWORD_EXTRA", "PYTHONPATH"}
    text = hook_env.read_text()
    assert not [v for v in slack_secrets.values() if v in text]


def test_the_local_panel_bot_does_not_hand_its_environment_to_the_engine(
    panel_factory, tmp_path, slack_secrets
):
    """Local-panel mode: neither the engine process nor its hooks hold the bot's tokens."""
    panel, profile, hook_env, engine_env = _dumping_panel(panel_factory, tmp_path)
    client = LocalEngineClient(profile)
    request = Request(v=1, id="r-env", op="rotate-key", requested_by="U1", approved_by=["U2"])

    events = list(client.run(named(client, request)))
    register_secret(panel.env_key(), "new key")

    assert events[-1]["type"] == "result", events[-1]
    for dump in (hook_env, engine_env):
        assert not _names(dump) & set(slack_secrets), dump.name
        assert not [v for v in slack_secrets.values() if v in dump.read_text()]
    assert "PATH" in _names(engine_env)



def test_a_hook_env_file_is_read_as_name_value_lines_and_a_bad_line_is_named(tmp_path):
    """``hook_env_file``: comments, ``export``, quotes; a line that is not NAME=value is refused by
    its number, never shown (it may hold a token)."""
    from engine.errors import ProfileError
    from engine.hooks import read_hook_env_file

    path = tmp_path / "hook.env"
    path.write_text('# vault\nexport VAULT_ADDR="https://v:8200"\n\nVAULT_TOKEN=\'hvs.abc\'\nEMPTY=\n')
    path.chmod(0o600)
    assert read_hook_env_file(path) == {"VAULT_ADDR": "https://v:8200", "VAULT_TOKEN": "hvs.abc", "EMPTY": ""}

    path.write_text("VAULT_TOKEN hvs.secret-token\n")
    with pytest.raises(ProfileError) as caught:
        read_hook_env_file(path)
    assert caught.value.message == f"hook_env_file {path} line 1 is not NAME=value"
