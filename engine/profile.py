"""The panel profile: what we cannot know about a MyOsicam panel, in TOML.

Every setting has a documented default matching a stock panel; ``probe``
checks the profile against the live panel. Validation errors name the field.

Plain Python (engine.settings_schema), not pydantic: the engine is an SSH forced
command and pydantic's import and model building were 120-250 ms of its start-up.
No ``from __future__ import annotations`` here: the settings classes read their
annotations when first used, and evaluating them from strings cost ~3 ms a run.
"""

import re
import shlex
import string
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from engine.cipher import Scheme
from engine.errors import ProfileError
from engine.settings_schema import Before, Check, Match, MinLen, Range, Settings, SettingsError, setting

DEFAULT_COLUMNS: tuple[str, ...] = (
    "oscam_installs.webif_password",
    "saved_servers.ssh_credential_encrypted",
    "email_settings.smtp_password",
    "email_settings.mailgun_api_key",
    "email_configurations.smtp_password",
    "email_configurations.mailgun_api_key",
)
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: ``restart_command = "auto"`` as stored: resolved on the host (engine.restart).
AUTO_RESTART = ["auto"]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
Ident = Annotated[str, Match(_IDENT, "an SQL name: a letter or _, then letters, digits or _ (64 at most)")]
Port = Annotated[int, Range(ge=1, le=65535)]
Seconds = Annotated[float, Range(gt=0)]
Argv = Annotated[list[str], MinLen(1)]


class ColumnSpec(Settings):
    table: Ident
    column: Ident
    primary_key: Ident = "id"

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


class DatabaseSettings(Settings):
    """Explicit connection settings; any left out are read from ``.env``."""

    host: str | None = None
    port: Port | None = None
    name: str | None = None
    user: str | None = None
    password: str | None = setting(default=None, repr=False)
    unix_socket: str | None = None
    env_keys: dict[str, str] = setting(
        default_factory=lambda: {
            "host": "DB_HOST",
            "port": "DB_PORT",
            "name": "DB_DATABASE",
            "user": "DB_USERNAME",
            "password": "DB_PASSWORD",
        }
    )
    connect_timeout_s: Seconds = 10.0




def check_bootstrap_template(template: str, placeholders: tuple[str, ...]) -> str:
    """Refuse a template whose placeholders the shell-quoting cannot protect.

    Each placeholder is replaced by a shell-quoted word. Inside quotes written in
    the template (``--name "{agent_name}"``) that word's own quotes lose their
    meaning and an agent name from the database could run commands; a conversion
    or format spec (``{agent_name!r}``) would change the quoted word. Both are
    refused with the place named.
    """
    hint = ", ".join("{" + p + "}" for p in placeholders)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc})") from None
    quote: str | None = None
    escaped = False
    for literal, field_name, spec, conversion in parts:
        for char in literal:
            if escaped:
                escaped = False
            elif char == "\\" and quote != "'":
                escaped = True
            elif quote is None and char in "'\"`":
                quote = char
            elif char == quote:
                quote = None
        if field_name is None:
            continue
        if field_name not in placeholders:
            raise ValueError(f"unknown placeholder {field_name!r}; use {hint}")
        if spec or conversion:
            raise ValueError(f"write the placeholder as {{{field_name}}}, without a conversion or format spec")
        if quote is not None or escaped:
            raise ValueError(
                f"puts {{{field_name}}} inside quotes; placeholders are shell-quoted when filled in, "
                f"so write {{{field_name}}} without quotes around it (quoting it again would let a "
                "value from the panel's database run commands on the agent server)"
            )
    return template


def _a_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def _bootstrap_template(value: str) -> str:
    return check_bootstrap_template(value, AgentSettings.PLACEHOLDERS)


Regex = Annotated[str, Check(_a_regex)]
HttpUrl = Annotated[str, Check(_http_url)]
BootstrapTemplate = Annotated[str, Check(_bootstrap_template)]


