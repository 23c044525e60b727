"""Single-use install tokens, from one of two providers the profile chooses.

* ``sql`` (default): the engine makes a random token (256 bits, URL-safe) and
  stores only its SHA-256 with ``agent_id`` and ``expires_at`` (the database's
  UTC clock plus ``install_token_ttl_s``) in ``install_token_table``; the panel
  marks it ``used_at`` when an agent registers with it. Revoking an unused one
  sets ``expires_at`` to now. ``new`` only makes the token: the caller journals
  it, then ``activate`` stores its hash, so a token is never usable before it is
  journaled.
* ``command``: ``install_token_command`` runs on the panel host and prints a
  fresh token (its last output line); the panel has stored it by then.
  ``install_token_revoke_command``, if given, revokes one read from stdin;
  without it an unused token lives until its own expiry.

Token values never reach an event, a log or an exception message.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
from typing import Literal, Protocol

from engine.agents.rows import AgentRow
from engine.db import PanelDB
from engine.errors import AgentError
from engine.profile import AgentSettings
from engine.protocol import redact

#: ``usable`` (stored, unused, unexpired), ``used``, ``expired``, ``absent`` (not stored),
#: ``unknown`` (the provider cannot tell).
TokenState = Literal["usable", "used", "expired", "absent", "unknown"]
#: After ``revoke``: ``revoked`` by us now, or why there was nothing to revoke.
RevokeState = Literal["revoked", "used", "expired", "absent", "not revocable"]
_PRINTABLE_TOKEN = re.compile(r"^[\x21-\x7e]{16,512}$")
COMMAND_TIMEOUT_S = 60.0


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InstallTokens(Protocol):
    name: str

    def new(self, agent: AgentRow) -> str: ...

    def activate(self, db: PanelDB, agent: AgentRow, token: str) -> None: ...

    def state(self, db: PanelDB, token: str) -> TokenState: ...

    def revoke(self, db: PanelDB, token: str) -> RevokeState: ...


class SqlInstallTokens:
    name = "sql"

    def __init__(self, settings: AgentSettings) -> None:
        self.table = settings.install_token_table
        self.ttl_s = settings.install_token_ttl_s

    def new(self, agent: AgentRow) -> str:
        return secrets.token_urlsafe(32)

    def activate(self, db: PanelDB, agent: AgentRow, token: str) -> None:
        """Store the token's hash (idempotent: a resumed run may activate it again)."""
        digest = sha256_hex(token)
        db.execute(
            f"INSERT INTO `{self.table}` (agent_id, token_sha256, expires_at, used_at) "
            f"SELECT %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND, NULL FROM DUAL "
            f"WHERE NOT EXISTS (SELECT 1 FROM `{self.table}` WHERE token_sha256 = %s)",
            (agent.id, digest, self.ttl_s, digest),
            doing="storing the install token",
        )
        db.commit()

    def state(self, db: PanelDB, token: str) -> TokenState:
        try:
            rows = db.query(
                f"SELECT used_at IS NOT NULL, expires_at > UTC_TIMESTAMP(6) FROM `{self.table}` "
                "WHERE token_sha256 = %s",
                (sha256_hex(token),),
                doing="reading the install token",
            )
        finally:
            db.rollback()
        if not rows:
            return "absent"
        used, alive = rows[0]
        if used:
            return "used"
        return "usable" if alive else "expired"

    def revoke(self, db: PanelDB, token: str) -> RevokeState:
        changed = db.execute(
            f"UPDATE `{self.table}` SET expires_at = UTC_TIMESTAMP(6) WHERE token_sha256 = %s "
            "AND used_at IS NULL AND expires_at > UTC_TIMESTAMP(6)",
            (sha256_hex(token),),
            doing="revoking the install token",
        )
        db.commit()
        if changed:
            return "revoked"
        found = self.state(db, token)
        if found == "used":
            return "used"
        return "absent" if found == "absent" else "expired"


class CommandInstallTokens:
    name = "command"

    def __init__(self, settings: AgentSettings) -> None:
        assert settings.install_token_command
        self.issue_argv = list(settings.install_token_command)
        self.revoke_argv = list(settings.install_token_revoke_command or [])

    def _run(
        self, what: str, argv: list[str], stdin: bytes, env: dict[str, str], secret: str = ""
    ) -> str:
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                env={**os.environ, **env},
                check=False,
            )
        except FileNotFoundError:
            raise AgentError(f"{what} failed: command {argv[0]!r} not found") from None
        except PermissionError:
            raise AgentError(f"{what} failed: command {argv[0]!r} is not executable") from None
        except subprocess.TimeoutExpired:
            raise AgentError(f"{what} did not finish within {COMMAND_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
            said = redact(lines[-1])[:200] if lines else ""
            if secret:
                said = said.replace(secret, "[install token]")
            raise AgentError(f"{what} failed (exit {proc.returncode})" + (f": {said}" if said else ""))
        return proc.stdout.decode(errors="replace")

    def new(self, agent: AgentRow) -> str:
        env = {"ROTATOR_AGENT_ID": str(agent.id), "ROTATOR_AGENT_NAME": agent.name}
        out = self._run("the install token command", self.issue_argv, b"", env)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        token = lines[-1] if lines else ""
        if not _PRINTABLE_TOKEN.match(token):
            raise AgentError(
                "the install token command printed no usable token "
                "(expected one line of 16 to 512 printable characters, no spaces)"
            )
        return token

    def activate(self, db: PanelDB, agent: AgentRow, token: str) -> None:
        """The panel stored it when the command made it."""

    def state(self, db: PanelDB, token: str) -> TokenState:
        return "unknown"

    def revoke(self, db: PanelDB, token: str) -> RevokeState:
        if not self.revoke_argv:
            return "not revocable"
        self._run("the install token revoke command", self.revoke_argv, (token + "\n").encode(), {}, token)
        return "revoked"


def provider(settings: AgentSettings) -> InstallTokens:
    if settings.install_token_provider == "command":
        return CommandInstallTokens(settings)
    return SqlInstallTokens(settings)
