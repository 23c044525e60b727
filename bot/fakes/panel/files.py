"""The reference panel's files: ``config/.env`` as the installer writes it, and TOML for profiles.

``env_text`` is realistic on purpose (comments, quotes, a licence key the
rotation must leave alone), so the engine's byte-for-byte ``.env`` rewrite is
exercised by everything that uses the reference panel.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.fakes.panel.database import PanelDatabase
from bot.fakes.panel.server import PanelServer


def env_text(db: PanelDatabase, key_hex: str, license_key: str, port: int | None) -> str:
    """``config/.env`` for a panel on ``db`` whose PANEL_ENCRYPTION_KEY is ``key_hex``."""
    return f"""# MyOsicam panel configuration
# Written by the installer. PANEL_ENCRYPTION_KEY protects stored credentials:
# do not change it by hand.

APP_NAME="MyOsicam Panel"
APP_ENV=production
APP_DEBUG=false
APP_URL=http://127.0.0.1:{port or 8080}
APP_TIMEZONE='Europe/Berlin'

# Database
DB_CONNECTION=mysql
DB_HOST={db.host}
DB_PORT={db.port}
DB_DATABASE={db.name}
DB_USERNAME={db.user}
DB_PASSWORD="{db.password}"

# Licence (not rotated with the encryption key)
PANEL_LICENSE_KEY='{license_key}'

PANEL_ENCRYPTION_KEY={key_hex}

MAIL_FROM_NAME="MyOsicam Panel"
SESSION_LIFETIME=120
"""


def profile_settings(
    name: str, panel_root: Path, journal_dir: Path, server: PanelServer | None
) -> dict[str, Any]:
    """The engine's profile for a reference panel (``to_toml`` writes it).

    ``.env`` stays owned by whoever runs the panel here (a real panel's is
    ``www-data``); with a running ``server`` the engine restarts it through
    ``ctl.py`` and asks its ``/health`` after the switch, else restarting is
    ``true`` and there is no panel check.
    """
    settings: dict[str, Any] = {
        "name": name,
        "panel_root": str(panel_root),
        "ciphertext": "auto",
        "restart_command": server.restart_command if server else ["true"],
        "env_owner": pwd.getpwuid(os.geteuid()).pw_name,
        "env_group": grp.getgrgid(os.getegid()).gr_name,
        "env_mode": "0640",
        "journal_dir": str(journal_dir),
        "escrow": "none",  # a sandbox has no vault; a test that escrows sets escrow_command
    }
    if server is not None:
        settings["verify_url"] = server.verify_url
    return settings


# --- a little TOML, enough for a profile or a bot config ---------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Scalars and lists first, then each nested mapping as a ``[table]``."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)
    ]
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}{_toml_key(key)}"
            lines += ["", f"[{name}]", to_toml(value, prefix=f"{name}.").rstrip("\n")]
    return "\n".join(lines).strip("\n") + "\n"
