"""deploy/setup-bot-host.sh as a team runs it: the bot's user, key, audit key and pinned
panel host keys, each host key pinned only once its fingerprint is confirmed."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.audit_key import load_audit_key
from bot.enrollment_key import load_enrollment_key
from bot.errors import SettingsError
from bot.settings import load_settings
from tests.support.sshd import SSHServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "setup-bot-host.sh"


@pytest.fixture
def bot_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("the bot-host script runs as root")
    name = f"rb{secrets.token_hex(4)}"
    yield name
    subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def panel_sshd(tmp_path: Path) -> Iterator[SSHServer]:
    server = SSHServer.start(tmp_path / "sshd")
    yield server
    server.stop()


def fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_the_script_makes_the_bot_host_and_pins_a_confirmed_host_key(
    bot_user: str, panel_sshd: SSHServer, tmp_path: Path
) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"

    def setup(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(SCRIPT), "--user", bot_user, "--config-dir", str(etc), "--state-dir", str(state),
                "--bot-python", sys.executable, "--no-unit", *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)

    target = f"127.0.0.1:{panel_sshd.port}"
    shown = fingerprint(panel_sshd.host_key.public_line)

    dry = setup("--dry-run", "--pin", target)
    assert dry.returncode == 0 and dry.stdout.rstrip().endswith("nothing was changed"), dry.stderr
    assert not etc.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(bot_user)

    unconfirmed = setup("--pin", target)
    assert unconfirmed.returncode == 1
    assert f"[127.0.0.1]:{panel_sshd.port} shows the host key {shown}" in unconfirmed.stdout
    assert unconfirmed.stderr.strip() == (
        f"setup-bot-host: [127.0.0.1]:{panel_sshd.port}: confirm the fingerprint: re-run with "
        f"--pin '{target}={shown}' once you have compared it with the panel host's"
    )
    wrong = "SHA256:" + base64.b64encode(os.urandom(32)).decode().rstrip("=")
    mismatch = setup("--pin", f"{target}={wrong}")
    assert mismatch.returncode == 1 and f"expected {wrong} but it shows {shown}; not pinned" in mismatch.stderr
    assert (etc / "known_hosts").read_text() == ""

    pinned = setup("--pin", f"{target}={shown}")
    assert pinned.returncode == 0, pinned.stderr
    kind, blob = panel_sshd.host_key.public_line.split()[:2]
    assert (etc / "known_hosts").read_text() == f"[127.0.0.1]:{panel_sshd.port} {kind} {blob}\n"
    uid = pwd.getpwnam(bot_user).pw_uid
    for secret_file in (etc / "id_ed25519", etc / "audit.key", etc / "enrollment.key"):
        info = secret_file.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, uid), secret_file
    public_key = (etc / "id_ed25519.pub").read_text().strip()
    assert public_key.startswith("ssh-ed25519 ") and public_key in pinned.stdout

    again = setup("--pin", f"{target}={shown}")
    assert again.returncode == 0 and "Done (0 change(s))" in again.stdout, again.stdout
    assert (etc / "id_ed25519.pub").read_text().strip() == public_key

    # the templates name what is left to fill in, they never start a bot with half settings
    env = {"ROTATOR_CONFIG": str(etc / "rotator.toml")}
    for line in (etc / "bot.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    assert "SLACK_BOT_TOKEN" in str(raised.value) and "SLACK_SIGNING_SECRET" in str(raised.value)
    # the keys it made are the ones bot.env names, and they load: turning step-up on needs no key work
    assert load_audit_key(env).fingerprint and load_enrollment_key(env).fingerprint
    assert (etc / "enrollment.key").read_text() != (etc / "audit.key").read_text()
