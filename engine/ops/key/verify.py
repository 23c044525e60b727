"""Verification: every value opens with the key read back from disk, and the panel agrees."""

from __future__ import annotations

from engine import envfile, hooks
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import PanelDB
from engine.errors import PanelCheckError, VerificationError
from engine.ops.key.scan import Rewrite, Untouched, census
from engine.profile import ColumnSpec
from engine.protocol.words import plural, verb

#: Values per column a fingerprint-proven verification still opens with the key from disk.
SAMPLE = 100


def verify_from_disk(
    ctx: Context,
    db: PanelDB,
    columns: list[ColumnSpec],
    scheme: Scheme,
    *,
    expect_key: str,
    written: Rewrite | None = None,
    untouched: Untouched | None = None,
) -> int:
    """Number of values verified; raises unless all open with the key in ``.env``
    (but the ``untouched`` ones: values the rollback found that neither key opens,
    saved by the panel, which it must leave as they are).

    The key is read back from disk and must be the expected one. Then, when the
    rotation's ``written`` values are given and the server's fingerprint of every
    column (count, length, CRC32 of "key:value") still equals that of what was sealed
    (and round-trip checked) under that key, no row changed since it was proven, so
    the values are not read again: a sample of each column is opened with the key
    from disk. Otherwise (a value swept or changed since, a rollback, a recovery)
    every value is read and opened with the key from disk.
    """
    profile = ctx.profile
    on_disk = envfile.read_key(profile.env_path, profile.key_name)
    if on_disk != expect_key:
        raise VerificationError(f"{profile.env_path} does not hold the expected key after writing it")
    db.rollback()  # a fresh snapshot: see every commit so far
    codec = Codec(scheme, on_disk)
    if written is not None and _unchanged(db, columns, written):
        for spec in columns:
            for rows in db.iter_values(spec, SAMPLE, limit=SAMPLE):
                closed = [pk for pk, stored in rows if codec.open(stored) is None]
                if closed:
                    raise VerificationError(
                        f"{spec.label} id {closed[0]} does not open with the key in .env"
                    )
        return sum(written.sealed[spec.label].count for spec in columns if spec.label in written.sealed)
    found = census(db, columns, codec, None, profile.batch_size)
    if found.n_neither and not (untouched and untouched.matches(found)):
        raise VerificationError(
            f"{found.n_neither:,} of {plural(found.total, 'value')} "
            f"{verb(found.n_neither, 'does', 'do')} not open with the key in .env: "
            f"{found.listed_neither()}"
        )
    return found.n_target


def _unchanged(db: PanelDB, columns: list[ColumnSpec], written: Rewrite) -> bool:
    stored = db.fingerprints(columns)
    for spec in columns:
        sealed = written.sealed.get(spec.label)
        if stored[spec.label] != (sealed.as_tuple() if sealed else (0, 0, 0)):
            return False
    return True


def check_written(db: PanelDB, columns: list[ColumnSpec], rewrite: Rewrite) -> int:
    """Inside the re-encryption's transaction, before the commit: every stored value
    is exactly the one we sealed for its row, without reading the values back.

    ``reencrypt`` opened each value sealed under the new key again and compared it
    with the plaintext (the round trip), so every value we wrote opens under the new
    key to the very plaintext its row held. Here the server proves it stores those
    bytes: the column's count of non-empty values, their total length and the sum of
    CRC32("key:value") over its rows equal those of what we sealed. So no value was
    left unwritten or under the old key, none landed on another row, and neither the
    column nor the staging table cut or re-encoded one. Returns the count. A column's
    fingerprint the apply already took under the lock, after its last write, counts
    (``Rewrite.proven``, used once): the same proof, not taken twice.
    """
    if rewrite.roundtrip_failed:
        raise VerificationError(
            f"{plural(rewrite.roundtrip_failed, 'value')} did not open again under the new key after sealing; "
            "nothing was committed"
        )
    checked = 0
    unproven = [spec for spec in columns if spec.label not in rewrite.proven]
    fingerprints = db.fingerprints(unproven, locked=True) if unproven else {}
    for spec in columns:
        sealed = rewrite.sealed.get(spec.label)
        stored = rewrite.proven.pop(spec.label, None) or fingerprints[spec.label]
        expected = sealed.as_tuple() if sealed else (0, 0, 0)
        if stored != expected:
            raise VerificationError(
                f"database check failed: {spec.label} holds {stored[0]:,} values ({stored[1]:,} bytes) "
                f"where {expected[0]:,} values ({expected[1]:,} bytes) were written, or they differ; "
                "nothing was committed"
            )
        checked += stored[0]
    return checked


def panel_check(ctx: Context) -> str | None:
    """Ask the panel itself that credentials still show; ``None`` if not configured.

    It is asked right after a restart: a panel that does not answer yet gets the restart's
    own budget (``restart_timeout_s``) to answer, so a slow first answer on a loaded host
    fails neither the rotation nor then its rollback (which left it unfinished, exit 3)."""
    profile = ctx.profile
    said: list[str] = []
    if profile.verify_url:
        patience = profile.restart_timeout_s
        said.append(hooks.check_url(profile.verify_url, profile.verify_timeout_s, patience_s=patience))
    if profile.verify_command:
        out = hooks.run_command(
            "panel check",
            profile.verify_command,
            timeout_s=profile.verify_timeout_s,
            team_env=hooks.team_environment(profile),
            error=PanelCheckError,
        )
        said.append(out or "ok")
    return " · ".join(said) if said else None
