"""SSH to an agent server, to run the bootstrap there: the engine's one paramiko module.

The route to a server comes from the panel (``saved_servers``: host, port, user
and the credential the panel keeps encrypted with its own key) or from the
profile's inventory. Either way the host key must already be pinned in
``known_hosts``: an unknown or changed key is refused (``RejectPolicy``), and no
SSH agent or key search is used.

The bootstrap command is the profile's template with every parameter
shell-quoted, after the same parameters exported as ``ROTATOR_*`` variables;
the install token is written to the command's stdin and never
appears on its command line. The command's output (stdout and stderr combined,
read as it comes so the channel cannot fill up) is handed back whole; the
caller reduces it with ``last_line`` once it knows every token to hide (the
new one included), and reports it only where the profile asks for it.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from engine.errors import AgentError
from engine.ops.agents.rows import AgentRow, ServerRow
from engine.profile import AgentSettings
from engine.protocol import redact

_OUTPUT_KEEP = 16 * 1024
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")


@dataclass(frozen=True)
class Route:
    """Where and as whom to log in; ``key_text``/``password`` are secrets."""

    label: str
    host: str
    port: int
    user: str
    key_text: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RemoteResult:
    exit_status: int
    output: str = field(repr=False)
    """The tail of stdout and stderr combined; may hold any token: reduce with ``last_line``."""


def route_from_panel(server: ServerRow, credential: bytes) -> Route:
    """The panel's own credential: an OpenSSH/PEM private key, a JSON
    ``{"private_key"|"password", "passphrase"}`` object, or a password."""
    if not server.host or not server.user:
        raise AgentError(f"server {server.name} has no host or SSH user in the panel")
    try:
        text = credential.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AgentError(f"the SSH credential of server {server.name} is not text") from None
    key_text: str | None = None
    password: str | None = None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AgentError(f"the SSH credential of server {server.name} is not one this engine reads")
        key_text = data.get("private_key") if isinstance(data.get("private_key"), str) else None
        secret = data.get("password") or data.get("passphrase")
        password = secret if isinstance(secret, str) else None
    elif "PRIVATE KEY-----" in text:
        key_text = text
    else:
        password = text
    if not key_text and not password:
        raise AgentError(f"the SSH credential of server {server.name} is empty")
    return Route(server.label, server.host, server.port, server.user, key_text=key_text, password=password)


def route_from_inventory(settings: AgentSettings, agent: AgentRow, server: ServerRow | None) -> Route:
    """The inventory entry named after the agent, its server's name, or its server's host."""
    keys = [agent.name] + ([server.name, server.host] if server else [])
    for key in keys:
        entry = settings.inventory.get(key)
        if entry is not None:
            if not entry.user or not entry.key_file:
                raise AgentError(f"inventory entry {key!r} needs user and key_file")
            label = f"{key} ({entry.user}@{entry.host}:{entry.port})"
            return Route(label, entry.host, entry.port, entry.user, key_file=entry.key_file)
    raise AgentError(f"no inventory entry for agent {agent.name} (looked for {', '.join(map(repr, keys))})")


#: The environment the bootstrap finds its parameters in, whatever its template passes.
BOOTSTRAP_ENV = {"panel_url": "ROTATOR_PANEL_URL", "agent_id": "ROTATOR_AGENT_ID", "agent_name": "ROTATOR_AGENT_NAME"}


def render_bootstrap(template: str, *, panel_url: str, agent_id: int, agent_name: str) -> str:
    """The bootstrap command line: the parameters exported as ``ROTATOR_*`` variables, then the
    template with each placeholder a shell-quoted word.

    Every value is data, never shell text: a name with quotes, spaces, ``$(...)``, backticks,
    semicolons, newlines or a leading dash reaches the bootstrap byte for byte (as one argument,
    and in ``ROTATOR_AGENT_NAME``, which a bootstrap can read without parsing options). The
    variables are set by the command itself: sshd's ``AcceptEnv`` would drop them otherwise."""
    values = {"panel_url": panel_url, "agent_id": str(agent_id), "agent_name": agent_name}
    exports = " ".join(f"{BOOTSTRAP_ENV[k]}={shlex.quote(v)}" for k, v in values.items())
    return f"export {exports}; " + template.format(**{k: shlex.quote(v) for k, v in values.items()})


def _load_key(text: str, password: str | None, label: str) -> paramiko.PKey:
    data = text.encode()
    secret = password.encode() if password else None
    classes: dict[type, type[paramiko.PKey]] = {
        ed25519.Ed25519PrivateKey: paramiko.Ed25519Key,
        rsa.RSAPrivateKey: paramiko.RSAKey,
        ec.EllipticCurvePrivateKey: paramiko.ECDSAKey,
    }
    try:
        try:
            loaded: object = serialization.load_ssh_private_key(data, password=secret)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=secret)
        for base, cls in classes.items():
            if isinstance(loaded, base):
                return cls.from_private_key(io.StringIO(text), password=password)
    except (ValueError, TypeError, paramiko.SSHException):
        pass
    raise AgentError(f"the SSH key for {label} cannot be read (unsupported, damaged, or a wrong passphrase)")


