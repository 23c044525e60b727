"""The demo's panel: a MariaDB database, ``config/.env``, the PHP reference panel, 50 credentials.

Built the way a real panel comes to hold its secrets: the installer writes
``.env`` with a random key, the panel starts, and its users save passwords
through it (``POST /credentials``), so the PHP panel itself encrypts every
value in its own layout. The plaintexts are random and never printed.

``DemoPanel.build(root)`` undoes what it did if it fails halfway;
``close()`` stops the panel and drops the database and its login.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.fakes.panel import PANEL_COLUMNS
from bot.fakes.panel.database import (
    PLAIN_FIELDS,
    PanelDatabase,
    create_database,
    drop_stale_databases,
    plain_values,
)
from bot.fakes.panel.files import env_text, profile_settings, to_toml
from bot.fakes.panel.server import PanelServer, free_port
from engine import envfile
from engine.cipher import new_key_hex
from engine.protocol import fingerprint

DB_PREFIX = "myosicam_demo_"
USER_PREFIX = "myosicam_demo_u_"
SCHEME = "iv12_tag_ct/hex"
#: Each saved credential is this prefix and 16 random URL-safe characters.
PLAINTEXT_PREFIX = "demo-pw-"
#: Rows per table; with two encrypted columns in the e-mail tables, 50 credentials in all.
ROWS: dict[str, int] = {
    "oscam_installs": 20,
    "saved_servers": 20,
    "email_settings": 1,
    "email_configurations": 4,
}


@dataclass
class DemoPanel:
    """The sandbox: where its files are, its database, the running panel, how many credentials."""

    root: Path
    db: PanelDatabase
    server: PanelServer
    env_path: Path
    profile_path: Path
    credentials: int

    @classmethod
    def build(cls, root: Path, *, check_fails_under_new_key: bool = False) -> DemoPanel:
        """The sandbox; ``check_fails_under_new_key`` gives the panel a check that fails after a switch."""
        drop_stale_databases(DB_PREFIX, USER_PREFIX)  # left by a demo that was killed
        db = create_database(DB_PREFIX, USER_PREFIX, own_user=True)
        server = PanelServer(root / "panel-ctl", free_port())
        try:
            return cls._fill(root, db, server, check_fails_under_new_key)
        except BaseException:
            with contextlib.suppress(Exception):
                server.stop()
            db.drop()
            raise

    @classmethod
    def _fill(
        cls, root: Path, db: PanelDatabase, server: PanelServer, check_fails_under_new_key: bool
    ) -> DemoPanel:
        _insert_rows(db)
        panel_root = root / "panel"
        (panel_root / "config").mkdir(parents=True)
        env_path = panel_root / "config" / ".env"
        license_key = f"MYO-DEMO-{secrets.token_hex(6).upper()}"
        env_path.write_text(env_text(db, new_key_hex(), license_key, server.port), encoding="utf-8")
        env_path.chmod(0o640)
        server.configure(env_path, SCHEME)
        server.start()
        saved = 0
        for table, column, row_id in _credential_cells():
            server.save(table, column, row_id, PLAINTEXT_PREFIX + secrets.token_urlsafe(12))
            saved += 1
        profile_path = root / "profile.toml"
        profile = profile_settings("demo", panel_root, root / "journal", server)
        if check_fails_under_new_key:
            profile["verify_command"] = failing_check(root, env_path)
        profile_path.write_text(to_toml(profile), encoding="utf-8")
        return cls(root, db, server, env_path, profile_path, saved)

    def key_fingerprint(self) -> str:
        """Fingerprint of PANEL_ENCRYPTION_KEY as ``.env`` holds it now (never the key)."""
        return fingerprint(envfile.read_key(self.env_path, "PANEL_ENCRYPTION_KEY"))

    def close(self) -> None:
        """Stop the panel, then drop the database and its login, whatever fails first."""
        try:
            self.server.stop()
        finally:
            self.db.drop()


def _insert_rows(db: PanelDatabase) -> None:
    """The panel's rows, credentials still empty (NULL): the panel's users fill them in."""
    with db.connect() as conn, conn.cursor() as cur:
        for table, count in ROWS.items():
            fields = ("id", *PLAIN_FIELDS[table])
            names = ", ".join(f"`{f}`" for f in fields)
            marks = ", ".join(["%s"] * len(fields))
            cur.executemany(
                f"INSERT INTO `{table}` ({names}) VALUES ({marks})",
                [(i, *plain_values(table, i)) for i in range(1, count + 1)],
            )


def _credential_cells() -> Iterator[tuple[str, str, int]]:
    for table, column in PANEL_COLUMNS:
        for row_id in range(1, ROWS.get(table, 0) + 1):
            yield table, column, row_id


#: The rollback scenario's panel check: it answers like a panel that breaks under any key but
#: the one it was installed with (a stale opcode cache, say). It compares fingerprints, so no
#: key is ever on its command line.
_CHECK = """\
import sys
from pathlib import Path

from engine import envfile
from engine.protocol import fingerprint

env_path, installed = sys.argv[1], sys.argv[2]
if fingerprint(envfile.read_key(Path(env_path), "PANEL_ENCRYPTION_KEY")) != installed:
    print("GET /login answered 500: the panel cannot start under the new key (simulated)", file=sys.stderr)
    sys.exit(1)
print("GET /login 200 OK")
"""


def failing_check(root: Path, env_path: Path) -> list[str]:
    """A ``verify_command`` that passes under the key ``.env`` holds now and fails under any other."""
    script = root / "panel-check.py"
    script.write_text(_CHECK, encoding="utf-8")
    installed = fingerprint(envfile.read_key(env_path, "PANEL_ENCRYPTION_KEY"))
    return [sys.executable, "-I", str(script), str(env_path), installed]
