"""The install in the guide's order, and what each script leaves for the other.

Bot host first (it makes the bot's key), the panel host with that key (it prints its own
host key's fingerprint), then ``setup-bot-host.sh --add-panel NAME HOST --pin FP`` writes
the ``[panels]`` entry. The unit is generated from the options, a re-run changes nothing,
an edited unit is kept, and ``--uninstall`` removes what the scripts made but keeps the
keys, the journal and the store unless ``--purge``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.panel_host import PanelHost, StockSSHD, start_stock_sshd
from tests.support.sshd import KeyPair, make_key

REPO = Path(__file__).resolve().parents[2]
BOT_SCRIPT = REPO / "deploy" / "setup-bot-host.sh"


@pytest.fixture
def bot_host(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    if os.geteuid() != 0:
        pytest.skip("the setup scripts run as root")
    user = f"rb{secrets.token_hex(4)}"
    (tmp_path / "units").mkdir()

    def run(*args: str, bot_python: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(BOT_SCRIPT), "--user", user, "--config-dir", str(tmp_path / "bot-etc"),
                "--state-dir", str(tmp_path / "bot-state"), "--prefix", str(tmp_path / "bot-opt"),
                "--unit-dir", str(tmp_path / "units"),
                *(["--bot-python", sys.executable] if bot_python else []), *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)

    run.user = user  # type: ignore[attr-defined]
    yield run
    subprocess.run(["userdel", user], capture_output=True)


@pytest.fixture
def panel_host(tmp_path: Path) -> Iterator[PanelHost]:
    if os.geteuid() != 0:
        pytest.skip("the setup scripts run as root")
    (tmp_path / "panel").mkdir()
    host = PanelHost.under(tmp_path / "panel")
    yield host
    host.remove()


def test_bot_host_then_panel_host_then_add_panel_writes_the_entry(
    bot_host: Callable[..., subprocess.CompletedProcess[str]], panel_host: PanelHost, tmp_path: Path
) -> None:
    etc = tmp_path / "bot-etc"
    first = bot_host()
    assert first.returncode == 0, first.stdout + first.stderr
    public = (etc / "id_ed25519.pub").read_text().strip()
    panel_host.bot_key = KeyPair(etc / "id_ed25519", public)
    sshd: StockSSHD = start_stock_sshd(tmp_path / "sshd", panel_host.user)
    try:
        host_pub = tmp_path / "sshd" / "ssh_host_ed25519_key.pub"
        made = panel_host.setup("--host-key", str(host_pub))
        assert made.returncode == 0, made.stdout + made.stderr
        shown = subprocess.run(["ssh-keygen", "-lf", str(host_pub)], capture_output=True, text=True,
                               check=True).stdout.split()[1]  # fmt: skip
        assert f"This host's SSH key: {shown}" in made.stdout
        assert "--add-panel NAME " in made.stdout and f"--pin {shown}" in made.stdout

        added = bot_host("--add-panel", "prod-eu", f"127.0.0.1:{sshd.port}", "--pin", shown)
        assert added.returncode == 0, added.stdout + added.stderr
        settings = tomllib.loads((etc / "rotator.toml").read_text())
        assert settings["panels"]["prod-eu"] == {
            "host": "127.0.0.1", "port": sshd.port, "user": "rotator",
            "key_file": str(etc / "id_ed25519"), "known_hosts": str(etc / "known_hosts"),
        }  # fmt: skip
        info = (etc / "rotator.toml").stat()
        group = pwd.getpwnam(bot_host.user).pw_gid  # type: ignore[attr-defined]
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, group)
        again = bot_host("--add-panel", "prod-eu", f"127.0.0.1:{sshd.port}", "--pin", shown)
        assert again.returncode == 0 and "Done (0 change(s))" in again.stdout, again.stdout
        assert (etc / "rotator.toml").read_text().count("[panels.") == 1
        other = bot_host("--add-panel", "prod-eu", f"127.0.0.1:{sshd.port}", "--pin", shown, "--panel-user", "ops")
        assert other.returncode == 1 and "already has [panels.\"prod-eu\"], with other values" in other.stderr
    finally:
        sshd.stop()


def test_the_unit_follows_the_options_and_an_edited_unit_is_kept(
    bot_host: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    made = bot_host()
    assert made.returncode == 0, made.stdout + made.stderr
    unit = tmp_path / "units" / "myosicam-rotator-bot.service"
    text = unit.read_text()
    user = bot_host.user  # type: ignore[attr-defined]
    for line in (f"User={user}", f"EnvironmentFile={tmp_path / 'bot-etc' / 'bot.env'}",
                 f"ExecStart={sys.executable} -I -m bot serve", f"ReadWritePaths={tmp_path / 'bot-state'}",
                 f"WorkingDirectory={tmp_path / 'bot-state'}"):  # fmt: skip
        assert line in text.splitlines(), (line, text)
    assert "systemctl edit myosicam-rotator-bot" in text
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "bot-etc").iterdir()}
    again = bot_host()
    assert again.returncode == 0 and "Done (0 change(s))" in again.stdout, again.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bot-etc").iterdir()} == before

    unit.write_text(text.replace("RestartSec=5", "RestartSec=30"))
    kept = bot_host("--state-dir", str(tmp_path / "elsewhere"))
    assert kept.returncode == 0, kept.stderr
    assert f"kept: {unit} was edited here" in kept.stdout and "RestartSec=30" in unit.read_text()


def test_the_bot_is_never_installed_into_the_engines_virtualenv(
    bot_host: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    engine = tmp_path / "bot-opt" / "bin"
    engine.mkdir(parents=True)
    (engine / "engine-serve").write_text("#!/bin/sh\n")
    refused = bot_host(bot_python=False)
    assert refused.returncode == 1
    assert "is the panel engine's virtualenv (setup-panel-host.sh)" in refused.stderr
    assert not (tmp_path / "bot-etc").exists()
    defaults = subprocess.run([str(BOT_SCRIPT), "--help"], capture_output=True, text=True).stdout
    panel_defaults = subprocess.run([str(REPO / "deploy" / "setup-panel-host.sh"), "--help"],
                                    capture_output=True, text=True).stdout  # fmt: skip
    assert "(default /opt/myosicam-rotator-bot)" in defaults and "(default /etc/myosicam-rotator-bot)" in defaults
    assert "(default /opt/myosicam-rotator)" in panel_defaults and "(default /etc/myosicam-rotator)" in panel_defaults


def test_uninstall_keeps_keys_journal_and_store_unless_purge(
    bot_host: Callable[..., subprocess.CompletedProcess[str]], panel_host: PanelHost, tmp_path: Path
) -> None:
    made = bot_host(bot_python=False)  # a virtualenv of its own, as a team installs it
    assert made.returncode == 0, made.stdout + made.stderr
    user = bot_host.user  # type: ignore[attr-defined]
    etc, state = tmp_path / "bot-etc", tmp_path / "bot-state"
    (state / "rotator.db").write_text("the store")
    gone = bot_host("--uninstall", bot_python=False)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not (tmp_path / "bot-opt").exists() and not (tmp_path / "units" / "myosicam-rotator-bot.service").exists()
    assert {p.name for p in etc.iterdir()} >= {"id_ed25519", "audit.key", "enrollment.key", "bot.env", "rotator.toml"}
    assert (state / "rotator.db").read_text() == "the store"
    purged = bot_host("--uninstall", "--purge", bot_python=False)
    assert purged.returncode == 0 and not etc.exists() and not state.exists(), purged.stdout

    panel_host.bot_key = make_key(tmp_path / "bot_key")
    assert panel_host.setup().returncode == 0
    (panel_host.state_dir / "runs.jsonl").write_text("{}\n")
    removed = subprocess.run(
        [str(REPO / "deploy" / "setup-panel-host.sh"), "--uninstall", "--user", panel_host.user,
         "--prefix", str(panel_host.prefix), "--config-dir", str(panel_host.config_dir),
         "--state-dir", str(panel_host.state_dir), "--sudoers", str(panel_host.sudoers),
         "--bin-dir", str(panel_host.bin_dir), "--engine-python", sys.executable],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert removed.returncode == 0, removed.stdout + removed.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam(panel_host.user)
    assert not panel_host.sudoers.exists() and not (panel_host.bin_dir / "myosicam-rotator").exists()
    assert not (panel_host.prefix / "bin" / "engine-serve").exists()
    assert (panel_host.config_dir / "panel.toml").exists() and (panel_host.state_dir / "runs.jsonl").exists()
    (panel_host.state_dir / "journal.json").write_text("{}")
    refused = subprocess.run(
        [str(REPO / "deploy" / "setup-panel-host.sh"), "--uninstall", "--purge", "--user", panel_host.user,
         "--prefix", str(panel_host.prefix), "--config-dir", str(panel_host.config_dir),
         "--state-dir", str(panel_host.state_dir), "--sudoers", str(panel_host.sudoers),
         "--bin-dir", str(panel_host.bin_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "unfinished rotation" in refused.stderr
    assert (panel_host.state_dir / "runs.jsonl").exists()


def _names(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]


def test_bot_env_example_names_every_file_setting_the_script_writes(
    bot_host: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """The container's --env-file and systemd's EnvironmentFile need the same names: the
    example holds every one the bot needs (the audit key and the config included)."""
    from bot.__main__ import SETTINGS_VARIABLES

    example = _names((REPO / "deploy" / "bot.env.example").read_text())
    assert bot_host().returncode == 0
    written = _names((tmp_path / "bot-etc" / "bot.env").read_text())
    assert example == written
    # each way of giving a setting has one name here (the key file, not the key itself)
    assert set(SETTINGS_VARIABLES) - {"ROTATOR_AUDIT_KEY"} <= set(example)
    assert "ROTATOR_ENROLLMENT_KEY_FILE" in example
    profile = (REPO / "deploy" / "panel-profile.example.toml").read_text()
    assert tomllib.loads(profile)["restart_command"] == "auto"
