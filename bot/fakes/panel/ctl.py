#!/usr/bin/env python3
"""Start, stop and restart one reference panel (php/panel/index.php beside it).

Standalone on purpose (standard library only, no project imports): the demo
and the tests hand it to the engine as the profile's ``restart_command``,
exactly where a real panel has ``systemctl restart php8.3-fpm``::

    python3 bot/fakes/panel/ctl.py start|stop|restart|stop-app|start-app|status --state-dir DIR [--fpm]

``DIR/panel.json`` describes the panel (``PanelServer.configure`` writes it)::

    {"port": 8123,                      # loopback HTTP port the panel answers on
     "env_file": "/.../config/.env",    # read at every start, like php-fpm workers do
     "scheme": "iv12_tag_ct/hex",       # PANEL_CIPHER_SCHEME for the panel
     "router": "/.../bot/fakes/panel/php/panel/index.php",
     "mode": "php-s" | "fpm"}           # optional; --fpm selects "fpm" too

Modes:

* ``php-s``: ``php -S 127.0.0.1:PORT router``; ``restart`` stops and starts it.
* ``fpm``: php-fpm8.2 (4 static children) behind nginx, as production serves
  the panel. ``restart`` restarts php-fpm only; nginx keeps answering (502
  while php-fpm is down), so the restart window is real.

``stop-app`` and ``start-app`` are ``restart`` in two halves (php-fpm, or
``php -S``, stopped; then started), where a real panel has ``systemctl stop``
and ``systemctl start php8.3-fpm``: the engine commits between them.

Every process runs detached in its own session with its output in a log file
in DIR and its pid in ``DIR/<name>.pid``. ``stop`` stops whatever runs there,
whatever the mode. Failures exit 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
FPM_CHILDREN = 4
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


class CtlError(Exception):
    """A failure, reported as one line."""


# --- .env ---------------------------------------------------------------------------------


def _unquote(raw: str) -> str:
    if raw[:1] == '"':
        out, i = [], 1
        while i < len(raw) and raw[i] != '"':
            if raw[i] == "\\" and i + 1 < len(raw):
                out.append(_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
            else:
                out.append(raw[i])
                i += 1
        return "".join(out)
    if raw[:1] == "'":
        end = raw.find("'", 1)
        return raw[1:] if end < 0 else raw[1:end]
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def parse_env(text: str) -> dict[str, str]:
    """KEY=value lines; comments, blank lines, ``export``, quotes and inline comments."""
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match:
            values[match.group(1)] = _unquote(match.group(2))
    return values


# --- processes ----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (nobody may reap our orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _pid_of(state: Path, name: str) -> int | None:
    """The pid in DIR/<name>.pid if that process still runs and is the one we started."""
    try:
        pid = int((state / f"{name}.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) and str(state).encode() in cmdline else None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(state: Path, name: str, argv: list[str], env: dict[str, str], port: int) -> int:
    """Start ``argv`` detached, wait until ``port`` accepts, record the pid."""
    if _pid_of(state, name):
        raise CtlError(f"{name} already runs (pid {_pid_of(state, name)}); stop it first")
    log = open(state / f"{name}.log", "ab")
    with log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=state,
            start_new_session=True,
        )
    (state / f"{name}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _port_open(port):
        code = proc.poll()
        if code is not None:
            raise CtlError(f"{name} exited with status {code}; see {state / (name + '.log')}")
        if time.monotonic() > deadline:
            _stop(state, name)
            raise CtlError(f"{name} did not accept on 127.0.0.1:{port} within {START_TIMEOUT_S}s")
        time.sleep(0.01)
    proc.returncode = 0  # detached on purpose: no "still running" warning at exit
    return proc.pid


def _stop(state: Path, name: str) -> bool:
    """SIGTERM the master, wait for it to go (SIGKILL after the timeout), then its group.

    The master alone gets SIGTERM, as in production: php-fpm's master then
    ends its workers itself, which takes it about 2 s (TESTING-FACTS.md).
    """
    pid = _pid_of(state, name)
    if pid is None:
        (state / f"{name}.pid").unlink(missing_ok=True)
        return False
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not _alive(pid):
            break
    else:
        raise CtlError(f"{name} (pid {pid}) did not exit after SIGKILL")
    # Workers a master left behind still hold the listening socket: end them and wait, or
    # the next start could see the port accept while only a dying worker listens.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _group_members(pid):
        if time.monotonic() > deadline:
            raise CtlError(f"{name} workers {_group_members(pid)} did not exit after SIGKILL")
        time.sleep(0.01)
    (state / f"{name}.pid").unlink(missing_ok=True)
    return True


# --- the panel ----------------------------------------------------------------------------


def _load(state: Path) -> dict[str, object]:
    try:
        config: dict[str, object] = json.loads((state / "panel.json").read_text())
    except FileNotFoundError:
        raise CtlError(f"{state / 'panel.json'} does not exist") from None
    except ValueError as exc:
        raise CtlError(f"{state / 'panel.json'} is not valid JSON: {exc}") from None
    missing = [k for k in ("port", "env_file", "scheme", "router") if k not in config]
    if missing:
        raise CtlError(f"{state / 'panel.json'} lacks {', '.join(missing)}")
    return config


def _panel_env(config: dict[str, object]) -> dict[str, str]:
    """What the workers see: a minimal base plus .env as it is on disk now."""
    env_file = Path(str(config["env_file"]))
    try:
        values = parse_env(env_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CtlError(f"cannot read {env_file}: {exc.strerror}") from None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(values)
    env["PANEL_CIPHER_SCHEME"] = str(config["scheme"])
    return env


def _start_php_s(state: Path, config: dict[str, object]) -> None:
    php = shutil.which("php")
    if not php:
        raise CtlError("php is not installed")
    port = int(str(config["port"]))
    # The state dir on the command line (error_log) lets _pid_of recognise our process.
    argv = [php, "-d", f"error_log={state / 'php-errors.log'}", "-S", f"127.0.0.1:{port}"]
    argv.append(str(config["router"]))
    env = _panel_env(config) | {"PHP_CLI_SERVER_WORKERS": "2"}
    _launch(state, "panel", argv, env, port)


def _identity() -> tuple[str, str]:
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


def _fpm_port(state: Path) -> int:
    path = state / "fpm.port"
    if not path.exists():
        path.write_text(f"{_free_port()}\n")
    return int(path.read_text())


def _start_fpm(state: Path, config: dict[str, object]) -> None:
    fpm = shutil.which("php-fpm8.2") or shutil.which("php-fpm8.2", path="/usr/sbin")
    if not fpm:
        raise CtlError("php-fpm8.2 is not installed")
    # As in production, a root master may run its workers as another user (www-data).
    worker = config.get("worker_user")
    user, group = (str(worker), str(worker)) if worker else _identity()
    fpm_port = _fpm_port(state)
    conf = state / "php-fpm.conf"
    conf.write_text(
        "[global]\n"
        f"pid = {state / 'php-fpm.master.pid'}\n"
        f"error_log = {state / 'php-fpm.log'}\n"
        "daemonize = no\n\n"
        "[panel]\n"
        f"user = {user}\ngroup = {group}\n"
        f"listen = 127.0.0.1:{fpm_port}\n"
        f"pm = static\npm.max_children = {FPM_CHILDREN}\n"
        # Workers inherit the master's environment: .env as it was at start.
        "clear_env = no\n"
        "catch_workers_output = yes\n"
    )
    argv = [fpm, "--nodaemonize", "--fpm-config", str(conf)]
    if os.geteuid() == 0:
        argv.append("--allow-to-run-as-root")
    _launch(state, "php-fpm", argv, _panel_env(config), fpm_port)


def _start_nginx(state: Path, config: dict[str, object]) -> None:
    if _pid_of(state, "nginx"):
        return
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not nginx:
        raise CtlError("nginx is not installed")
    port = int(str(config["port"]))
    tmp = state / "nginx-tmp"
    tmp.mkdir(exist_ok=True)
    user, group = _identity()
    params = {
        "SCRIPT_FILENAME": str(config["router"]),
        "SCRIPT_NAME": "/index.php",
        "REQUEST_METHOD": "$request_method",
        "REQUEST_URI": "$request_uri",
        "QUERY_STRING": "$query_string",
        "CONTENT_TYPE": "$content_type",
        "CONTENT_LENGTH": "$content_length",
        "SERVER_PROTOCOL": "$server_protocol",
        "REMOTE_ADDR": "$remote_addr",
        "SERVER_NAME": "$server_name",
        "SERVER_PORT": "$server_port",
    }
    fastcgi = "".join(f"            fastcgi_param {k} {v};\n" for k, v in params.items())
    conf = state / "nginx.conf"
    conf.write_text(
        "daemon off;\nworker_processes 1;\n"
        + (f"user {user} {group};\n" if os.geteuid() == 0 else "")
        + f"pid {state / 'nginx.master.pid'};\n"
        f"error_log {state / 'nginx-error.log'};\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        "    client_body_buffer_size 1m;\n"
        f"    client_body_temp_path {tmp}/client;\n"
        f"    fastcgi_temp_path {tmp}/fastcgi;\n"
        f"    proxy_temp_path {tmp}/proxy;\n"
        f"    uwsgi_temp_path {tmp}/uwsgi;\n"
        f"    scgi_temp_path {tmp}/scgi;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        f"            fastcgi_pass 127.0.0.1:{_fpm_port(state)};\n"
        f"{fastcgi}"
        "        }\n"
        "    }\n"
        "}\n"
    )
    argv = [nginx, "-p", str(state), "-e", str(state / "nginx-error.log"), "-c", str(conf)]
    _launch(state, "nginx", argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, port)


def start(state: Path, fpm: bool) -> None:
    config = _load(state)
    if fpm or config.get("mode") == "fpm":
        _start_fpm(state, config)
        _start_nginx(state, config)
    else:
        _start_php_s(state, config)


def stop(state: Path) -> None:
    for name in ("panel", "nginx", "php-fpm"):
        _stop(state, name)


def restart(state: Path, fpm: bool) -> None:
    stop_app(state, fpm)
    start_app(state, fpm)


def stop_app(state: Path, fpm: bool) -> None:
    config = _load(state)
    _stop(state, "php-fpm" if fpm or config.get("mode") == "fpm" else "panel")


def start_app(state: Path, fpm: bool) -> None:
    start(state, fpm)


def status(state: Path) -> bool:
    running = {n: _pid_of(state, n) for n in ("panel", "php-fpm", "nginx")}
    running = {n: p for n, p in running.items() if p}
    print(", ".join(f"{n} pid {p}" for n, p in running.items()) or "not running")
    return bool(running)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Manage one reference panel.")
    parser.add_argument("action", choices=("start", "stop", "restart", "stop-app", "start-app", "status"))
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--fpm", action="store_true", help="php-fpm8.2 behind nginx")
    args = parser.parse_args(argv)
    state = args.state_dir.resolve()
    try:
        if not state.is_dir():
            raise CtlError(f"state dir {state} does not exist")
        if args.action == "start":
            start(state, args.fpm)
        elif args.action == "stop":
            stop(state)
        elif args.action == "restart":
            restart(state, args.fpm)
        elif args.action == "stop-app":
            stop_app(state, args.fpm)
        elif args.action == "start-app":
            start_app(state, args.fpm)
        else:
            return 0 if status(state) else 3
    except CtlError as exc:
        print(f"panel_ctl: {args.action} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