class AgentSettings(Settings):
    """Agent token rotation (docs/architecture.md §5); defaults match the reference panel.

    Every setting is explained in deploy/panel-profile.example.toml (``[agents]``)
    and the panel's side of the bargain in docs/agents-contract.md.

    * ``install_token_provider``: ``sql`` (the engine makes a random single-use
      token and stores only its SHA-256, the agent's id, an expiry and a used
      mark in ``install_token_table``, whose column names are configurable) or
      ``command`` (``install_token_command`` runs on the panel host with
      ``ROTATOR_AGENT_ID``/``ROTATOR_AGENT_NAME`` in its environment and prints a
      fresh token; ``install_token_revoke_command``, if set, gets a token on stdin
      and revokes it).
    * ``bootstrap_command``: a shell command run on the agent server; placeholders
      ``{panel_url}``, ``{agent_id}``, ``{agent_name}`` are shell-quoted, so a
      template that puts one inside quotes is refused. The install token goes to
      its stdin, never on its command line.
    * ``ssh_source``: ``panel`` (host, port, user and the encrypted credential from
      the panel's ``server_table``) or ``inventory`` (entries keyed by agent name,
      server name or server host). Host keys are always pinned by ``known_hosts``.
    * ``reregister_check_command``: without it, an agent has re-registered once its
      row holds a new token and a heartbeat moved ``last_seen`` after the engine saw
      that token; with it, once the command (new token on stdin) exits 0.
    * ``old_token_check``: ``heartbeat`` signs a heartbeat with the new token (which
      the panel must accept) and with the old one (which it must refuse);
      ``command`` asks ``old_token_check_command`` the same two questions, token on
      stdin (exit 0 accepted, 1 refused, anything else: cannot tell); ``none``
      checks the database only.
    """

    class InventoryEntry(Settings):
        """How to reach one agent server when ``ssh_source = "inventory"``."""

        host: str
        port: Port = 22
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
    agent_name_pattern: Regex | None = None  # opt-in: refuse agents whose name does not match
    all_name_pattern: Regex | None = None
    all_filter_column: Ident | None = None
    all_filter_value: str | int | bool | None = None
    install_token_provider: Literal["sql", "command"] = "sql"
    install_token_table: Ident = "agent_install_tokens"
    install_token_agent_column: Ident = "agent_id"
    install_token_hash_column: Ident = "token_sha256"
    install_token_expires_column: Ident = "expires_at"
    install_token_used_column: Ident = "used_at"
    install_token_command: list[str] | None = None
    install_token_revoke_command: list[str] | None = None
    install_token_ttl_s: Annotated[int, Range(gt=0)] = 900
    panel_url: HttpUrl = "http://127.0.0.1"
    heartbeat_url: HttpUrl | None = None
    old_token_check: Literal["heartbeat", "command", "none"] = "heartbeat"
    old_token_check_command: list[str] | None = None
    reregister_check_command: list[str] | None = None
    bootstrap_command: BootstrapTemplate = "myosicam-agent-bootstrap --panel {panel_url} --agent-id {agent_id}"
    bootstrap_timeout_s: Seconds = 120.0
    forward_bootstrap_output: bool = False
    reregister_timeout_s: Seconds = 120.0
    parallelism: Annotated[int, Range(ge=1, le=64)] = 4
    ssh_source: Literal["panel", "inventory"] = "panel"
    server_table: Ident = "saved_servers"
    server_id_column: Ident = "id"
    server_name_column: Ident = "name"
    server_host_column: Ident = "host"
    server_port_column: Ident = "port"
    server_user_column: Ident = "ssh_user"
    server_credential_column: Ident = "ssh_credential_encrypted"
    known_hosts: Path | None = None
    inventory: dict[str, InventoryEntry] = setting(default_factory=dict)
    ssh_timeout_s: Seconds = 10.0
    check_timeout_s: Seconds = 30.0

    def _cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.install_token_provider == "command" and not self.install_token_command:
            yield "install_token_command", 'install_token_provider = "command" needs install_token_command'
        if self.old_token_check == "command" and not self.old_token_check_command:
            yield "old_token_check_command", 'old_token_check = "command" needs old_token_check_command'
        if (self.all_filter_column is None) != (self.all_filter_value is None):
            missing = "all_filter_value" if self.all_filter_value is None else "all_filter_column"
            yield missing, "all_filter_column and all_filter_value go together: give both or neither"

    @property
    def check_url(self) -> str:
        return self.heartbeat_url or self.panel_url.rstrip("/") + "/agents/heartbeat"


