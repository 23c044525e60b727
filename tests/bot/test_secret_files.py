"""The bot refuses a file holding a secret that other users can read (issue 20, item 5).

As OpenSSH refuses a private key anyone can read: the audit key, the enrollment key, and
ROTATOR_CONFIG when it holds the store's password. The message names the file and the fix;
the bot started the way a team starts it (``python -I -m bot serve``) stops with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.audit_key import AuditKey, load_audit_key, write_key_file
from bot.enrollment_key import load_enrollment_key
from bot.errors import SettingsError
from bot.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def _key(path: Path, mode: int) -> Path:
    write_key_file(path, AuditKey.generate())
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("load", "variable"), [(load_audit_key, "ROTATOR_AUDIT_KEY_FILE"),
                                                (load_enrollment_key, "ROTATOR_ENROLLMENT_KEY_FILE")])  # fmt: skip
def test_a_key_file_other_users_can_read_is_refused_and_named(load, variable: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    loose = _key(tmp_path / "loose.key", 0o644)
    with pytest.raises(SettingsError) as raised:
        load({variable: str(loose)})
    assert str(raised.value) == (
        f"{variable}: {loose} holds a key and other users can read it (mode 0644); the bot refuses "
        f"it, as ssh refuses a private key anyone can read. Fix: `chmod o-rwx {loose}` (0600 for the "
        "bot's user, or 0640 root:<bot group>)"
    )
    assert load({variable: str(_key(tmp_path / "tight.key", 0o600))}).fingerprint
    assert load({variable: str(_key(tmp_path / "group.key", 0o640))}).fingerprint


def _config(path: Path, store: str, mode: int) -> Path:
    path.write_text(f'channels = ["C0ROTATE"]\napprovers = ["S0SECOPS"]\nstore = "{store}"\n'
                    '\n[local_panels.prod-eu]\nprofile = "/nonexistent/panel.toml"\n')
    path.chmod(mode)
    return path


def _env(config: Path) -> dict[str, str]:
    return {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_SIGNING_SECRET": "s" * 32, "ROTATOR_CONFIG": str(config)}


def test_a_config_holding_the_store_password_is_refused_when_others_can_read_it(tmp_path: Path) -> None:
    loose = _config(tmp_path / "rotator.toml", "mysql://rotator:hunter2-store@127.0.0.1/rotator", 0o644)
    with pytest.raises(SettingsError) as raised:
        load_settings(_env(loose))
    assert f"ROTATOR_CONFIG: {loose} holds the store's password and other users can read it" in str(raised.value)
    assert "hunter2-store" not in str(raised.value)
    loose.chmod(0o640)
    assert load_settings(_env(loose)).store_url
    # a config without a secret in it may stay world-readable
    plain = _config(tmp_path / "plain.toml", f"sqlite://{tmp_path}/rotator.db", 0o644)
    assert load_settings(_env(plain)).store_url


def test_the_bot_started_as_a_service_stops_on_a_loose_audit_key(tmp_path: Path) -> None:
    config = _config(tmp_path / "rotator.toml", f"sqlite://{tmp_path}/rotator.db", 0o640)
    key = _key(tmp_path / "audit.key", 0o604)
    env = {**_env(config), "ROTATOR_AUDIT_KEY_FILE": str(key), "SLACK_APP_TOKEN": "xapp-1-2",
           "PATH": os.environ["PATH"]}  # fmt: skip
    result = subprocess.run([sys.executable, "-I", "-m", "bot", "serve"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{key} holds a key and other users can read it (mode 0604)" in result.stderr
    assert "Traceback" not in result.stderr
