"""A complete panel to rotate, per test: ``config/.env``, a database, PHP-encrypted values.

``build_panel`` makes a tmp ``panel_root`` with a realistic ``.env``, a fresh
database (with its own MariaDB login, so ``DB_PASSWORD`` is a real secret),
fixture values in the six encrypted columns encrypted *by PHP*, a panel
profile for the engine, and optionally the reference panel serving it
(``bot.fakes.panel``, served by its ``ctl.py``). The original plaintexts stay on the object,
so ``php_check_all`` can ask PHP whether every value still opens under the key
in ``.env`` and gives back exactly what was stored.

Fixture values per column, by row id (1-based): id % 10 == 3 is NULL, == 6 an
encrypted empty string, == 8 a stored '' (no value, as a panel keeps a
cleared field); id 2 is non-ASCII, id 4 about 10 KB; the rest ``pw-<hex>``.
Values without a secret (NULL, '') must stay exactly as they are.

``seed_shape`` fills a database the way the seed's panel is shaped, for benchmarks:
all six columns in their four tables, about 10 % NULL, 10 % stored '', and about
a tenth of the values several kilobytes (an SSH private key), the rest short.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.fakes.panel import CTL as PANEL_CTL
from bot.fakes.panel import PANEL_COLUMNS
from bot.fakes.panel.ctl import parse_env
from bot.fakes.panel.database import PLAIN_FIELDS, plain_values
from bot.fakes.panel.files import env_text, profile_settings, to_toml
from bot.fakes.panel.server import PanelServer, free_port
from engine.cipher import Scheme
from tests.support.mariadb import TestDatabase, create_database
from tests.support.php_crypto import php_decrypt, php_encrypt
from tests.support.secrets_scan import REGISTRY, SecretRegistry

__all__ = [
    "PANEL_COLUMNS",
    "PANEL_CTL",
    "PanelSandbox",
    "build_panel",
    "failing_once",
    "free_port",
    "label",
    "to_toml",
]

NON_ASCII = "pässwörd-ünïcode-🔑"
LONG_LEN = 10_000
_KEY_LINE = re.compile(r"^(PANEL_ENCRYPTION_KEY=)(.*)$", re.MULTILINE)


def label(table: str, column: str, row_id: int) -> str:
    return f"{table}.{column}#{row_id}"


def fixture_value(row_id: int, blanks: bool = True) -> bytes | str | None:
    """The plaintext for a row (see module docstring); ``""`` (str) means a stored ''."""
    kind = row_id % 10
    if kind == 3:
        return None
    if kind == 6:
        return b""
    if kind == 8 and blanks:
        return ""
    if row_id == 2:
        return f"{NON_ASCII}-{secrets.token_hex(4)}".encode()
    if row_id == 4:
        return ("pw-long-" + secrets.token_hex(LONG_LEN // 2))[:LONG_LEN].encode()
    return f"pw-{secrets.token_hex(8)}".encode()


# --- profiles ------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``base``; nested mappings merge, ``None`` removes a key."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- the sandbox ---------------------------------------------------------------------------


@dataclass
class PanelSandbox:
    """One panel under test. Labels are ``"table.column#id"``."""

    root: Path
    panel_root: Path
    env_path: Path
    db: TestDatabase
    scheme: str
    initial_key: str = field(repr=False)
    license_key: str = field(repr=False)
    columns: tuple[tuple[str, str], ...]
    plaintexts: dict[str, bytes | None] = field(repr=False)
    """Per label, the secret the row holds, ``None`` when it holds none (NULL or '')."""
    no_value: dict[str, str | None] = field(repr=False)
    """For labels without a secret, what is stored (None or ''); it must stay so."""
    profile_base: dict[str, Any]
    profile_path: Path
    state_dir: Path
    port: int | None = None
    fpm: bool = False
    registry: SecretRegistry = field(default=REGISTRY, repr=False)
    _profiles_written: int = 0

    # --- files ---

    def write_profile(self, **overrides: Any) -> Path:
        """A new profile TOML: the sandbox's settings with ``overrides`` merged (None removes)."""
        self._profiles_written += 1
        path = self.root / f"profile-{self._profiles_written}.toml"
        if overrides.get("escrow_command") and "escrow" not in overrides:
            overrides["escrow"] = None  # an escrow command replaces the sandbox's escrow = "none"
        path.write_text(to_toml(deep_merge(self.profile_base, overrides)), encoding="utf-8")
        return path

    def env_key(self) -> str:
        """PANEL_ENCRYPTION_KEY as ``.env`` on disk holds it now."""
        return parse_env(self.env_path.read_text(encoding="utf-8"))["PANEL_ENCRYPTION_KEY"]

    def set_env_key(self, key_hex: str) -> None:
        """Rewrite the key's value in ``.env`` (as a person editing it would), nothing else."""
        self.registry.register_key(key_hex, "PANEL_ENCRYPTION_KEY (set by a test)")
        text = self.env_path.read_text(encoding="utf-8")
        self.env_path.write_text(_KEY_LINE.sub(lambda m: m.group(1) + key_hex, text, count=1))

    # --- the database ---

    def stored_values(self) -> dict[str, str | None]:
        """Every row of every present encrypted column, as stored now."""
        values: dict[str, str | None] = {}
        with self.db.connect() as conn, conn.cursor() as cur:
            for table, column in self.columns:
                cur.execute(f"SELECT id, `{column}` FROM `{table}` ORDER BY id")
                for row_id, stored in cur.fetchall():
                    values[label(table, column, row_id)] = stored
        return values

    def php_check_all(self, key_hex: str | None = None, scheme: str | None = None) -> list[str]:
        """PHP opens every stored value under ``key_hex`` (default: the key in ``.env`` now).

        Returns one line per mismatch, naming the label but never a plaintext;
        an empty list means every value gives back exactly its original plaintext
        and every row without a secret is unchanged.
        """
        key = key_hex or self.env_key()
        stored = self.stored_values()
        problems = [f"{lbl}: row is gone" for lbl in self.plaintexts if lbl not in stored]
        problems += [f"{lbl}: row the fixtures did not write" for lbl in stored.keys()
                     - self.plaintexts.keys()]
        secret_labels = [lbl for lbl, p in self.plaintexts.items() if p is not None and lbl in stored]
        for lbl, p in self.plaintexts.items():
            if p is None and lbl in stored and stored[lbl] != self.no_value[lbl]:
                problems.append(f"{lbl}: held no secret, now holds {_shape(stored[lbl])}")
        to_open = [stored[lbl] for lbl in secret_labels]
        opened = php_decrypt(scheme or self.scheme, key, to_open) if to_open else []
        for lbl, value, plain in zip(secret_labels, to_open, opened, strict=True):
            if value is None or value == "":
                problems.append(f"{lbl}: secret lost, now {_shape(value)}")
            elif plain is False:
                problems.append(f"{lbl}: does not decrypt with the key")
            elif plain != self.plaintexts[lbl]:
                problems.append(f"{lbl}: decrypts to a different plaintext")
        return sorted(problems)

    # --- the reference panel (bot.fakes.panel.server) ---

    @property
    def server(self) -> PanelServer:
        return PanelServer(self.state_dir, self.port or 0)

    @property
    def verify_url(self) -> str | None:
        return None if self.port is None else self.server.verify_url

    @property
    def restart_command(self) -> list[str]:
        return self.server.restart_command

    def panel_ctl(self, action: str) -> None:
        """Run the reference panel's ``ctl.py <action>`` for this sandbox; raise on failure."""
        self.server.ctl(action)

    def start_panel(self) -> None:
        self.panel_ctl("start")

    def restart_panel(self) -> None:
        self.panel_ctl("restart")

    def _running(self) -> PanelServer:
        if self.port is None:
            raise RuntimeError("this sandbox runs no panel (build it with server=True)")
        return self.server

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: (HTTP status, JSON). Status 0 when nothing answers (e.g. mid-restart)."""
        return self._running().health()

    def credentials(self) -> dict[str, Any]:
        """``GET /credentials``: label -> plaintext, None (no value), False (does not open)."""
        return self._running().credentials()

    def save_credential(self, table: str, column: str, row_id: int, plaintext: str | None) -> None:
        """A user saving a password in the panel: the worker encrypts with the key it holds."""
        self.registry.register(plaintext, f"saved plaintext {label(table, column, row_id)}")
        self._running().save(table, column, row_id, plaintext)
        lbl = label(table, column, row_id)
        self.plaintexts[lbl] = None if plaintext is None else plaintext.encode()
        if plaintext is None:
            self.no_value[lbl] = None

    def stop(self) -> None:
        """Stop the reference panel, if one runs."""
        self.server.stop()

    def close(self) -> None:
        """Stop the panel and drop the database (the factory does this at teardown)."""
        try:
            self.stop()
        finally:
            self.db.drop()


def failing_once(directory: Path) -> list[str]:
    """A panel check that fails the first time (after the switch), then passes (the rollback)."""
    marker = directory / "checked-once"
    script = directory / "panel-check.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then echo "200 OK"; exit 0; fi\n'
        f'touch "{marker}"\n'
        'echo "panel shows blank credentials" >&2\nexit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def _shape(value: str | None) -> str:
    """Describe a stored value without showing it."""
    return "NULL" if value is None else f"a {len(value)}-character value"


def _fill_tables(
    db: TestDatabase,
    scheme: str,
    key_hex: str,
    rows: Mapping[str, int],
    blanks: bool,
    shape: bool = False,
) -> tuple[dict[str, bytes | None], dict[str, str | None]]:
    """Insert the fixture rows; values are encrypted by PHP in one batch."""
    columns_of: dict[str, list[str]] = {}
    for table, column in PANEL_COLUMNS:
        if table in db.tables:
            columns_of.setdefault(table, []).append(column)
    wanted: dict[str, bytes | str | None] = {}
    rnd = random.Random(25)
    for table, columns in columns_of.items():
        for row_id in range(1, rows.get(table, 0) + 1):
            for column in columns:
                wanted[label(table, column, row_id)] = (
                    shape_value(row_id, rnd) if shape else fixture_value(row_id, blanks)
                )
    to_encrypt = [lbl for lbl, v in wanted.items() if isinstance(v, bytes)]
    encrypted = php_encrypt(scheme, key_hex, [wanted[lbl] for lbl in to_encrypt])  # type: ignore[misc]
    sealed = dict(zip(to_encrypt, encrypted, strict=True))
    stored = {lbl: sealed.get(lbl, v if v == "" else None) for lbl, v in wanted.items()}
    for table, columns in columns_of.items():
        db.insert_rows(
            table,
            ["id", *PLAIN_FIELDS[table], *columns],
            (
                [i, *plain_values(table, i), *(stored[label(table, c, i)] for c in columns)]
                for i in range(1, rows.get(table, 0) + 1)
            ),
        )
    plaintexts = {lbl: v if isinstance(v, bytes) else None for lbl, v in wanted.items()}
    no_value = {lbl: stored[lbl] for lbl, v in wanted.items() if not isinstance(v, bytes)}
    return plaintexts, no_value


def build_panel(
    root: Path,
    *,
    scheme: str = "iv12_tag_ct/hex",
    rows: int | Mapping[str, int] = 10,
    missing_tables: tuple[str, ...] = (),
    server: bool = False,
    fpm: bool = False,
    blanks: bool = True,
    shape: bool = False,
    key_hex: str | None = None,
    registry: SecretRegistry = REGISTRY,
    worker_user: str | None = None,
) -> PanelSandbox:
    """Build a panel under ``root`` (an empty tmp dir).

    ``rows``: rows per table (an int for all four, or ``{table: n}``; tables
    left out get none). ``missing_tables``: tables that do not exist at all.
    ``shape``: values in the seed's shape (``shape_value``: NULL, '', a tenth multi-KB
    keys) instead of the fixture values. ``server``: run the reference panel (``fpm``: php-fpm behind nginx, else
    ``php -S``; ``worker_user``: php-fpm's workers run as that user, as production's
    run as ``www-data``). Every secret made here is registered with ``registry``.
    """
    Scheme.parse(scheme)
    key = key_hex or secrets.token_hex(32)
    license_key = f"MYO-{secrets.token_hex(6).upper()}-{secrets.token_hex(6).upper()}"
    per_table = (
        dict.fromkeys({t for t, _ in PANEL_COLUMNS}, rows) if isinstance(rows, int) else dict(rows)
    )
    registry.register_key(key)
    registry.register(license_key, "PANEL_LICENSE_KEY")
    db = create_database(exclude_tables=missing_tables, own_user=True)
    try:
        registry.register(db.password, "DB_PASSWORD")
        plaintexts, no_value = _fill_tables(db, scheme, key, per_table, blanks, shape)
        registry.register_many((p, f"fixture plaintext {lbl}") for lbl, p in plaintexts.items())
        port = free_port() if server else None
        panel_root = root / "panel"
        (panel_root / "config").mkdir(parents=True)
        env_path = panel_root / "config" / ".env"
        env_path.write_text(env_text(db, key, license_key, port), encoding="utf-8")
        env_path.chmod(0o640)
        db.env_path = env_path  # the login's password is the one .env holds
        state_dir = root / "panel-ctl"
        state_dir.mkdir()
        sandbox = PanelSandbox(
            root=root,
            panel_root=panel_root,
            env_path=env_path,
            db=db,
            scheme=scheme,
            initial_key=key,
            license_key=license_key,
            columns=tuple(c for c in PANEL_COLUMNS if c[0] in db.tables),
            plaintexts=plaintexts,
            no_value=no_value,
            profile_base={},
            profile_path=root / "profile.toml",
            state_dir=state_dir,
            port=port,
            fpm=fpm,
            registry=registry,
        )
        sandbox.profile_base = profile_settings(
            "sandbox", panel_root, root / "journal", sandbox.server if server else None
        )
        if server:
            sandbox.server.configure(env_path, scheme, fpm=fpm, worker_user=worker_user)
        sandbox.profile_path.write_text(to_toml(sandbox.profile_base), encoding="utf-8")
        if server:
            sandbox.start_panel()
    except BaseException:
        with contextlib.suppress(Exception):
            PanelServer(root / "panel-ctl", 0).stop()
        db.drop()
        raise
    return sandbox


# --- the seed's shape, for benchmarks ---------------------------------------------------------

#: Encrypted values per row of the four tables together (1 + 1 + 2 + 2 columns, 80 % hold a value).
VALUES_PER_ROW = 6 * 0.8
SHAPE_TABLES = ("oscam_installs", "saved_servers", "email_settings", "email_configurations")


def shape_value(row_id: int, rnd: random.Random) -> bytes | str | None:
    """The plaintext of a row in the seed's shape: id % 10 == 3 NULL, == 8 a stored '',
    == 4 an SSH private key of 2-4 KB (1 in 8 of the values), else a short password."""
    kind = row_id % 10
    if kind == 3:
        return None
    if kind == 8:
        return ""
    if kind == 4:
        body = base64.encodebytes(rnd.randbytes(rnd.randint(1500, 3000))).decode()
        return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}-----END OPENSSH PRIVATE KEY-----\n".encode()
    return f"pw-{rnd.getrandbits(64):016x}".encode()


@dataclass
class Shape:
    """What ``seed_shape`` stored."""

    rows: int
    values: dict[str, int]
    stored_bytes: int
    long_values: int
    null_cells: int
    empty_cells: int

    @property
    def total(self) -> int:
        return sum(self.values.values())

    def describe(self) -> str:
        cells = self.rows * 6
        return (
            f"{self.total:,} values in 6 columns of 4 tables ({self.rows:,} rows each): "
            f"{self.null_cells / cells:.0%} NULL, {self.empty_cells / cells:.0%} empty, "
            f"{self.long_values / self.total:.0%} of the values 2-4 KB; "
            f"{self.stored_bytes / 1e6:,.1f} MB stored"
        )


def seed_shape(connect: Callable[[], Any], key_hex: str, scheme: str, values: int, seed: int = 25) -> Shape:
    """Fill the four tables (already created, empty) with about ``values`` encrypted values in
    the seed's shape, sealed under ``key_hex`` by the engine's codec (fast; PHP opens the
    same layout, as tests/engine/test_cipher.py proves). ``connect`` gives a PyMySQL
    connection to the database."""
    from bot.fakes.panel import PANEL_COLUMNS
    from engine.cipher import Codec

    codec = Codec(Scheme.parse(scheme), key_hex)
    rnd = random.Random(seed)
    rows = max(1, round(values / VALUES_PER_ROW))
    columns_of: dict[str, list[str]] = {}
    for table, column in PANEL_COLUMNS:
        columns_of.setdefault(table, []).append(column)
    shape = Shape(rows, {}, 0, 0, 0, 0)
    with contextlib.closing(connect()) as conn:
        for table in SHAPE_TABLES:
            columns = columns_of[table]
            names = ", ".join(f"`{c}`" for c in ("id", *PLAIN_FIELDS[table], *columns))
            marks = ", ".join(["%s"] * (1 + len(PLAIN_FIELDS[table]) + len(columns)))
            sql = f"INSERT INTO `{table}` ({names}) VALUES ({marks})"
            for start in range(1, rows + 1, 2000):
                batch = []
                for row_id in range(start, min(rows, start + 1999) + 1):
                    cells: list[Any] = []
                    for column in columns:
                        plain = shape_value(row_id, rnd)
                        if plain is None:
                            shape.null_cells += 1
                            cells.append(None)
                        elif plain == "":
                            shape.empty_cells += 1
                            cells.append("")
                        else:
                            sealed = codec.seal(plain)  # type: ignore[arg-type]
                            label_ = f"{table}.{column}"
                            shape.values[label_] = shape.values.get(label_, 0) + 1
                            shape.stored_bytes += len(sealed)
                            shape.long_values += len(plain) > 1000
                            cells.append(sealed)
                    batch.append([row_id, *plain_values(table, row_id), *cells])
                with conn.cursor() as cur:
                    cur.executemany(sql, batch)
                conn.commit()
    return shape
