"""Preflight: check everything a rotation needs, change nothing.

It is also the whole of ``plan``: the read-only answer the bot shows on the
request card before anyone approves.

A rotation's preflight is also its one pass over the values
(``sealed_under``): each value is read from one consistent snapshot, without a
row lock (the panel stays writable), opened with the current key and, in the same
breath, sealed under the new key and staged in a temporary table of the
connection. That stages nothing on the panel's rows: the new key is not yet
journaled nor escrowed, so not one row may hold it (docs/architecture.md §4 rule 1),
and a refusal (a value the current key does not open, a plan that changed) leaves
nothing changed. A second pass over every value, and
half the crypto, are saved: measured, the census alone was 0.6 s of a 100k-value
rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import __version__, envfile, faults, hooks, restart
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import PanelDB
from engine.errors import UndecryptableError
from engine.layouts import require_transactions
from engine.ops.key.scan import Rewrite, census, seal_and_stage, total_values
from engine.profile import ColumnSpec
from engine.protocol import fingerprint
from engine.protocol.words import plural, verb


@dataclass
class Preflight:
    env_bytes: bytes
    key_hex: str
    key_fingerprint: str
    scheme: Scheme
    columns: list[ColumnSpec]
    missing: list[str]
    counts: dict[str, int]
    #: with ``sealed_under``: the connection whose open transaction holds the staged values
    db: PanelDB | None = field(default=None, repr=False, compare=False)
    #: with ``sealed_under``: what the pass sealed and staged (not yet on the rows)
    staged: Rewrite | None = field(default=None, repr=False, compare=False)

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


def _refuse_unopened(n: int, listed: str, where: list[str]) -> UndecryptableError:
    return UndecryptableError(
        f"{plural(n, 'stored value')} {verb(n, 'does', 'do')} not decrypt with the current key: "
        f"{listed}. Nothing was changed; fix or clear those values first",
        where,
    )


def run_preflight(
    ctx: Context,
    *,
    lock_note: str,
    write_checks: bool = True,
    sealed_under: str | None = None,
) -> Preflight:
    """Read-only unless ``sealed_under`` (a new key, hex) is given: then every value
    is also sealed under it and staged in temporary tables of the connection left open
    on ``Preflight.db``, for the rotation to apply (one connection per run: each costs
    a login). No row lock is held when this returns.
    On any refusal the transaction is rolled back and the connection closed."""
    profile = ctx.profile
    with ctx.step("preflight", "checking .env, the database and every stored value") as out:
        env_bytes = envfile.read(profile.env_path)
        key_hex = envfile.read_key(profile.env_path, profile.key_name)
        if write_checks:
            envfile.check_writable(profile.env_path, ctx.ownership())
            restart.check_target(profile)
            hooks.team_environment(profile)  # a loose hook_env_file refuses here, not at escrow
        db = ctx.connect()
        kept = False
        staged: Rewrite | None = None
        try:
            columns, missing = ctx.columns(db)
            require_transactions(db, columns)
            scheme = ctx.scheme(db, columns, key_hex)
            current = Codec(scheme, key_hex)
            if sealed_under is None:
                found = census(db, columns, current, None, profile.batch_size)
                if found.n_neither:
                    raise _refuse_unopened(found.n_neither, found.listed_neither(), found.neither_at)
                counts = dict(found.target)
            else:
                staged = _seal_every_value(ctx, db, columns, current, Codec(scheme, sealed_under))
                counts = dict(staged.staged)
            kept = sealed_under is not None
        finally:
            if not kept:
                db.rollback()
                db.close()
        pre = Preflight(
            env_bytes=env_bytes,
            key_hex=key_hex,
            key_fingerprint=fingerprint(key_hex),
            scheme=scheme,
            columns=columns,
            missing=missing,
            counts=counts,
            db=db if kept else None,
            staged=staged,
        )
        opens = verb(pre.total, "opens", "open")
        out.detail = f"{plural(pre.total, 'value')} {opens} with the current key · {lock_note}"
        if staged is not None:
            out.detail += " · sealed under the new key and staged, no row written yet"
        out.data = pre.summary()
    return pre


def _seal_every_value(ctx: Context, db: PanelDB, columns: list[ColumnSpec], current: Codec,
                      new: Codec) -> Rewrite:
    """The rotation's one pass (``scan.seal_and_stage``); refuses, nothing changed,
    when a value does not open with the current key."""
    total = sum(total_values(db, columns).values())
    staged = seal_and_stage(
        db, columns, current, new, ctx.profile.batch_size,
        progress=lambda done: ctx.emitter.progress("preflight", done, total),
        after_batch=lambda n: faults.checkpoint(f"reencrypt:batch:{n}"),
    )  # fmt: skip
    # a value the brand-new key already opens cannot be: counted with the unopened
    bad = sum(staged.neither.values()) + sum(staged.kept.values())
    if bad:
        shown = ", ".join(staged.neither_at)
        more = bad - len(staged.neither_at)
        listed = shown + (f" and {more} more" if more > 0 else "") if shown else f"{bad} values"
        raise _refuse_unopened(bad, listed, staged.neither_at)
    return staged
