"""The panel profile: what we cannot know about a MyOsicam panel, in TOML.

Every setting has a documented default matching a stock panel; ``probe``
checks the profile against the live panel. Validation errors name the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.cipher import Scheme
from engine.errors import ProfileError

DEFAULT_COLUMNS: tuple[str, ...] = (
    "oscam_installs.webif_password",
    "saved_servers.ssh_credential_encrypted",
    "email_settings.smtp_password",
    "email_settings.mailgun_api_key",
    "email_configurations.smtp_password",
    "email_configurations.mailgun_api_key",
)
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
Ident = Annotated[str, Field(pattern=_IDENT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    table: Ident
    column: Ident
    primary_key: Ident = "id"

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


class DatabaseSettings(_Strict):
    """Explicit connection settings; any left out are read from ``.env``."""

    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    name: str | None = None
    user: str | None = None
    password: str | None = Field(default=None, repr=False)
    unix_socket: str | None = None
    env_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "host": "DB_HOST",
            "port": "DB_PORT",
            "name": "DB_DATABASE",
            "user": "DB_USERNAME",
            "password": "DB_PASSWORD",
        }
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)


class AgentSettings(_Strict):
    """Agent token rotation (docs/architecture.md §5); defaults match the reference panel.

    * ``install_token_provider``: ``sql`` (the engine makes a random single-use
      token and stores only its SHA-256, ``agent_id``, ``expires_at`` and
      ``used_at`` in ``install_token_table``) or ``command`` (``install_token_command``
      runs on the panel host with ``ROTATOR_AGENT_ID``/``ROTATOR_AGENT_NAME`` in its
      environment and prints a fresh token; ``install_token_revoke_command``, if
      set, gets a token on stdin and revokes it).
    * ``bootstrap_command``: a shell command run on the agent server; placeholders
      ``{panel_url}``, ``{agent_id}``, ``{agent_name}`` are shell-quoted. The install
      token goes to its stdin, never on its command line.
    * ``ssh_source``: ``panel`` (host, port, user and the encrypted credential from
      the panel's ``server_table``) or ``inventory`` (entries keyed by agent name,
      server name or server host). Host keys are always pinned by ``known_hosts``
      (default ``~/.ssh/known_hosts`` of the engine's user).
    * ``old_token_check``: ``heartbeat`` signs a heartbeat with the old token and
      requires the panel to refuse it (``heartbeat_url``, default
      ``{panel_url}/agents/heartbeat``); ``none`` checks the database only.
    """

    class InventoryEntry(_Strict):
        """How to reach one agent server when ``ssh_source = "inventory"``."""

        host: str
        port: int = Field(default=22, ge=1, le=65535)
        user: str | None = None
        key_file: Path | None = None

    #: Placeholders a bootstrap template may use; each is shell-quoted when filled in.
    PLACEHOLDERS: ClassVar[tuple[str, ...]] = ("panel_url", "agent_id", "agent_name")

    table: Ident = "agents"
    id_column: Ident = "id"
    name_column: Ident = "name"
    token_column: Ident = "agent_token"
    server_column: Ident = "server_id"
    last_seen_column: Ident = "last_seen"
    last_seen_utc: bool = True
    install_token_provider: Literal["sql", "command"] = "sql"
    install_token_table: Ident = "agent_install_tokens"
    install_token_command: list[str] | None = None
    install_token_revoke_command: list[str] | None = None
    install_token_ttl_s: int = Field(default=900, gt=0)
    panel_url: str = "http://127.0.0.1"
    heartbeat_url: str | None = None
    old_token_check: Literal["heartbeat", "none"] = "heartbeat"
    bootstrap_command: str = "myosicam-agent-bootstrap --panel {panel_url} --agent-id {agent_id}"
    bootstrap_timeout_s: float = Field(default=120.0, gt=0)
    reregister_timeout_s: float = Field(default=120.0, gt=0)
    parallelism: int = Field(default=4, ge=1, le=64)
    ssh_source: Literal["panel", "inventory"] = "panel"
    server_table: Ident = "saved_servers"
    server_name_column: Ident = "name"
    server_host_column: Ident = "host"
    server_port_column: Ident = "port"
    server_user_column: Ident = "ssh_user"
    server_credential_column: Ident = "ssh_credential_encrypted"
    known_hosts: Path | None = None
    inventory: dict[str, InventoryEntry] = Field(default_factory=dict)
    ssh_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("bootstrap_command")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(cls.PLACEHOLDERS, "x"))
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"unknown placeholder {exc}; use {', '.join('{' + p + '}' for p in cls.PLACEHOLDERS)}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"is not a valid template ({exc})") from None
        return value

    @field_validator("panel_url", "heartbeat_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _command_provider_has_command(self) -> AgentSettings:
        if self.install_token_provider == "command" and not self.install_token_command:
            raise ValueError("install_token_provider = \"command\" needs install_token_command")
        return self

    @property
    def check_url(self) -> str:
        return self.heartbeat_url or self.panel_url.rstrip("/") + "/agents/heartbeat"


class Profile(_Strict):
    name: str = "panel"
    panel_root: Path
    env_file: Path | None = None
    key_name: str = "PANEL_ENCRYPTION_KEY"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    columns: list[ColumnSpec] = Field(
        default_factory=lambda: [
            ColumnSpec(table=c.split(".")[0], column=c.split(".")[1]) for c in DEFAULT_COLUMNS
        ]
    )
    ciphertext: str = "auto"
    restart_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "restart", "php8.3-fpm"], min_length=1
    )
    restart_timeout_s: float = Field(default=60.0, gt=0)
    verify_url: str | None = None
    verify_command: list[str] | None = None
    verify_timeout_s: float = Field(default=15.0, gt=0)
    escrow_command: list[str] | None = None
    escrow_label: str = "escrow"
    backup_command: list[str] | None = None
    hook_timeout_s: float = Field(default=300.0, gt=0)
    #: ``.env`` keeps its owner, group and mode; ``env_mode``/``env_group`` are the hygiene a
    #: looser file is tightened to; only root or ``env_owner`` may own ``.env`` and its folder.
    env_owner: str = "www-data"
    env_group: str = "www-data"
    env_mode: str = "0640"
    journal_dir: Path = Path("/var/lib/myosicam-rotator")
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    agents: AgentSettings = Field(default_factory=AgentSettings)

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_from_strings(cls, value: object) -> object:
        if isinstance(value, list):
            out: list[object] = []
            for item in value:
                if isinstance(item, str):
                    table, dot, column = item.partition(".")
                    if not dot:
                        raise ValueError(f"column {item!r} must be written table.column")
                    out.append({"table": table, "column": column})
                else:
                    out.append(item)
            return out
        return value

    @field_validator("ciphertext")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value != "auto":
            Scheme.parse(value)
        return value

    @field_validator("env_mode")
    @classmethod
    def _octal_mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError("must be an octal mode such as 0640") from None
        if mode & ~0o777 or mode & 0o002:
            raise ValueError("must be a file mode no wider than 0775 and not world-writable")
        return value

    @model_validator(mode="after")
    def _unique_columns(self) -> Profile:
        labels = [c.label for c in self.columns]
        if len(set(labels)) != len(labels):
            raise ValueError("columns lists the same table.column twice")
        return self

    @property
    def env_path(self) -> Path:
        return self.env_file or self.panel_root / "config" / ".env"

    @property
    def env_display(self) -> str:
        """The .env path as people know it: relative to the panel root when inside it."""
        try:
            return str(self.env_path.relative_to(self.panel_root))
        except ValueError:
            return str(self.env_path)

    @property
    def mode(self) -> int:
        return int(self.env_mode, 8)

    @property
    def scheme(self) -> Scheme | None:
        return None if self.ciphertext == "auto" else Scheme.parse(self.ciphertext)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; errors name the file and the bad field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"panel profile {path} does not exist") from None
    except OSError as exc:
        raise ProfileError(f"cannot read panel profile {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"panel profile {path} is not valid TOML: {exc}") from exc
    return profile_from_dict(data, source=str(path))


def profile_from_dict(data: dict[str, object], source: str = "profile") -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg']}")
        raise ProfileError(f"{source} has bad settings: " + "; ".join(problems)) from None
