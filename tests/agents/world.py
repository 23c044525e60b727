"""Agent servers and agents on a reference panel, for the rotate-agent tests.

An ``AgentHost`` is an agent server: a fresh local login (``useradd``) reached
through its own OpenSSH ``sshd`` on a loopback port, with the reference
bootstrap and agent (tests/agent/) in its home. The engine logs in with the
key the panel keeps, encrypted, in ``saved_servers.ssh_credential_encrypted``;
the host key is pinned in a ``known_hosts`` file the profile names.

An ``AgentWorld`` is one panel (``PanelSandbox`` with the PHP panel running)
plus its agent servers and agents, in one of two agent schemas: ``REFERENCE``
(schema.sql, agents.php) or ``NODES`` (schema_nodes.sql, nodes.php: other
table and column names, other keys, UUID tokens, another signature), which the
engine reaches through the profile alone (``Schema.profile_settings``). ``install`` runs the bootstrap once as the
agent's login, as an operator would have, so every agent starts registered
and heartbeating with its "old" token. Every token and key made here is
registered with the secrets registry; install tokens the engine makes are
found by their SHA-256 in the panel's table (``install_token_leaks``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.fakes.panel import HERE as PANEL_FILES
from bot.fakes.panel.server import http_json
from tests.agent.ref_agent import SCHEMES
from tests.support.panel import PanelSandbox, free_port
from tests.support.php_crypto import php_encrypt
from tests.support.procs import process_table, wait_until
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import SSHD, KeyPair, _wait_for_banner, make_key

REPO = Path(__file__).resolve().parents[2]
AGENT_SOURCES = REPO / "tests" / "agent"
#: The agent server's interpreter: the system one (the test runner's may live under /root).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "/usr/bin/python3"
HEARTBEAT_S = 0.3
BOOTSTRAP_TEMPLATE = (
    "python3 ~/myosicam/bootstrap.py --panel {panel_url} --agent-id {agent_id} "
    f"--heartbeat-s {HEARTBEAT_S} --wait-s 5 --register-timeout-s 60"
)
AGENT_PY = AGENT_SOURCES / "ref_agent.py"


@dataclass(frozen=True)
class Schema:
    """Where a panel keeps its agents, servers and install tokens, and how it signs."""

    name: str  # the agent dialect, as ref_agent.py's --scheme names it
    agents: str
    agent_id: str
    agent_name: str
    token: str
    server: str
    last_seen: str
    registered_at: str
    servers: str
    server_id: str
    server_name: str
    host: str
    port: str
    user: str
    credential: str
    install_tokens: str
    it_agent: str
    it_digest: str
    it_expires: str
    it_used: str
    create: Path | None = None  # extra tables to create (None: schema.sql has them)

    @property
    def heartbeat_path(self) -> str:
        return SCHEMES[self.name][3]

    def sign(self, agent_id: int, token: str, body: bytes) -> dict[str, str]:
        return SCHEMES[self.name][4](agent_id, token, body)

    def profile_settings(self) -> dict[str, Any]:
        """The profile's [agents] names for this schema (the engine's defaults for REFERENCE)."""
        return {
            "table": self.agents, "id_column": self.agent_id, "name_column": self.agent_name,
            "token_column": self.token, "server_column": self.server, "last_seen_column": self.last_seen,
            "install_token_table": self.install_tokens, "install_token_agent_column": self.it_agent,
            "install_token_hash_column": self.it_digest, "install_token_expires_column": self.it_expires,
            "install_token_used_column": self.it_used, "server_table": self.servers,
            "server_id_column": self.server_id, "server_name_column": self.server_name,
            "server_host_column": self.host, "server_port_column": self.port, "server_user_column": self.user,
            "server_credential_column": self.credential,
        }


REFERENCE = Schema(
    "reference", "agents", "id", "name", "agent_token", "server_id", "last_seen", "registered_at",
    "saved_servers", "id", "name", "host", "port", "ssh_user", "ssh_credential_encrypted",
    "agent_install_tokens", "agent_id", "token_sha256", "expires_at", "used_at",
)
NODES = Schema(
    "nodes", "edge_nodes", "node_id", "label", "api_secret", "host_ref", "pinged_at", "enrolled_at",
    "node_hosts", "host_id", "title", "address", "ssh_port", "login", "login_secret",
    "node_enrolments", "node_ref", "secret_digest", "valid_until", "consumed_at",
    create=PANEL_FILES / "schema_nodes.sql",
)
USER_PREFIX = "myoag"
_CANDIDATE = re.compile(r"[A-Za-z0-9_\-]{16,}")


# --- one agent server ----------------------------------------------------------------------


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies are dead already: their reaper may be slow)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL, one pid at a time, every process of a login this fixture created."""

    def all_gone() -> bool:
        pids = _pids_of_uid(uid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids

    wait_until(all_gone, 10, interval=0.05, what=f"processes of uid {uid} gone")


def _sshd_config(directory: Path, port: int, host_key: Path, user: str) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {directory / "sshd.pid"}
AuthorizedKeysFile .ssh/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin no
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
"""


@dataclass
class AgentHost:
    """An agent server: a login of its own, reached through its own sshd."""

    user: str
    uid: int
    home: Path
    directory: Path
    port: int
    host_key: KeyPair
    client_key: KeyPair
    process: subprocess.Popen[bytes] | None

    host = "127.0.0.1"

    @classmethod
    def start(cls, directory: Path) -> AgentHost:
        directory.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        user = f"{USER_PREFIX}{secrets.token_hex(4)}"
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--comment", f"myosicam test agent pid={os.getpid()}",
             user],
            check=True, capture_output=True,
        )
        subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        host = cls(user, entry.pw_uid, home, directory, 0, make_key(directory / "host_key", comment="agent-host"),
                   make_key(directory / "client_key", comment="engine"), None)
        try:
            host._populate_home(entry.pw_gid)
            host._start_sshd()
        except BaseException:
            host.stop()
            raise
        return host

    def _populate_home(self, gid: int) -> None:
        ssh = self.home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(self.client_key.public_line + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        code = self.home / "myosicam"
        code.mkdir(exist_ok=True)
        for name in ("bootstrap.py", "ref_agent.py"):
            shutil.copyfile(AGENT_SOURCES / name, code / name)
        for path in (ssh, ssh / "authorized_keys", code, *code.iterdir()):
            os.chown(path, self.uid, gid)

    def _start_sshd(self, attempts: int = 3) -> None:
        for _ in range(attempts):
            self.port = free_port()
            config = self.directory / "sshd_config"
            config.write_text(_sshd_config(self.directory, self.port, self.host_key.private_path, self.user))
            with (self.directory / "sshd.log").open("ab") as log:
                process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=log)
            if _wait_for_banner(self.port, process):
                self.process = process
                return
            process.kill()
            process.wait()
        raise RuntimeError(f"agent sshd did not start; see {self.directory / 'sshd.log'}")

    # --- what the tests look at ---

    @property
    def known_hosts_line(self) -> str:
        kind, blob = self.host_key.public_line.split()[:2]
        return f"[{self.host}]:{self.port} {kind} {blob}"

    @property
    def state_dir(self) -> Path:
        return self.home / ".myosicam-agent"

    def agent_pid(self) -> int | None:
        """The pid in the agent's pid file, if that process still runs."""
        try:
            pid = int((self.state_dir / "agent.pid").read_text().split()[0])
        except (OSError, ValueError):
            return None
        return pid if pid in self.agent_processes() else None

    def agent_processes(self) -> list[int]:
        """Running (not zombie) reference agents of this login."""
        return [pid for pid, state, argv in process_table()
                if state not in ("Z", "X") and "run" in argv and any(a.endswith("agent.py") for a in argv)
                and pid in _pids_of_uid(self.uid)]

    def argv_text(self) -> str:
        """The command lines of every process of this login, for the secret scan."""
        uids = set(_pids_of_uid(self.uid))
        return "\n".join(" ".join(argv) for pid, _, argv in process_table() if pid in uids)

    def logs(self) -> str:
        parts = []
        for path in (self.state_dir / "agent.log", self.directory / "sshd.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def token_file(self) -> Path:
        return self.state_dir / "agent.token"

    def stop(self) -> None:
        _kill_uid(self.uid)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _kill_uid(self.uid)
        subprocess.run(["userdel", "--remove", self.user], capture_output=True, check=False)


def remove_stale_users() -> None:
    """Logins left by test sessions that died (their creator's pid is gone)."""
    for entry in pwd.getpwall():
        match = re.search(r"myosicam test agent pid=(\d+)", entry.pw_gecos)
        if entry.pw_name.startswith(USER_PREFIX) and match and not Path(f"/proc/{match.group(1)}").exists():
            _kill_uid(entry.pw_uid)
            subprocess.run(["userdel", "--remove", entry.pw_name], capture_output=True, check=False)


# --- the panel's side ----------------------------------------------------------------------


@dataclass
class Agent:
    id: int
    name: str
    server_id: int
    host: AgentHost | None


@dataclass
class AgentState:
    """An agent's row as the panel holds it now."""

    token: str | None = field(repr=False)
    last_seen: datetime | None
    registered_at: datetime | None

    @property
    def fingerprint(self) -> str | None:
        return hashlib.sha256(self.token.encode()).hexdigest()[:16] if self.token else None


@dataclass
class AgentWorld:
    panel: PanelSandbox
    root: Path
    registry: SecretRegistry
    hosts: list[AgentHost] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)
    schema: Schema = REFERENCE
    _next_server: int = 101

    def use(self, schema: Schema) -> None:
        """Keep agents in ``schema`` from now on (creating its tables if schema.sql lacks them)."""
        self.create_tables(schema)
        self.schema = schema

    def create_tables(self, schema: Schema) -> None:
        """The tables of ``schema`` that schema.sql does not make (the panel serves them at once)."""
        if schema.create is not None:
            text = "\n".join(x for x in schema.create.read_text().splitlines() if not x.lstrip().startswith("--"))
            for statement in (s.strip() for s in text.split(";")):
                if statement:
                    self.sql(statement)

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def panel_url(self) -> str:
        return f"http://127.0.0.1:{self.panel.port}"

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts))

    def start_host(self) -> AgentHost:
        host = AgentHost.start(self.root / f"host-{len(self.hosts) + 1}")
        self.hosts.append(host)
        self.registry.register(host.client_key.private_path.read_text(), "agent server SSH key")
        for line in host.client_key.private_path.read_text().splitlines():
            if "PRIVATE KEY" not in line:
                self.registry.register(line, "agent server SSH key (a line)")
        self._write_known_hosts()
        return host

    def sql(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.panel.db.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            rows = list(cur.fetchall())
            conn.commit()
            return rows

    def add_agent(self, name: str, host: AgentHost | None, *, port: int | None = None) -> Agent:
        """An agent row and its saved server. ``host=None``: a server nothing answers on."""
        s = self.schema
        server_id = self._next_server
        self._next_server += 1
        key_text = (host.client_key if host else make_key(self.root / f"dead-{server_id}")).private_path.read_text()
        self.registry.register(key_text, "agent server SSH key")
        (credential,) = php_encrypt(self.panel.scheme, self.panel.initial_key, [key_text.encode()])
        self.sql(
            f"INSERT INTO {s.servers} ({s.server_id}, {s.server_name}, {s.host}, {s.port}, {s.user}, "
            f"{s.credential}) VALUES (%s, %s, %s, %s, %s, %s)",
            (server_id, f"srv-{name}", "127.0.0.1", host.port if host else (port or free_port()),
             host.user if host else "nobody", credential),
        )
        self.sql(f"INSERT INTO {s.agents} ({s.agent_name}, {s.server}) VALUES (%s, %s)", (name, server_id))
        (agent_id,) = self.sql(f"SELECT {s.agent_id} FROM {s.agents} WHERE {s.agent_name} = %s", (name,))[0]
        agent = Agent(int(agent_id), name, server_id, host)
        self.agents[name] = agent
        return agent

    def issue_install_token(self, agent: Agent, ttl_s: int = 600) -> str:
        """What the panel's UI does when an operator adds an agent."""
        token = secrets.token_urlsafe(32)
        self.registry.register(token, f"install token of {agent.name}")
        s = self.schema
        self.sql(
            f"INSERT INTO {s.install_tokens} ({s.it_agent}, {s.it_digest}, {s.it_expires}) "
            "VALUES (%s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND)",
            (agent.id, hashlib.sha256(token.encode()).hexdigest(), ttl_s),
        )
        return token

    def install(self, agent: Agent) -> AgentState:
        """Run the bootstrap as the agent's login (the first install); wait until it heartbeats."""
        assert agent.host is not None
        host = agent.host
        token = self.issue_install_token(agent)
        argv = [SYSTEM_PYTHON, str(host.home / "myosicam" / "bootstrap.py"), "--panel", self.panel_url,
                "--agent-id", str(agent.id), "--heartbeat-s", str(HEARTBEAT_S), "--scheme", self.schema.name]
        entry = pwd.getpwnam(host.user)
        proc = subprocess.run(argv, input=token + "\n", text=True, capture_output=True, timeout=60,
                              user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], cwd=host.home,
                              env={"HOME": str(host.home), "PATH": "/usr/bin:/bin"}, check=False)
        assert proc.returncode == 0, f"first install of {agent.name} failed: {proc.stderr or proc.stdout}"
        state = wait_until(lambda: self.state(agent) if self.state(agent).token else None, 30,
                           what=f"{agent.name} registered")
        self.wait_for_heartbeat(agent)
        return state

    # --- reading the panel ---

    def state(self, agent: Agent) -> AgentState:
        s = self.schema
        token, last_seen, registered_at = self.sql(
            f"SELECT {s.token}, {s.last_seen}, {s.registered_at} FROM {s.agents} WHERE {s.agent_id} = %s", (agent.id,)
        )[0]
        if token:
            self.registry.register(token, f"agent token of {agent.name}")
        return AgentState(token, last_seen, registered_at)

    def wait_for_heartbeat(self, agent: Agent, timeout: float = 30) -> AgentState:
        """Wait until ``last_seen`` moves on from now (a heartbeat, not only the registration)."""
        before = self.state(agent).last_seen
        return wait_until(lambda: (s := self.state(agent)).last_seen != before and s, timeout,
                          what=f"a heartbeat from {agent.name}")

    def install_tokens(self, agent: Agent) -> list[dict[str, Any]]:
        """The agent's install tokens: id, used, alive (unexpired), in order."""
        s = self.schema
        key = "id" if s is REFERENCE else "enrol_id"
        rows = self.sql(
            f"SELECT {key}, {s.it_used} IS NOT NULL, {s.it_expires} > UTC_TIMESTAMP(6) FROM {s.install_tokens} "
            f"WHERE {s.it_agent} = %s ORDER BY {key}", (agent.id,)
        )
        return [{"id": int(r[0]), "used": bool(r[1]), "alive": bool(r[2])} for r in rows]

    def heartbeat(self, agent_id: int, token: str, *, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        """POST a heartbeat signed with ``token`` (or with the ``headers`` given): (status, JSON)."""
        body = body if body is not None else json.dumps({"agent_id": agent_id, "from": "test"}).encode()
        sent = headers if headers is not None else self.schema.sign(agent_id, token, body)
        return post(f"{self.panel_url}{self.schema.heartbeat_path}", body, sent)

    def register(self, install_token: str) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"install_token": install_token}).encode()
        status, answer = post(f"{self.panel_url}/agents/register", body, {})
        if isinstance(answer.get("agent_token"), str):
            self.registry.register(answer["agent_token"], "agent token from a test registration")
        return status, answer

    # --- profiles and scans ---

    def profile(self, **agents: Any) -> Path:
        settings = {
            **(self.schema.profile_settings() if self.schema is not REFERENCE else {}),
            "panel_url": self.panel_url,
            "bootstrap_command": BOOTSTRAP_TEMPLATE,
            "known_hosts": str(self.known_hosts),
            "reregister_timeout_s": 30,
            "bootstrap_timeout_s": 30,
            "ssh_timeout_s": 10,  # the product's default: 5 s was tight for a handshake on a loaded CI host
            **agents,
        }
        return self.panel.write_profile(agents=settings)

    def install_token_leaks(self, text: str) -> list[str]:
        """Install tokens (found by their SHA-256 in the panel's table) that ``text`` holds."""
        digests = {str(r[0]) for r in self.sql(f"SELECT {self.schema.it_digest} FROM {self.schema.install_tokens}")}
        return sorted({f"install token #{sorted(digests).index(d)}"
                       for word in _CANDIDATE.findall(text)
                       if (d := hashlib.sha256(word.encode()).hexdigest()) in digests})

    def leaks(self, *texts: str) -> list[str]:
        """Registered secrets and install tokens found in ``texts`` (names only, never values)."""
        text = "\n".join(texts)
        for agent in self.agents.values():
            self.state(agent)  # registers the current tokens
        return sorted(set(self.registry.scan(text)) | set(self.install_token_leaks(text)))

    def everything_written(self) -> str:
        """Every log, journal file and command line the rotation could have written a token to."""
        parts = [h.logs() + "\n" + h.argv_text() for h in self.hosts]
        for folder in (self.panel.state_dir, self.panel.root / "journal"):
            if folder.exists():
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def close(self) -> None:
        for host in self.hosts:
            host.stop()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, answer = http_json("POST", url, body, headers, timeout_s=10)
    return status, dict(answer or {})


def serve(profile: Path, **request: Any) -> list[dict[str, Any]]:
    """Send one request line to ``python -m engine serve``, as the bot does; the events it answers."""
    line = json.dumps({"v": 1, "id": "t-1", **request}) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--profile", str(profile), "serve"],
        input=line, capture_output=True, text=True, timeout=120, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)), check=False,
    )
    return [json.loads(x) for x in proc.stdout.splitlines()]
