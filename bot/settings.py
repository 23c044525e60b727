"""The bot's settings: Slack credentials from the environment, the rest from a TOML file.

Environment: ``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``
(Socket Mode; optional), ``SLACK_API_URL`` (default Slack's) and
``ROTATOR_CONFIG``, the path of a TOML file such as::

    channels = ["C0123ROTATE"]          # where requests are made and cards posted
    requesters = ["S0SECOPS", "U0ALICE"] # user ids and/or user-group ids; empty: anyone
    approvers = ["S0ONCALL"]             # required; never the requester
    approvals_required = 1
    expiry_minutes = 30
    store = "sqlite:///var/lib/rotator/rotator.db"  # default: rotator.db beside this file;
                                         # "sqlite://name.db" is relative to this file;
                                         # or "mysql://user:pw@host:3306/db" for replicas
    http_address = "127.0.0.1"
    http_max_body_bytes = 1048576        # HTTP mode: larger bodies get 413, unread
    http_request_timeout_seconds = 10    # a request must arrive whole within this
    http_idle_timeout_seconds = 30       # idle keep-alive connections are closed
    http_max_connections = 200           # connections beyond this wait to be accepted
    max_pending_per_user = 5             # pending requests one person may have open
    group_cache_max_age_minutes = 15     # how long cached user-group members are
                                         # trusted while Slack cannot list them
    step_up = "totp"                     # approvers also type a TOTP code ("none": off);
                                         # a panel's own step_up overrides this
    enroll_admins = ["S0SECOPS"]         # who may /rotate-enroll reset @user
    step_up_max_failures = 5             # wrong codes per approver within the window,
    step_up_window_minutes = 15          # then no code is checked until one ages out
    step_up_enrollment_approval = true   # a new enrollment approves nothing until an
                                         # enroll admin (not its owner) approves it in
                                         # Slack; false: its owner's first code is enough
    max_key_age_days = 365               # remind to rotate a key or agent token older
                                         # than this (the vendor says "annually")
    reminder_interval_days = 7           # one reminder per panel and secret per interval
    reminder_check_minutes = 60          # how often the bot looks at the ages

    fleet_concurrency = 4                # panels a fleet request runs at once
    stop_on_failure = false              # a failed panel stops the fleet's queued panels

    [max_key_age_days_by_panel]          # per panel, instead of max_key_age_days
    prod-eu = 90

    [offboard_reach]                     # /rotate-offboard: panels (or tag:NAME) a person
    U0ERIN = ["tag:eu", "prod-us-1"]     # could reach; not listed: every panel

    [panels.prod-eu]                     # an engine reached over SSH (bot.inventory)
    host = "prod-eu.example.net"
    tags = ["prod", "eu"]                # /rotate-key --tag prod
    user = "rotator"
    key_file = "/etc/myosicam-rotator-bot/id_ed25519"
    known_hosts = "/etc/myosicam-rotator-bot/known_hosts"

    [local_panels.lab]                   # an engine on this host, run as a subprocess
    profile = "/etc/myosicam/panel.toml"
    step_up = "none"                     # this panel only

With step-up on anywhere, ``ROTATOR_ENROLLMENT_KEY_FILE`` (``bot.enrollment_key``)
names the key that seals the approvers' TOTP secrets in the store.

A missing or bad setting raises ``SettingsError`` naming it; no message ever
repeats a value, so a secret cannot leak through an error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import SettingsError
from bot.inventory import Inventory, check_tags
from bot.secret_files import refuse_loose_config
from handlers.access import AccessPolicy

if TYPE_CHECKING:
    from bot.wsgi import HttpLimits

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_STORE = "sqlite://rotator.db"
_ID = r"^(T[A-Z0-9]{2,}/)?[UWS][A-Z0-9]{2,}$"
_CHANNEL = r"^[CGD][A-Z0-9]{2,}$"
_PANEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SlackEnvironment(BaseSettings):
    """What comes from the environment (the secrets, and where the rest lives)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    slack_bot_token: SecretStr
    slack_signing_secret: SecretStr
    slack_app_token: SecretStr | None = None
    slack_api_url: str = DEFAULT_API_URL
    rotator_config: Path

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token (it starts with xoxb-)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (it starts with xapp-)")
        return value

    @field_validator("slack_signing_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("is too short to be a Slack signing secret")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://slack.com/api/")
        return value if value.endswith("/") else value + "/"


