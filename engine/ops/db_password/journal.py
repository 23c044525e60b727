"""The write-ahead journal of a database password rotation, beside the key's.

A record of its own (``db-password.json``), never mixed with the key journal
(``rotation.json``): the two rotations hold different secrets and converge
differently. It holds both passwords while the rotation is unfinished: the
engine reads its own database login from ``.env``, and after a crash the
journal is what tells ``recover`` which passwords to try. It names every account the
old password opened and the route to each (``engine/ops/db_password/accounts.py``), written before
any of them changes, so ``recover`` converges each one. Same rules as the
key journal: 0600 in the 0700 journal folder, fsynced, renamed into place;
when the rotation ends the passwords are dropped and only fingerprints stay
(``done/<id>.json``).

Files in ``journal_dir``::

    db-password.json           the unfinished rotation (both passwords inside), if any
    db-password-env.backup     the previous .env, 0600, until the rotation ends
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.journal import RecordFiles

STATES = (
    "PREFLIGHT",
    "STAGED",
    "DB_CHANGED",
    "ENV_WRITTEN",
    "RESTARTED",
    "VERIFIED",
    "BACKED_UP",
    "DONE",
    "ROLLING_BACK",
    "ROLLED_BACK",
)
#: From here on the server holds the new password: recovery finishes the rotation by default.
FORWARD_STATES = frozenset({"DB_CHANGED", "ENV_WRITTEN", "RESTARTED", "VERIFIED", "BACKED_UP", "DONE"})


@dataclass
class PasswordRecord:
    rotation_id: str
    state: str
    db_user: str
    db_host: str
    old_password: str = field(repr=False)
    new_password: str = field(repr=False)
    old_fingerprint: str
    new_fingerprint: str
    started_at: float
    op: str = "rotate-db-password"
    method: str | None = None
    requested_by: str | None = None
    approved_by: list[str] = field(default_factory=list)
    reason: str | None = None
    restarted: bool = False
    trail: list[str] = field(default_factory=list)
    #: every account the old password opened: {"account", "route" (the one to log in
    #: through), "routes"}; empty in a journal written before twin accounts were handled
    accounts: list[dict[str, Any]] = field(default_factory=list)
    #: every route tried before the change: {"route", "outcome", "account"}
    routes: list[dict[str, Any]] = field(default_factory=list)
    panel_route: dict[str, Any] | None = None
    #: per route, what the last verification saw (no secret)
    proven: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """Everything but the passwords."""
        data = asdict(self)
        data.pop("old_password")
        data.pop("new_password")
        return data


class PasswordJournal(RecordFiles[PasswordRecord]):
    record_type = PasswordRecord
    holds = "the database passwords"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.current = directory / "db-password.json"
        self.env_backup = directory / "db-password-env.backup"
        self.done_dir = directory / "done"

    def finish(self, record: PasswordRecord) -> None:
        """Archive without passwords, then drop the passwords and the .env backup."""
        self.archive(record)
        self.drop_current()
