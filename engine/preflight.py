"""Preflight: check everything a rotation needs, change nothing.

It is also the whole of ``plan``: the read-only answer the bot shows on the
request card before anyone approves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import __version__, envfile, restart
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import PanelDB
from engine.errors import UndecryptableError
from engine.probe import require_transactions
from engine.profile import ColumnSpec
from engine.protocol import fingerprint
from engine.scan import census
from engine.words import plural, verb


@dataclass
class Preflight:
    env_bytes: bytes
    key_hex: str
    key_fingerprint: str
    scheme: Scheme
    columns: list[ColumnSpec]
    missing: list[str]
    counts: dict[str, int]
    #: the preflight's open connection, when asked to keep it (``keep_connection``)
    db: PanelDB | None = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        """Plain facts for a plan or a result; no key material, only a fingerprint."""
        return {
            "columns": self.counts,
            "skipped": self.missing,
            "total": self.total,
            "scheme": self.scheme.label,
            "scheme_description": self.scheme.description,
            "key_fingerprint": self.key_fingerprint,
            "engine_version": __version__,
        }


def run_preflight(
    ctx: Context, *, lock_note: str, write_checks: bool = True, keep_connection: bool = False
) -> Preflight:
    """With ``keep_connection``, the preflight's database connection stays open in
    ``Preflight.db`` for the caller (a rotation goes on with it: one connection per
    run, each costs a login); on any refusal it is closed."""
    profile = ctx.profile
    with ctx.step("preflight", "checking .env, the database and every stored value") as out:
        env_bytes = envfile.read(profile.env_path)
        key_hex = envfile.read_key(profile.env_path, profile.key_name)
        if write_checks:
            envfile.check_writable(profile.env_path, ctx.ownership())
            restart.check_target(profile)
        db = ctx.connect()
        kept = False
        try:
            columns, missing = ctx.columns(db)
            require_transactions(db, columns)
            scheme = ctx.scheme(db, columns, key_hex)
            found = census(db, columns, Codec(scheme, key_hex), None, profile.batch_size)
            kept = keep_connection and not found.n_neither
        finally:
            if not kept:
                db.close()
        if found.n_neither:
            raise UndecryptableError(
                f"{plural(found.n_neither, 'stored value')} "
                f"{verb(found.n_neither, 'does', 'do')} not decrypt with the current key: "
                f"{found.listed_neither()}. Nothing was changed; fix or clear those values first",
                found.neither_at,
            )
        pre = Preflight(
            env_bytes=env_bytes,
            key_hex=key_hex,
            key_fingerprint=fingerprint(key_hex),
            scheme=scheme,
            columns=columns,
            missing=missing,
            counts=dict(found.target),
            db=db if kept else None,
        )
        opens = verb(pre.total, "opens", "open")
        out.detail = f"{plural(pre.total, 'value')} {opens} with the current key · {lock_note}"
        out.data = pre.summary()
    return pre
