"""Fixtures: a real OpenSSH sshd whose only door is the engine's forced command."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.inventory import PanelEntry
from tests.support.sshd import SSHD, SSHServer, engine_command


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHServer]:
    """sshd on a free loopback port, with its own host key; stopped at teardown."""
    if os.geteuid() != 0:
        pytest.skip("the sshd fixture runs sshd as root")
    assert Path(SSHD).exists(), "openssh-server is not installed (./test.sh installs it)"
    server = SSHServer.start(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def minimal_profile(tmp_path: Path) -> Path:
    """A profile good enough for hello, attach and transport tests (no database)."""
    root = tmp_path / "panel"
    (root / "config").mkdir(parents=True)
    path = tmp_path / "profile.toml"
    path.write_text(f'panel_root = "{root}"\njournal_dir = "{tmp_path / "journal"}"\nescrow = "none"\n')
    return path


PanelFactory = Callable[..., PanelEntry]


@pytest.fixture
def ssh_panel(sshd: SSHServer) -> PanelFactory:
    """``ssh_panel(profile, env=..., **entry_fields)``: authorize a fresh bot key whose
    forced command serves ``profile``, and return the inventory entry for it."""
    counter = iter(range(1000))

    def make(
        profile: Path,
        env: dict[str, str] | None = None,
        passphrase: str | None = None,
        **fields: Any,
    ) -> PanelEntry:
        secret = passphrase.encode() if passphrase else None
        pair = sshd.authorize(f"bot{next(counter)}", engine_command(profile, env), secret)
        values: dict[str, Any] = {
            "name": "test-panel",
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "key_file": pair.private_path,
            "key_passphrase": passphrase,
            "known_hosts": sshd.known_hosts,
            "connect_timeout_s": 10,
            "event_timeout_s": 60,
            "reconnect_backoff_s": 0.2,
        }
        values.update(fields)
        return PanelEntry(**values)

    return make
