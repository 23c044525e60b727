"""The panels one bot serves: where each engine lives and how to reach it.

The bot's settings embed an ``Inventory``; each ``PanelEntry`` names a panel
host, the SSH user whose ``authorized_keys`` forces ``engine serve``, the
bot's private key for it, and the known_hosts file that pins the host key.
The key's passphrase is a ``SecretStr``: it never shows in a repr or a log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bot.errors import SettingsError

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


def check_tags(value: tuple[str, ...]) -> tuple[str, ...]:
    """Tags are short lower-case words (``prod``, ``eu-west``), each once."""
    for tag in value:
        if not _TAG.match(tag):
            raise ValueError("tags are lower-case letters, digits, dot, dash and underscore (at most 32)")
    return tuple(dict.fromkeys(value))


class PanelEntry(BaseModel):
    """One panel host and the SSH settings that reach its engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64)
    key_file: Path
    key_passphrase: SecretStr | None = None
    known_hosts: Path
    remote_command: str = "engine serve"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    event_timeout_s: float = Field(default=300.0, gt=0)
    keepalive_s: int = Field(default=15, ge=0)
    reconnect_attempts: int = Field(default=5, ge=0, le=100)
    reconnect_backoff_s: float = Field(default=1.0, ge=0)
    reconnect_backoff_max_s: float = Field(default=30.0, ge=0)
    #: "totp": approving a rotation of this panel needs a TOTP code (None: the global step_up)
    step_up: Literal["none", "totp"] | None = None
    #: labels for choosing several panels at once (``/rotate-key --tag prod``)
    tags: tuple[str, ...] = ()

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_tags(value)

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or value.startswith("-"):
            raise ValueError("must be a host name or address")
        return value

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait before reconnect ``attempt`` (1-based): doubling, capped."""
        return min(self.reconnect_backoff_s * 2.0 ** (attempt - 1), self.reconnect_backoff_max_s)


class Inventory(BaseModel):
    """Panels by name; ``get`` explains which names exist when one is unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    panels: dict[str, PanelEntry] = Field(default_factory=dict)

    @field_validator("panels", mode="before")
    @classmethod
    def _name_from_key(cls, value: object) -> object:
        """Let TOML/JSON settings leave out ``name``: the table key names the panel."""
        if not isinstance(value, dict):
            return value
        out: dict[object, object] = {}
        for key, entry in value.items():
            if isinstance(entry, dict) and "name" not in entry:
                entry = {**entry, "name": key}
            out[key] = entry
        return out

    @field_validator("panels")
    @classmethod
    def _keys_match_names(cls, value: dict[str, PanelEntry]) -> dict[str, PanelEntry]:
        for key, entry in value.items():
            if key != entry.name:
                raise ValueError(f"panel {key!r} is named {entry.name!r}; use one name")
        return value

    @property
    def names(self) -> list[str]:
        return sorted(self.panels)

    def get(self, name: str) -> PanelEntry:
        try:
            return self.panels[name]
        except KeyError:
            known = ", ".join(self.names) or "none configured"
            raise SettingsError(f"unknown panel {name!r}; known panels: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.panels

    def __len__(self) -> int:
        return len(self.panels)