def _column_from_string(value: object) -> object:
    """``"table.column"`` is short for ``{table = "table", column = "column"}``."""
    if isinstance(value, str):
        table, dot, column = value.partition(".")
        if not dot:
            raise ValueError(f"column {value!r} must be written table.column")
        return {"table": table, "column": column}
    return value


def _known_scheme(value: str) -> str:
    if value != "auto":
        Scheme.parse(value)
    return value


def _octal_mode(value: str) -> str:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError("must be an octal mode such as 0640") from None
    if mode & ~0o777 or mode & 0o002:
        raise ValueError("must be a file mode no wider than 0775 and not world-writable")
    return value


def _auto_restart(value: object) -> object:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError('must be an argv list such as ["systemctl", "restart", "php8.3-fpm"], or "auto"')
        return list(AUTO_RESTART)
    return value


def _default_columns() -> list[ColumnSpec]:
    return [ColumnSpec(table=c.split(".")[0], column=c.split(".")[1]) for c in DEFAULT_COLUMNS]


class Profile(Settings):
    #: the file this profile was read from (set by load_profile), for the commands the engine
    #: tells people to run; not a setting (a ``_`` name), and ``replace`` keeps it
    _source = ""

    name: str = "panel"
    panel_root: Path
    env_file: Path | None = None
    key_name: str = "PANEL_ENCRYPTION_KEY"
    database: DatabaseSettings = setting(default_factory=DatabaseSettings)
    columns: list[Annotated[ColumnSpec, Before(_column_from_string)]] = setting(default_factory=_default_columns)
    ciphertext: Annotated[str, Check(_known_scheme)] = "auto"
    #: An argv list, or ``"auto"`` (kept as ``AUTO_RESTART``): the one php*-fpm unit, found
    #: on the host by engine.restart, which also checks the target exists before a run.
    restart_command: Annotated[Argv, Before(_auto_restart)] = setting(
        default_factory=lambda: ["systemctl", "restart", "php8.3-fpm"]
    )
    restart_timeout_s: Seconds = 60.0
    #: The restart split in two, so the commit lands while no worker runs (DESIGN.md
    #: section 4). Unset, they are derived from ``systemctl restart UNIT``;
    #: ``restart_split = false`` keeps the one restart command.
    restart_stop_command: Argv | None = None
    restart_start_command: Argv | None = None
    restart_split: bool = True
    verify_url: str | None = None
    verify_command: list[str] | None = None
    verify_timeout_s: Seconds = 15.0
    #: Where each new key goes before any row is written with it (DESIGN.md §4 rule 1): an
    #: ``escrow_command``, or ``escrow = "none"`` said out loud. Saying nothing is a settings
    #: error, so a rotation never runs without escrow by accident (issue 22).
    escrow: Literal["command", "none"] | None = None
    escrow_command: list[str] | None = None
    escrow_label: str = "escrow"
    #: Escrow for rotate-db-password (the password on stdin, ROTATOR_SECRET=DB_PASSWORD). Its own
    #: setting: the key's escrow_command would store the password where the key is kept.
    db_password_escrow_command: list[str] | None = None
    backup_command: list[str] | None = None
    hook_timeout_s: Seconds = 300.0
    #: What the team's hooks (escrow, backup, verify) need beyond the allow-list: names passed
    #: through from the engine's own environment, and a root-only ``NAME=value`` file
    #: (engine.hooks.team_environment); never the engine's other variables.
    hook_environment: list[Annotated[str, Match(_ENV_NAME, "an environment variable name")]] = setting(
        default_factory=list
    )
    hook_env_file: Path | None = None
    #: ``.env`` keeps its owner, group and mode; ``env_mode``/``env_group`` are the hygiene a
    #: looser file is tightened to; only root or ``env_owner`` may own ``.env`` and its folder.
    env_owner: str = "www-data"
    env_group: str = "www-data"
    env_mode: Annotated[str, Check(_octal_mode)] = "0640"
    journal_dir: Path = Path("/var/lib/myosicam-rotator")
    #: per-run files (events/, done/, agents/done/) older than this are pruned after each run;
    #: runs.jsonl and the key history are kept (engine.journal_prune)
    journal_keep_days: Annotated[int, Range(ge=1, le=36500)] = 90
    batch_size: Annotated[int, Range(ge=1, le=100_000)] = 5000
    agents: AgentSettings = setting(default_factory=AgentSettings)

    def _cross_checks(self) -> Iterator[tuple[str, str]]:
        if (self.restart_stop_command is None) != (self.restart_start_command is None):
            missing = "restart_start_command" if self.restart_start_command is None else "restart_stop_command"
            yield missing, "restart_stop_command and restart_start_command go together: give both or neither"
        yield from self._escrow_checks()
        labels = [c.label for c in self.columns]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            yield "columns", f"lists the same table.column twice ({', '.join(twice)})"

    def _escrow_checks(self) -> Iterator[tuple[str, str]]:
        if self.escrow is None and not self.escrow_command:
            yield "escrow", (
                "say where each new key is escrowed before it is used: set escrow_command (recipes "
                'for Vault, 1Password, Bitwarden, AWS and age/gpg in deploy/escrow/), or escrow = "none" '
                "to rotate without escrow (the card and the summary then say so)"
            )
        elif self.escrow == "none" and self.escrow_command:
            yield "escrow", 'escrow = "none" contradicts escrow_command: keep one of the two'
        elif self.escrow == "command" and not self.escrow_command:
            yield "escrow_command", 'escrow = "command" needs escrow_command'

    @property
    def escrow_description(self) -> str:
        """How the new key is escrowed, as the card, the step and the summary say it."""
        if self.escrow_command:
            return f"escrowed ({self.escrow_label})"
        return 'no escrow (escrow = "none" in the profile)'

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
    def restart_halves(self) -> tuple[list[str], list[str]] | None:
        """(stop, start) when the restart is split, else ``None`` (one restart command)."""
        if not self.restart_split:
            return None
        if self.restart_stop_command and self.restart_start_command:
            return self.restart_stop_command, self.restart_start_command
        command = self.restart_command
        if isinstance(command, list) and len(command) == 3 and Path(command[0]).name == "systemctl" \
                and command[1] == "restart":
            return [command[0], "stop", command[2]], [command[0], "start", command[2]]
        return None

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
    profile = profile_from_dict(data, source=str(path))
    object.__setattr__(profile, "_source", str(path))  # frozen for settings, not for this note
    return profile


def profile_from_dict(data: dict[str, Any], source: str = "profile") -> Profile:
    try:
        return Profile(**data)
    except SettingsError as exc:
        problems = [f"{where}: {message}" for where, message in exc.described()]
        raise ProfileError(f"{source} has bad settings: " + "; ".join(problems)) from None


#: the profile that deploy/setup-panel-host.sh's ``myosicam-rotator`` command reads by default
DEFAULT_PROFILE = "/etc/myosicam-rotator/panel.toml"


def engine_command(profile: Profile, *args: str) -> str:
    """The engine command line for this panel, as an operator types it on the panel host.

    ``myosicam-rotator`` is the command setup-panel-host.sh puts on the PATH (the engine's
    virtualenv, ``-I``, the default profile): Debian's ``python3`` has no engine module.
    """
    where = shlex.quote(profile._source) if profile._source else "<profile>"
    profile_args = [] if profile._source == DEFAULT_PROFILE else ["--profile", where]
    return " ".join(["sudo myosicam-rotator", *profile_args, *args])