class LocalPanel(BaseModel):
    """A panel whose engine runs on this host (``python -m engine --profile P serve``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Path
    host: str = "localhost"
    step_up: Literal["none", "totp"] | None = None
    tags: tuple[str, ...] = ()

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_tags(value)


class RotatorConfig(BaseModel):
    """The TOML file named by ``ROTATOR_CONFIG``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[str] = Field(default_factory=list)
    requesters: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(min_length=1)
    approvals_required: int = Field(default=1, ge=1, le=10)
    expiry_minutes: float = Field(default=30.0, gt=0, le=7 * 24 * 60)
    store: SecretStr = SecretStr(DEFAULT_STORE)
    http_address: str = "127.0.0.1"
    http_port: int = Field(default=3000, ge=1, le=65535)
    panels: Inventory = Field(default_factory=Inventory)
    local_panels: dict[str, LocalPanel] = Field(default_factory=dict)
    worker_threads: int = Field(default=4, ge=1, le=256)
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    http_request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_idle_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    http_max_connections: int = Field(default=200, ge=1, le=10_000)
    http_threads: int = Field(default=8, ge=1, le=256)
    max_pending_per_user: int = Field(default=5, ge=1, le=1000)
    group_cache_max_age_minutes: float = Field(default=15.0, gt=0, le=7 * 24 * 60)
    max_key_age_days: float = Field(default=365.0, gt=0, le=100 * 365)
    max_key_age_days_by_panel: dict[str, float] = Field(default_factory=dict)
    reminder_interval_days: float = Field(default=7.0, gt=0, le=365)
    reminder_check_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)

    @field_validator("max_key_age_days_by_panel")
    @classmethod
    def _ages(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 < days <= 100 * 365 for days in value.values()):
            raise ValueError("each panel's age is a number of days above 0")
        return value
    step_up: Literal["none", "totp"] = "none"
    enroll_admins: list[str] = Field(default_factory=list)
    step_up_max_failures: int = Field(default=5, ge=1, le=100)
    step_up_window_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    #: a new TOTP enrollment needs an enroll admin's approval (a second person) before it counts
    step_up_enrollment_approval: bool = True
    fleet_concurrency: int = Field(default=4, ge=1, le=64)
    stop_on_failure: bool = False
    #: ``/rotate-offboard``: the panels (names, or ``tag:NAME``) each person could reach;
    #: a person not listed could reach every panel
    offboard_reach: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("offboard_reach")
    @classmethod
    def _reach(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        import re

        for user, entries in value.items():
            if not re.match(r"^[UW][A-Z0-9]{2,}$", user):
                raise ValueError("keys are Slack user ids (U…/W…), not names")
            if not entries:
                raise ValueError("each person names at least one panel or tag:NAME")
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("panels", mode="before")
    @classmethod
    def _inventory(cls, value: object) -> object:
        if isinstance(value, dict) and "panels" not in value:
            return {"panels": value}
        return value

    @field_validator("channels")
    @classmethod
    def _channel_ids(cls, value: list[str]) -> list[str]:
        import re

        for item in value:
            if not re.match(_CHANNEL, item):
                raise ValueError("channel ids look like C0123ABCD (not #names)")
        return value

    @field_validator("requesters", "approvers", "enroll_admins")
    @classmethod
    def _user_or_group_ids(cls, value: list[str]) -> list[str]:
        import re

        for item in value:
            if not re.match(_ID, item):
                raise ValueError(
                    "entries are Slack user ids (U…/W…), user-group ids (S…) or T…/U…, not names"
                )
        return value

    @field_validator("local_panels")
    @classmethod
    def _local_names(cls, value: dict[str, LocalPanel]) -> dict[str, LocalPanel]:
        import re

        for name in value:
            if not re.match(_PANEL_NAME, name):
                raise ValueError("panel names are letters, digits, dot, dash and underscore")
        return value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split(":", 1)[0]
        if scheme not in ("sqlite", "mysql", "mysql+pymysql"):
            raise ValueError("must start with sqlite:// or mysql://")
        return value


class Settings:
    """Environment + TOML, validated together; the one object the bot is built from."""

    def __init__(self, env: SlackEnvironment, config: RotatorConfig, config_path: Path) -> None:
        self.env = env
        self.config = config
        self.config_path = config_path
        overlap = set(config.panels.panels) & set(config.local_panels)
        if overlap:
            raise SettingsError(
                f"ROTATOR_CONFIG ({config_path}): panel {sorted(overlap)[0]!r} is in both "
                "[panels] and [local_panels]; give it one place"
            )
        unknown = set(config.max_key_age_days_by_panel) - set(self.panel_names)
        if unknown:
            raise SettingsError(
                f"ROTATOR_CONFIG ({config_path}): max_key_age_days_by_panel names "
                f"{sorted(unknown)[0]!r}, which is not a configured panel"
            )
        for user, entries in config.offboard_reach.items():
            for entry in entries:
                tag = entry.removeprefix("tag:")
                known = tag in self.known_tags if entry.startswith("tag:") else entry in self.panel_names
                if not known:
                    raise SettingsError(
                        f"ROTATOR_CONFIG ({config_path}): offboard_reach.{user} names {entry!r}, "
                        "which is not a configured panel or tag:NAME"
                    )
        if not self.panel_names:
            raise SettingsError(
                f"ROTATOR_CONFIG ({config_path}): no panels; add a [panels.<name>] "
                "or [local_panels.<name>] table"
            )

    # Slack
    @property
    def bot_token(self) -> str:
        return self.env.slack_bot_token.get_secret_value()

    @property
    def signing_secret(self) -> str:
        return self.env.slack_signing_secret.get_secret_value()

    @property
    def app_token(self) -> str | None:
        token = self.env.slack_app_token
        return token.get_secret_value() if token else None

    @property
    def api_url(self) -> str:
        return self.env.slack_api_url

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        values = [self.bot_token, self.signing_secret, self.app_token]
        password = urlsplit(self.store_url).password
        values.append(password)
        for entry in self.config.panels.panels.values():
            if entry.key_passphrase is not None:
                values.append(entry.key_passphrase.get_secret_value())
        return [v for v in values if v]

    # The rest
    @property
    def store_url(self) -> str:
        """The store URL; a relative SQLite path (``sqlite://name.db``) is resolved beside the
        config file, an absolute one is written ``sqlite:///var/lib/…``."""
        url = self.config.store.get_secret_value()
        if url.startswith("sqlite://"):
            path = Path(url[len("sqlite://") :])
            if not path.is_absolute():
                path = self.config_path.parent / path
            return f"sqlite://{path}"
        return url

    @property
    def store_url_redacted(self) -> str:
        parts = urlsplit(self.store_url)
        if parts.password is None:
            return self.store_url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def panel_names(self) -> list[str]:
        return sorted([*self.config.panels.panels, *self.config.local_panels])

    def panel_host(self, name: str) -> str:
        if name in self.config.panels:
            return self.config.panels.get(name).host
        local = self.config.local_panels.get(name)
        return local.host if local else name

    @property
    def panel_tags(self) -> dict[str, tuple[str, ...]]:
        """Panel name -> its tags (``[panels.NAME] tags = [...]``)."""
        tags = {name: local.tags for name, local in self.config.local_panels.items()}
        tags.update({name: entry.tags for name, entry in self.config.panels.panels.items()})
        return tags

    @property
    def known_tags(self) -> set[str]:
        return {tag for tags in self.panel_tags.values() for tag in tags}

    def max_key_age_s(self, panel: str) -> float:
        """How old ``panel``'s key and agent tokens may get before the bot reminds."""
        days = self.config.max_key_age_days_by_panel.get(panel, self.config.max_key_age_days)
        return days * 86400.0

    @property
    def step_up_panels(self) -> dict[str, bool]:
        """Panel name -> whether approving needs a TOTP code (its own setting, else the global)."""
        own: dict[str, str | None] = {
            name: local.step_up for name, local in self.config.local_panels.items()
        }
        own.update({name: entry.step_up for name, entry in self.config.panels.panels.items()})
        return {name: (own.get(name) or self.config.step_up) == "totp" for name in self.panel_names}

    @property
    def step_up_anywhere(self) -> bool:
        return any(self.step_up_panels.values())

    @property
    def http_limits(self) -> HttpLimits:
        from bot.wsgi import HttpLimits

        c = self.config
        return HttpLimits(
            max_body_bytes=c.http_max_body_bytes,
            request_timeout_s=c.http_request_timeout_seconds,
            idle_timeout_s=c.http_idle_timeout_seconds,
            max_connections=c.http_max_connections,
            threads=c.http_threads,
        )

    @property
    def policy(self) -> AccessPolicy:
        c = self.config
        return AccessPolicy(
            approvers=tuple(c.approvers),
            requesters=tuple(c.requesters),
            channels=tuple(c.channels),
            approvals_required=c.approvals_required,
            expiry_s=c.expiry_minutes * 60,
            max_pending_per_user=c.max_pending_per_user,
        )


def _describe(exc: ValidationError, where: str, upper: bool) -> str:
    """One line per problem, naming the setting; the offending value is never repeated."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "(file)"
        if upper:
            loc = loc.upper()
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        problems.append(f"{where}{loc}: {message}")
    return "; ".join(problems)


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML that ``ROTATOR_CONFIG`` names; a clear error for a missing, unreadable or bad file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"ROTATOR_CONFIG: file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"ROTATOR_CONFIG: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"ROTATOR_CONFIG ({path}): not valid TOML: {exc}") from None
    refuse_loose_config(path, raw)
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build ``Settings`` from ``environ`` (default ``os.environ``) and the TOML it names."""
    source = dict(os.environ if environ is None else environ)
    lowered = {
        k.lower(): v for k, v in source.items() if k.upper().startswith(("SLACK_", "ROTATOR_"))
    }
    try:
        env = SlackEnvironment.model_validate(lowered)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, "", upper=True)) from None
    path = env.rotator_config
    raw = read_config_file(path)
    try:
        config = RotatorConfig.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, f"ROTATOR_CONFIG ({path}): ", upper=False)) from None
    return Settings(env, config, path.resolve())
