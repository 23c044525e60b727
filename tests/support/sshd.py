"""A real OpenSSH ``sshd`` on a loopback port, for the engine-over-SSH tests.

``SSHServer.start(directory)`` writes a host key, an ``sshd_config`` and an
empty ``authorized_keys`` into ``directory`` and runs ``/usr/sbin/sshd -D -e``
as root (``PermitRootLogin prohibit-password``, ``StrictModes no``, ``UsePAM
no``). ``authorize(...)`` makes a fresh ed25519 client key and adds it with
the engine's forced command and ``restrict``; sshd reads ``authorized_keys``
per connection, so keys can be added while it runs. ``known_hosts`` pins the
host key as ``[127.0.0.1]:PORT``.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[2]
USER = "root"


@dataclass
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA..."


def make_key(path: Path, passphrase: bytes | None = None, comment: str = "test") -> KeyPair:
    """An ed25519 key in OpenSSH format, 0600 (passphrase-encrypted if given)."""
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}"
    path.with_suffix(".pub").write_text(line + "\n")
    return KeyPair(path, line)


def engine_command(profile: Path, env: dict[str, str] | None = None) -> str:
    """The forced command: this interpreter, unbuffered, ``-m engine --profile P serve``."""
    variables = {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = ["env", *(f"{k}={v}" for k, v in variables.items())]
    argv += [sys.executable, "-u", "-m", "engine", "--profile", str(profile), "serve"]
    return shlex.join(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SSHServer:
    directory: Path
    port: int
    host_key: KeyPair
    process: subprocess.Popen[bytes]
    keys: list[KeyPair] = field(default_factory=list)

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def user(self) -> str:
        return USER

    @classmethod
    def start(cls, directory: Path, attempts: int = 3) -> SSHServer:
        directory.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = make_key(directory / "ssh_host_ed25519_key", comment="host")
        (directory / "authorized_keys").write_text("")
        for _ in range(attempts):
            port = free_port()
            config = directory / "sshd_config"
            config.write_text(_config(directory, port, host_key.private_path))
            log = (directory / "sshd.log").open("ab")
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
            if _wait_for_banner(port, process):
                server = cls(directory, port, host_key, process)
                server.write_known_hosts(host_key.public_line)
                return server
            process.kill()
            process.wait()
        raise RuntimeError(f"sshd did not start; see {directory / 'sshd.log'}")

    def write_known_hosts(self, public_line: str) -> None:
        """Pin ``public_line`` ("ssh-ed25519 AAAA... comment") for this server."""
        kind, blob = public_line.split()[:2]
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {kind} {blob}\n")

    def authorize(
        self,
        name: str,
        command: str,
        passphrase: bytes | None = None,
    ) -> KeyPair:
        """A new client key allowed to run only ``command`` (forced, ``restrict``)."""
        pair = make_key(self.directory / f"client_{name}", passphrase, comment=name)
        quoted = command.replace("\\", "\\\\").replace('"', '\\"')
        with self.authorized_keys.open("a") as handle:
            handle.write(f'command="{quoted}",restrict {pair.public_line}\n')
        self.keys.append(pair)
        return pair

    def session_pids(self) -> list[int]:
        """Per-connection sshd processes (children of the listener)."""
        return children(self.process.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for pid in self.session_pids():
            _signal(pid, signal.SIGTERM)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc (``T`` stopped, ``Z`` zombie), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _config(directory: Path, port: int, host_key: Path) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {directory / "sshd.pid"}
AuthorizedKeysFile {directory / "authorized_keys"}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {USER}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
MaxStartups 50
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
"""


def _wait_for_banner(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False
