"""One running reference panel, driven through ``ctl.py`` and spoken to over HTTP.

``PanelServer(state_dir, port)`` is the handle: ``configure`` writes the
``panel.json`` that ``ctl.py`` reads, ``start``/``restart``/``stop`` run it,
``restart_command`` is what a profile hands the engine (where a real panel has
``systemctl restart php8.3-fpm``), and ``health``/``credentials``/``save``
are the panel's own endpoints (see ``php/panel/index.php``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.fakes.panel import CTL, ROUTER


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, Any]:
    """(HTTP status, JSON answer) of one request to the panel; status 0 when nothing answers."""
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"error": raw.decode(errors="replace")}
    except OSError as exc:
        return 0, {"error": f"panel unreachable: {exc}"}


@dataclass(frozen=True)
class PanelServer:
    """The reference panel whose processes and logs live in ``state_dir``."""

    state_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def verify_url(self) -> str:
        return f"{self.url}/health"

    @property
    def restart_command(self) -> list[str]:
        return self.ctl_argv("restart")

    @property
    def stop_command(self) -> list[str]:
        """The first half of a split restart (``systemctl stop php8.3-fpm``)."""
        return self.ctl_argv("stop-app")

    @property
    def start_command(self) -> list[str]:
        """The second half (``systemctl start php8.3-fpm``)."""
        return self.ctl_argv("start-app")

    def ctl_argv(self, action: str) -> list[str]:
        return [sys.executable, str(CTL), action, "--state-dir", str(self.state_dir)]

    @property
    def configured(self) -> bool:
        return (self.state_dir / "panel.json").exists()

    def configure(
        self, env_file: Path, scheme: str, *, fpm: bool = False, worker_user: str | None = None
    ) -> None:
        """Write ``panel.json``: which ``.env`` the workers load, the layout, how it is served
        (``worker_user``: php-fpm's workers run as that user, e.g. ``www-data``; needs root)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "port": self.port,
            "env_file": str(env_file),
            "scheme": scheme,
            "router": str(ROUTER),
            "mode": "fpm" if fpm else "php-s",
        }
        if worker_user:
            config["worker_user"] = worker_user
        (self.state_dir / "panel.json").write_text(json.dumps(config, indent=2))

    def ctl(self, action: str) -> None:
        """Run ``ctl.py <action>``; raise ``RuntimeError`` with its one-line reason on failure."""
        proc = subprocess.run(
            self.ctl_argv(action), capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or f"ctl.py {action} exited {proc.returncode}")

    def start(self) -> None:
        self.ctl("start")

    def restart(self) -> None:
        self.ctl("restart")

    def stop(self) -> None:
        """Stop whatever runs for this panel (nothing to do before ``configure``)."""
        if self.configured:
            self.ctl("stop")

    # --- the panel's endpoints ---------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, JSON answer); status 0 when nothing answers (e.g. mid-restart)."""
        data = None if body is None else json.dumps(body).encode()
        return http_json(method, f"{self.url}{path}", data)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: 200 when every stored credential decrypts with the panel's key."""
        return self.request("GET", "/health")

    def credentials(self) -> dict[str, Any]:
        """``GET /credentials``: label -> plaintext, None (no value), False (does not open)."""
        status, body = self.request("GET", "/credentials")
        if status != 200:
            raise RuntimeError(f"GET /credentials answered {status}: {body}")
        return dict(body)

    def save(self, table: str, column: str, row_id: int, plaintext: str | None) -> None:
        """A user saving a password in the panel: the worker encrypts it with the key it holds."""
        body = {"table": table, "column": column, "id": row_id, "plaintext": plaintext}
        status, answer = self.request("POST", "/credentials", body)
        if status != 200:
            raise RuntimeError(f"POST /credentials answered {status}: {answer}")