class AgentServer:
    """One SSH connection to one agent server."""

    def __init__(self, route: Route, known_hosts: Path, timeout_s: float) -> None:
        self.route = route
        self.known_hosts = known_hosts
        self.timeout_s = timeout_s
        self._client: paramiko.SSHClient | None = None
        self.host_key_fingerprint: str | None = None

    def connect(self) -> str:
        """Log in; return the (pinned) host key's fingerprint."""
        if self._client is not None:
            return self.host_key_fingerprint or ""
        route = self.route
        pkey: paramiko.PKey | None = None
        if route.key_text:
            pkey = _load_key(route.key_text, route.password, route.label)
        elif route.key_file:
            try:
                pkey = paramiko.PKey.from_path(route.key_file)
            except FileNotFoundError:
                raise AgentError(f"the key file {route.key_file} for {route.label} does not exist") from None
            except (OSError, ValueError, TypeError, paramiko.SSHException):
                raise AgentError(f"the key file {route.key_file} for {route.label} cannot be read") from None
        client = paramiko.SSHClient()
        try:
            client.get_host_keys().load(str(self.known_hosts))
        except OSError:
            raise AgentError(
                f"cannot read known_hosts {self.known_hosts}: agent server host keys must be pinned there"
            ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"agent server {route.label}"
        started = time.monotonic()
        try:
            client.connect(
                route.host,
                port=route.port,
                username=route.user,
                pkey=pkey,
                password=None if pkey else route.password,
                timeout=self.timeout_s,
                banner_timeout=self.timeout_s,
                auth_timeout=self.timeout_s,
                channel_timeout=self.timeout_s,
                look_for_keys=False,
                allow_agent=False,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise AgentError(
                f"{where} presented a host key other than the one pinned in {self.known_hosts}: refusing"
            ) from None
        except (paramiko.SSHException, EOFError) as exc:  # AuthenticationException included
            client.close()
            if time.monotonic() - started >= self.timeout_s:  # a phase ran out of time, not a refusal
                raise AgentError(
                    f"{where} did not complete the SSH handshake and login within {self.timeout_s:g} s "
                    "(a slow or overloaded server or host; ssh_timeout_s sets this limit)"
                ) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise AgentError(f"{where} refused the SSH credential for user {route.user}") from None
            if "known_hosts" in str(exc) or "not found in" in str(exc):
                raise AgentError(f"{where} is not pinned in {self.known_hosts}: refusing") from None
            raise AgentError(f"{where}: SSH handshake failed ({type(exc).__name__})") from None
        except (TimeoutError, OSError) as exc:
            client.close()
            reason = "timed out" if isinstance(exc, TimeoutError | socket.timeout) else "refused or unreachable"
            raise AgentError(f"{where}: connection {reason}") from None
        transport = client.get_transport()
        if transport is not None:
            self.host_key_fingerprint = transport.get_remote_server_key().fingerprint
        self._client = client
        return self.host_key_fingerprint or ""

    def run(self, command: str, stdin_secret: str, timeout_s: float) -> RemoteResult:
        """Run ``command`` with ``stdin_secret`` and a newline on its stdin, then EOF."""
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        where = f"agent server {self.route.label}"
        try:
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("connection closed")
            channel = transport.open_session(timeout=self.timeout_s)
            channel.set_combine_stderr(True)
            channel.exec_command(command)
            channel.sendall((stdin_secret + "\n").encode())
            channel.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise AgentError(f"{where}: could not start the bootstrap ({type(exc).__name__})") from None
        output = bytearray()
        deadline = time.monotonic() + timeout_s
        channel.settimeout(0.25)
        try:
            while True:
                try:
                    chunk = channel.recv(32768)
                except TimeoutError:
                    chunk = None
                except (paramiko.SSHException, OSError):
                    raise AgentError(f"{where}: the connection dropped during the bootstrap") from None
                if chunk == b"":
                    break
                if chunk:
                    output += chunk
                    del output[:-_OUTPUT_KEEP]
                if time.monotonic() > deadline:
                    raise AgentError(f"the bootstrap on {where} did not finish within {timeout_s:g} s")
            while not channel.exit_status_ready():
                if time.monotonic() > deadline:
                    raise AgentError(f"the bootstrap on {where} did not finish within {timeout_s:g} s")
                time.sleep(0.02)
            status = channel.recv_exit_status()
        finally:
            channel.close()
        return RemoteResult(status, output.decode("utf-8", "replace"))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def last_line(text: str, hide: Sequence[str]) -> str:
    """The last non-empty line, with the given secrets (exact values), anything UUID-shaped
    and anything key-like removed."""
    for secret in sorted(hide, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "[token]")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(_UUID.sub("[token]", lines[-1]))[:200] if lines else ""
