"""Getting back to one consistent key: rollback, and ``recover`` after a crash.

Both work from what is stored, not from what the journal hoped: GCM's tag
tells which key opens each value, values under the other key are re-encrypted
to the target (compare-and-swap), ``.env`` is made to hold the target key
(rewriting only that value), the panel is restarted and everything is
verified from disk. A value that neither key opens is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import envfile, faults, hooks
from engine.cipher import Codec, Scheme
from engine.context import Context
from engine.db import PanelDB
from engine.errors import (
    EngineError,
    EnvFileError,
    RollbackFailedError,
)
from engine.journal import FORWARD_STATES, JournalRecord
from engine.ops.journaled import converge, panel_lock, unfinished
from engine.ops.key.scan import Untouched, census, reencrypt
from engine.ops.key.verify import panel_check, verify_from_disk
from engine.profile import engine_command
from engine.protocol.words import plural, verb


@dataclass(frozen=True)
class RollbackPlan:
    restart_needed: bool


def _recover_hint(ctx: Context) -> str:
    return (
        f"Both keys are kept in the journal {ctx.journal.current}. "
        f"Next: run `{engine_command(ctx.profile, 'recover')}` on the panel host"
    )


def _converge_values(
    ctx: Context, db: PanelDB, record: JournalRecord, target_key: str, other_key: str
) -> tuple[int, Untouched]:
    """(values rewritten to the target key, values neither key opens, left as they are)."""
    scheme = Scheme.parse(record.scheme)
    columns, _ = ctx.columns(db)
    rewrite = reencrypt(
        db,
        columns,
        Codec(scheme, other_key),
        Codec(scheme, target_key),
        ctx.profile.batch_size,
    )
    db.commit()
    return rewrite.n_written, Untouched.of(rewrite)


def _env_to(ctx: Context, record: JournalRecord, target_key: str) -> bool:
    """Make ``.env`` hold ``target_key``; True if it had to be rewritten."""
    profile = ctx.profile
    data = envfile.read(profile.env_path)
    current = envfile.read_key(profile.env_path, profile.key_name)
    if current == target_key:
        return False
    if current not in (record.old_key, record.new_key):
        raise EnvFileError(
            f"{profile.env_path} holds a key that belongs to neither side of rotation "
            f"{record.rotation_id}; not touching it"
        )
    envfile.write_atomic(
        profile.env_path, envfile.replace_key(data, profile.key_name, target_key), ctx.ownership()
    )
    return True


def _refuse_a_third_key(ctx: Context, record: JournalRecord) -> None:
    """Before any change: ``.env`` must hold one of the rotation's two keys."""
    profile = ctx.profile
    current = envfile.read_key(profile.env_path, profile.key_name)
    if current not in (record.old_key, record.new_key):
        raise EnvFileError(
            f"{profile.env_path} holds a key that belongs to neither side of rotation "
            f"{record.rotation_id} (someone changed it by hand?); nothing was changed. "
            f"Put back the old or the new key, then run recover again. {_recover_hint(ctx)}"
        )


def roll_back(
    ctx: Context, record: JournalRecord, plan: RollbackPlan, cause: str
) -> dict[str, Any]:
    """Back to a verified old state, or ``RollbackFailedError`` saying what to run."""
    journal = ctx.journal
    record.state = "ROLLING_BACK"
    journal.save(record)
    faults.checkpoint("state:ROLLING_BACK")
    db: PanelDB | None = None
    try:
        with ctx.step("rollback", f"rolling back: {cause}") as out:
            db = ctx.connect()
            rewritten, neither = _converge_values(ctx, db, record, record.old_key, record.new_key)
            env_restored = _env_to(ctx, record, record.old_key)
            restarted = False
            if plan.restart_needed or env_restored:
                hooks.run_command(
                    "restart", ctx.profile.restart_command, timeout_s=ctx.profile.restart_timeout_s
                )
                restarted = True
            parts = [f"{plural(rewritten, 'value')} re-encrypted under the old key"]
            parts.append(".env restored" if env_restored else ".env unchanged")
            if restarted:
                parts.append("panel restarted")
            if neither.count:
                opens = verb(neither.count, "opens", "open")
                parts.append(f"{plural(neither.count, 'value')} {opens} with neither key, left untouched: "
                             f"{neither.listed()}")
            out.detail = " · ".join(parts)
        with ctx.step("verify_old", "verifying the old key from disk") as out:
            verified = verify_from_disk(
                ctx, db, ctx.columns(db)[0], Scheme.parse(record.scheme), expect_key=record.old_key,
                untouched=neither,
            )
            check = panel_check(ctx)
            out.detail = f"old key verified · {verified:,}/{verified:,}" + (
                f" · {plural(neither.count, 'value')} written meanwhile under neither key, left as "
                f"{verb(neither.count, 'it was', 'they were')}: {neither.listed()}" if neither.count else ""
            ) + (f" · panel check {check}" if check else "")
    except EngineError as exc:
        raise RollbackFailedError(
            f"rollback failed: {exc.message}. {_recover_hint(ctx)}", rolled_back=False
        ) from exc
    finally:
        if db is not None:
            db.close()
    record.state = "ROLLED_BACK"
    journal.save(record)
    journal.finish(record)
    return {"verified": True, "count": verified, "panel_check": check, "rewritten": rewritten}


