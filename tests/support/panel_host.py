"""A panel host as deploy/setup-panel-host.sh makes it, behind Debian's stock sshd.

Shared by the deploy tests and the end-to-end benchmark, so that both reach the
engine the way a team's bot does: the script's own user (login shell /bin/sh),
``sudo -n`` to the engine wrapper, Debian's ``sshd_config`` as shipped (UsePAM
yes, StrictModes yes). The lab sshd of tests/support/sshd.py logs in as root,
whose shell start-up is not a panel host's.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.panel import free_port
from tests.support.sshd import KeyPair, make_key

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "setup-panel-host.sh"
STOCK_SSHD_CONFIG = next(
    (p for p in (Path("/usr/share/openssh/sshd_config"), Path("/etc/ssh/sshd_config")) if p.exists()),
    None,
)


@dataclass
class PanelHost:
    """What the script was told: a user of its own, paths under a folder, the bot's key."""

    user: str
    prefix: Path
    config_dir: Path
    state_dir: Path
    sudoers: Path
    bot_key: KeyPair
    bin_dir: Path

    @classmethod
    def under(cls, folder: Path) -> PanelHost:
        """A fresh user name and sudoers file, everything else under ``folder``."""
        return cls(
            user=f"rt{secrets.token_hex(4)}",
            prefix=folder / "opt",
            config_dir=folder / "etc",
            state_dir=folder / "state",
            sudoers=Path(f"/etc/sudoers.d/rotator-test-{secrets.token_hex(4)}"),
            bot_key=make_key(folder / "bot_key", comment="rotator-bot"),
            bin_dir=folder / "bin",
        )

    def setup(
        self, *extra: str, profile: Path | None = None, own_virtualenv: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the script; by default with this interpreter as the engine's (fast), with
        ``own_virtualenv`` as a team runs it: a virtualenv under the prefix, pip-installed
        from this checkout."""
        python = [] if own_virtualenv else ["--engine-python", sys.executable]
        argv = [
            str(SCRIPT),
            "--user", self.user,
            "--prefix", str(self.prefix),
            "--config-dir", str(self.config_dir),
            "--state-dir", str(self.state_dir),
            "--sudoers", str(self.sudoers),
            "--bin-dir", str(self.bin_dir),
            *python,
            "--from", "127.0.0.1",
            *(["--profile", str(profile)] if profile else []),
            *extra,
            str(self.bot_key.private_path.with_suffix(".pub")),
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    def shell(self) -> str:
        import pwd

        return pwd.getpwnam(self.user).pw_shell

    def remove(self) -> None:
        self.sudoers.unlink(missing_ok=True)
        subprocess.run(["userdel", "--remove", self.user], capture_output=True)


@dataclass
class StockSSHD:
    port: int
    known_hosts: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_stock_sshd(folder: Path, user: str) -> StockSSHD:
    """Debian's sshd_config as shipped, plus a port, a host key and AllowUsers (the
    first value of a keyword wins, so ours go first)."""
    assert STOCK_SSHD_CONFIG is not None, "openssh-server is not installed"
    folder.mkdir()
    host_key = make_key(folder / "ssh_host_ed25519_key", comment="host")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = folder / "sshd_config"
    stock = STOCK_SSHD_CONFIG.read_text()
    assert "UsePAM yes" in stock
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key.private_path}\n"
        f"PidFile {folder / 'sshd.pid'}\nAllowUsers {user}\n" + stock
    )
    log = (folder / "sshd.log").open("ab")
    process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((folder / "sshd.log").read_text()) from None
            time.sleep(0.02)
    kind, blob = host_key.public_line.split()[:2]
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    return StockSSHD(port, known_hosts, process)
