"""Verification: every value opens with the key read back from disk, and the panel agrees."""

from __future__ import annotations

from engine import envfile, hooks
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import PanelDB
from engine.errors import PanelCheckError, VerificationError
from engine.profile import ColumnSpec
from engine.scan import census


def verify_from_disk(
    ctx: Context, db: PanelDB, columns: list[ColumnSpec], scheme: Scheme, *, expect_key: str
) -> int:
    """Number of values verified; raises unless all open with the key in ``.env``."""
    profile = ctx.profile
    on_disk = envfile.read_key(profile.env_path, profile.key_name)
    if on_disk != expect_key:
        raise VerificationError(f"{profile.env_path} does not hold the expected key after writing it")
    db.rollback()  # a fresh snapshot: see every commit so far
    found = census(db, columns, Codec(scheme, on_disk), None, profile.batch_size)
    if found.n_neither:
        raise VerificationError(
            f"{found.n_neither} of {found.total:,} values do not open with the key in .env: "
            f"{found.listed_neither()}"
        )
    return found.n_target


def panel_check(ctx: Context) -> str | None:
    """Ask the panel itself that credentials still show; ``None`` if not configured."""
    profile = ctx.profile
    said: list[str] = []
    if profile.verify_url:
        said.append(hooks.check_url(profile.verify_url, profile.verify_timeout_s))
    if profile.verify_command:
        out = hooks.run_command(
            "panel check",
            profile.verify_command,
            timeout_s=profile.verify_timeout_s,
            error=PanelCheckError,
        )
        said.append(out or "ok")
    return " · ".join(said) if said else None