def roll_forward(ctx: Context, record: JournalRecord) -> dict[str, Any]:
    """Finish an interrupted rotation whose new key already reached ``.env``."""
    profile, journal = ctx.profile, ctx.journal
    scheme = Scheme.parse(record.scheme)
    db = ctx.connect()
    try:
        with ctx.step("reencrypt", "re-encrypting what is still under the old key") as out:
            rewritten, neither = _converge_values(ctx, db, record, record.new_key, record.old_key)
            out.detail = f"{plural(rewritten, 'value')} re-encrypted" + (
                f" · {neither.count} open with neither key, left untouched" if neither.count else ""
            )
        with ctx.step("write_env", "making .env hold the new key") as out:
            changed = _env_to(ctx, record, record.new_key)
            out.detail = ".env updated" if changed else ".env already holds the new key"
        record.state = "ENV_WRITTEN"
        journal.save(record)
        with ctx.step("restart", "restarting the panel") as out:
            hooks.run_command("restart", profile.restart_command, timeout_s=profile.restart_timeout_s)
            out.detail = "panel restarted"
        record.state, record.restarted, record.committed = "RESTARTED", True, True
        journal.save(record)
        with ctx.step("sweep", "looking for values written under the old key") as out:
            swept, _ = _converge_values(ctx, db, record, record.new_key, record.old_key)
            out.detail = f"{plural(swept, 'value')} written under the old key during the switch"
        record.state = "SWEPT"
        journal.save(record)
        with ctx.step("verify", "decrypting every value with the key read from disk") as out:
            verified = verify_from_disk(ctx, db, ctx.columns(db)[0], scheme, expect_key=record.new_key)
            check = panel_check(ctx)
            out.detail = f"verified from disk · {verified:,}/{verified:,}" + (
                f" · panel check {check}" if check else ""
            )
        record.state = "VERIFIED"
        journal.save(record)
        with ctx.step("backup", "running the backup hook") as out:
            if profile.backup_command:
                hooks.run_command(
                    "backup hook", profile.backup_command, timeout_s=profile.hook_timeout_s,
                    team_env=hooks.team_environment(profile),
                )
                out.detail = "backup updated"
            else:
                out.skipped, out.detail = True, "no backup hook configured"
    finally:
        db.close()
    record.state = "DONE"
    journal.save(record)
    journal.finish(record)
    return {"verified": True, "count": verified, "panel_check": check}


def recover(ctx: Context, *, rollback: bool) -> dict[str, Any]:
    with panel_lock(ctx):
        record: JournalRecord = unfinished(ctx.journal, "there is no unfinished rotation on this panel: nothing to do")
        _refuse_a_third_key(ctx, record)
        forward = not rollback and record.state in FORWARD_STATES
        with ctx.step("classify", f"rotation {record.rotation_id} stopped at {record.state}") as out:
            db = ctx.connect()
            try:
                columns, _ = ctx.columns(db)
                scheme = Scheme.parse(record.scheme)
                found = census(
                    db, columns, Codec(scheme, record.new_key), Codec(scheme, record.old_key),
                    ctx.profile.batch_size,
                )
            finally:
                db.close()
            direction = "finishing the rotation" if forward else "rolling back to the old key"
            out.detail = (
                f"{found.n_other:,} under the old key · {found.n_target:,} under the new key · "
                f"{found.n_neither} under neither · {direction}"
            )
            out.data = {"old": found.n_other, "new": found.n_target, "neither": found.n_neither}
        base = {
            "rotation_id": record.rotation_id,
            "old_fingerprint": record.old_fingerprint,
            "new_fingerprint": record.new_fingerprint,
            "stopped_at": record.state,
        }
        return converge(
            base,
            forward=forward,
            roll_forward=lambda: roll_forward(ctx, record),
            roll_back=lambda cause: roll_back(ctx, record, RollbackPlan(restart_needed=True), cause=cause),
        )
