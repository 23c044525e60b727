"""Single-use install tokens, from one of two providers the profile chooses.

* ``sql`` (default): the engine makes a random token (256 bits, URL-safe) and
  stores only its SHA-256 with the agent's id and an expiry (the database's
  UTC clock plus ``install_token_ttl_s``) in ``install_token_table``; the panel
  marks it used when an agent registers with it. Column names come from the
  profile (``install_token_*_column``); docs/agents-contract.md has the row. Revoking an unused one
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
import re
import secrets
from typing import Literal, Protocol

from engine.db import PanelDB
from engine.errors import AgentError
from engine.ops.agents import commands
from engine.ops.agents.rows import AgentRow
from engine.profile import AgentSettings

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
    """Rows of ``install_token_table``; the column names come from the profile."""

    name = "sql"

    def __init__(self, settings: AgentSettings) -> None:
        self.table = f"`{settings.install_token_table}`"
        self.agent = f"`{settings.install_token_agent_column}`"
        self.digest = f"`{settings.install_token_hash_column}`"
        self.expires = f"`{settings.install_token_expires_column}`"
        self.used = f"`{settings.install_token_used_column}`"
        self.ttl_s = settings.install_token_ttl_s

    def new(self, agent: AgentRow) -> str:
        return secrets.token_urlsafe(32)

    def activate(self, db: PanelDB, agent: AgentRow, token: str) -> None:
        """Store the token's hash (idempotent: a resumed run may activate it again)."""
        digest = sha256_hex(token)
        db.execute(
            f"INSERT INTO {self.table} ({self.agent}, {self.digest}, {self.expires}, {self.used}) "
            f"SELECT %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND, NULL FROM DUAL "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self.table} WHERE {self.digest} = %s)",
            (agent.id, digest, self.ttl_s, digest),
            doing="storing the install token",
        )
        db.commit()

    def state(self, db: PanelDB, token: str) -> TokenState:
        try:
            rows = db.query(
                f"SELECT {self.used} IS NOT NULL, {self.expires} > UTC_TIMESTAMP(6) FROM {self.table} "
                f"WHERE {self.digest} = %s",
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
            f"UPDATE {self.table} SET {self.expires} = UTC_TIMESTAMP(6) WHERE {self.digest} = %s "
            f"AND {self.used} IS NULL AND {self.expires} > UTC_TIMESTAMP(6)",
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

    def _run(self, what: str, argv: list[str], stdin: str, env: dict[str, str], secret: str = "") -> str:
        done = commands.run(what, argv, stdin=stdin, env=env, secrets_=[secret], timeout_s=COMMAND_TIMEOUT_S)
        if done.status != 0:
            raise AgentError(f"{what} failed (exit {done.status})" + (f": {done.said}" if done.said else ""))
        return done.stdout

    def new(self, agent: AgentRow) -> str:
        env = {"ROTATOR_AGENT_ID": str(agent.id), "ROTATOR_AGENT_NAME": agent.name}
        out = self._run("the install token command", self.issue_argv, "", env)
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
        self._run("the install token revoke command", self.revoke_argv, token + "\n", {}, token)
        return "revoked"


def provider(settings: AgentSettings) -> InstallTokens:
    if settings.install_token_provider == "command":
        return CommandInstallTokens(settings)
    return SqlInstallTokens(settings)
