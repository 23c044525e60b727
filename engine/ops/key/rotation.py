"""Key rotation: the journaled state machine of docs/architecture.md §4.

PREFLIGHT -> STAGED -> REENCRYPTED -> DB_VERIFIED -> ENV_WRITTEN -> RESTARTED
-> SWEPT -> VERIFIED -> BACKED_UP -> DONE, or ROLLING_BACK -> ROLLED_BACK.

No blank window (workers holding one key while the rows are under the other):
the re-encryption runs in one transaction that locks the rows, ``.env`` is
written, php-fpm is stopped, the transaction commits, php-fpm starts. With a
single restart command (``restart_split = false``, or a command that cannot be
split) the commit follows the moment the new workers are up, and the blank
window is as short as a commit.

The panel stays writable: a user saving a credential waits at most for the bulk
apply and the php-fpm stop, never for the pass over the values or the escrow; the
stop begins during the apply once the rest of it fits in the stop
(``engine.ops.key.stop_ahead``), so where it does the wait is the longer of the two.
The pass reads a consistent snapshot without row locks; the key is journaled and
escrowed outside any lock; the locks are taken by the apply (the online
schema-change tools' short cut-over), which re-seals, under them, the few rows
the panel wrote since the pass.

What each pass over the values proves:

* preflight, the one pass over the values (each read from one snapshot, unlocked,
  opened with the key in ``.env``, sealed under the new key, opened again, staged
  in a temporary table with the MD5 of the value read): every value opens with the
  current key, else it refuses, naming table, column and id, with nothing changed;
  every value staged opens under the new key to the very plaintext its row held
  (the round trip). The new key exists only in memory until ``stage`` journals and
  escrows it; no panel row holds it before then, and no row is locked meanwhile.
* reencrypt (one UPDATE ... JOIN per column, in the transaction that locks the
  rows until the commit): every row that still holds the value the pass read gets
  the value staged for it; where the column's server fingerprint then differs from
  what was sealed, the rows the panel wrote since the pass are read under the lock,
  re-sealed (round trip included) and written, and rows it cleared are dropped
  from what was sealed. A value written since that the current key does not open
  stops the rotation, which rolls back.
* verify_db (no read: the server sums count, length and CRC32("key:value")):
  the rows store exactly the bytes sealed for them, before the commit.
* sweep (the server's fingerprint of each column; where it changed, a join of
  the rows to what was staged): values written under the old key since the
  commit are found and re-encrypted.
* verify (the key read back from ``.env``; the server's fingerprint again): the
  key on disk is the one every value was sealed and round-trip checked under, and
  no row changed since, so a sample per column is opened with the key from disk;
  if anything changed (a value swept, a panel write), every value is read and
  opened with the key from disk, as rollback and recovery always do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

from engine import __version__, envfile, faults, hooks
from engine.cipher import Codec, new_key_hex
from engine.context import Context
from engine.db import PanelDB
from engine.errors import (
    EngineError,
    KeyReuseError,
    UndecryptableError,
    UnfinishedRotationError,
    VerificationError,
)
from engine.events import Stopwatch
from engine.journal import JournalRecord
from engine.ops.db_password.rotation import refuse_if_unfinished
from engine.ops.journaled import JournaledRotation
from engine.ops.key.converge import RollbackPlan, roll_back
from engine.ops.key.preflight import Preflight, run_preflight
from engine.ops.key.scan import Rewrite, apply_staged, catch_up, sweep
from engine.ops.key.stop_ahead import ApplyClock, StopAhead, host_timings
from engine.ops.key.verify import check_written, panel_check, verify_from_disk
from engine.profile import engine_command
from engine.protocol import fingerprint
from engine.protocol.words import plural, verb


class KeyRotation(JournaledRotation[Preflight, JournalRecord]):
    def __init__(self, ctx: Context, **options: Any) -> None:
        super().__init__(ctx, ctx.journal, **options)
        self.db: PanelDB | None = None
        self.env_before: bytes | None = None
        self.env_written = False
        self.new_key = ""
        #: the php-fpm stop, begun during the apply when it fits (restart split only)
        self.stop_ahead: StopAhead | None = None
        self.apply_clock: ApplyClock | None = None
        self.pass_s = 0.0

    # -- what JournaledRotation.run asks of a key rotation -----------------------------
    def preflight(self) -> Preflight:
        """Under the lock; the plan check (``expect``) follows it, nothing written yet."""
        journal = self.ctx.journal
        unfinished = journal.load()
        if unfinished is not None:
            raise UnfinishedRotationError(
                f"rotation {unfinished.rotation_id} stopped at {unfinished.state} and is "
                f"unfinished: run `{engine_command(self.ctx.profile, 'recover')}` first"
            )
        refuse_if_unfinished(self.ctx)  # a database password rotation, too
        self.new_key = new_key_hex()
        began = time.monotonic()
        pre = run_preflight(self.ctx, lock_note="lock held", sealed_under=None if self.dry_run else self.new_key)
        self.db = pre.db
        self.pass_s = time.monotonic() - began
        faults.checkpoint("pass:done")  # sealed and staged, unlocked; nothing journaled
        self.env_before = pre.env_bytes
        return pre

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def dry_run_result(self, pre: Preflight) -> dict[str, Any]:
        return {
            "rotation_id": self.rotation_id,
            "dry_run": True,
            "state": "PREFLIGHT",
            "would_reencrypt": pre.total,
            **pre.summary(),
        }

    def rotate(self, pre: Preflight) -> dict[str, Any]:
        return self._rotate(pre, self.new_key)

    # -- the forward path ------------------------------------------------------------
    def _rotate(self, pre: Preflight, new_key: str) -> dict[str, Any]:
        """From a preflight that sealed and staged every value under ``new_key``, in
        the transaction open on ``self.db``."""
        ctx, journal, profile = self.ctx, self.ctx.journal, self.profile
        old_key = pre.key_hex
        columns = pre.columns
        assert self.db is not None and pre.staged is not None
        db, rewrite = self.db, pre.staged

        with ctx.step("stage", "storing the new key") as out:
            new_fp = fingerprint(new_key)
            if new_fp in journal.history() or new_key == old_key:
                raise KeyReuseError("the generated key was used before on this panel; try again")
            journal.save_env_backup(pre.env_bytes)
            self.record = JournalRecord(
                rotation_id=self.rotation_id,
                op="rotate-key",
                state="STAGED",
                old_key=old_key,
                new_key=new_key,
                scheme=pre.scheme.label,
                old_fingerprint=pre.key_fingerprint,
                new_fingerprint=new_fp,
                started_at=time.time(),
                requested_by=self.requested_by,
                approved_by=self.approved_by,
                reason=self.reason,
            )
            journal.save(self.record)
            if profile.escrow_command:
                hooks.run_command(
                    "escrow",
                    profile.escrow_command,
                    timeout_s=profile.hook_timeout_s,
                    stdin=(new_key + "\n").encode(),
                    env=self._hook_env(new_fp),
                    team_env=hooks.team_environment(profile),
                )
            out.detail = f"fingerprint {new_fp} · {profile.escrow_description} · journal written"
            out.data = {"new_fingerprint": new_fp}
        faults.checkpoint("state:STAGED")

        old_codec = Codec(pre.scheme, old_key)
        new_codec = Codec(pre.scheme, new_key)

        with ctx.step("reencrypt", f"writing {plural(rewrite.n_staged, 'value')} sealed under the new key") as out:
            caught_up = catch_up(db, columns, rewrite, old_codec, new_codec)
            faults.checkpoint("apply:caught-up")
            begin_stop = self._stop_when_apply_ends_within(rewrite)
            apply_staged(db, columns, rewrite, old_codec, new_codec, before_column=begin_stop)
            faults.checkpoint("apply:done")
            if rewrite.neither:
                n = sum(rewrite.neither.values())
                raise UndecryptableError(
                    f"{plural(n, 'value')} written by the panel during the rotation "
                    f"{verb(n, 'does', 'do')} not decrypt with the current key: {', '.join(rewrite.neither_at)}",
                    rewrite.neither_at,
                )
            begin_stop(None)  # the apply is over: the database check and .env take milliseconds
            out.detail = f"re-encrypted {plural(rewrite.n_written, 'value')} in one transaction"
            if rewrite.n_resealed:
                out.detail += f" · {plural(rewrite.n_resealed, 'value')} saved by the panel meanwhile, re-sealed"
            out.data = {"columns": rewrite.written, "count": rewrite.n_written, "resealed": rewrite.n_resealed,
                        "caught_up": caught_up}
        self.advance("REENCRYPTED")

        with ctx.step("verify_db", "checking the stored values inside the transaction") as out:
            checked = check_written(db, columns, rewrite)
            out.detail = (
                f"{checked:,}/{checked:,} stored values are the ones sealed and round-trip checked "
                "under the new key"
            )
            out.data = {"count": checked}
        self.advance("DB_VERIFIED")

        with ctx.step("write_env", f"writing {profile.env_path.name}") as out:
            ownership = ctx.ownership()
            new_bytes = envfile.replace_key(pre.env_bytes, profile.key_name, new_key)
            self.env_written = True
            envfile.write_atomic(profile.env_path, new_bytes, ownership)
            if envfile.read_key(profile.env_path, profile.key_name) != new_key:
                raise VerificationError(".env does not read back with the new key")
            out.detail = (
                f"{profile.env_display} updated atomically · {ownership.describe()} · "
                "previous kept until done"
            )
        self.advance("ENV_WRITTEN")

        halves = profile.restart_halves
        started = "stopping the panel, committing, starting it" if halves else "restarting the panel, then committing"
        with ctx.step("restart", started) as out:
            self.restart_attempted = True
            if halves:
                out.detail, out.data = self._stop_commit_start(db, *halves)
            else:
                out.detail, out.data = self._restart_then_commit(db)
            assert self.record is not None
            self.record.committed = True
            self.record.restarted = True
        self.advance("RESTARTED")

        with ctx.step("sweep", "looking for values written under the old key") as out:
            swept = sweep(db, columns, old_codec, new_codec, sealed=rewrite)
            db.commit()
            out.detail = f"{plural(swept.n_written, 'value')} written under the old key during the switch"
            out.data = {"count": swept.n_written}
        self.advance("SWEPT")

        with ctx.step("verify", "decrypting every value with the key read from disk") as out:
            verified = verify_from_disk(ctx, db, columns, pre.scheme, expect_key=new_key, written=rewrite)
            check_text = panel_check(ctx)
            out.detail = f"verified from disk · {verified:,}/{verified:,}" + (
                f" · panel check {check_text}" if check_text else ""
            )
            out.data = {"count": verified, "panel_check": check_text}
        self.advance("VERIFIED")

        with ctx.step("backup", "running the backup hook") as out:
            if profile.backup_command:
                hooks.run_command(
                    "backup hook",
                    profile.backup_command,
                    timeout_s=profile.hook_timeout_s,
                    env=self._hook_env(new_fp),
                    team_env=hooks.team_environment(profile),
                )
                out.detail = "backup updated"
            else:
                out.skipped = True
                out.detail = "no backup hook configured"
        self.advance("BACKED_UP")

        self.record.state = "DONE"
        journal.save(self.record)
        journal.finish(self.record)
        return {
            "rotation_id": self.rotation_id,
            "state": "DONE",
            "verified": True,
            "old_fingerprint": pre.key_fingerprint,
            "new_fingerprint": new_fp,
            "columns": pre.counts,
            "skipped": pre.missing,
            "total": pre.total,
            "reencrypted": rewrite.n_written,
            "swept": swept.n_written,
            "panel_check": check_text,
            "scheme": pre.scheme.label,
            "escrow": profile.escrow_description,
            "duration_ms": self.watch.ms,
            "engine_version": __version__,
            **({"stop_ms": self.stop_ahead.took_ms} if self.stop_ahead is not None else {}),
            **({"apply_bytes_per_s": round(self.apply_clock.measured_rate)} if self.apply_clock else {}),
        }

    def _stop_when_apply_ends_within(self, rewrite: Rewrite) -> Callable[[str | None], None]:
        """Called before each column's locked apply (with its label) and once after the
        last (``None``): with the restart split, begins the php-fpm stop once the rest of
        the apply is expected to end within the stop's expected duration
        (engine.ops.key.stop_ahead says why)."""
        halves = self.profile.restart_halves
        if halves is None:
            return lambda label: faults.checkpoint(f"apply:{label}") if label else None
        ahead = self.stop_ahead = StopAhead(halves[0], self.profile.restart_timeout_s)
        read = sum(read.size for read in rewrite.read.values())

        def began() -> None:
            self.restart_attempted = True  # a failure from here restarts the panel

        clock = self.apply_clock = ApplyClock(
            ahead, {label: written.size for label, written in rewrite.sealed.items()},
            host_timings(self.profile.journal_dir), read / self.pass_s if self.pass_s > 0 else 0.0, began,
        )

        def before(label: str | None) -> None:
            if label is not None:
                faults.checkpoint(f"apply:{label}")
            clock.at(label, may_begin=not rewrite.neither)  # a value no key opens: the panel stays up

        return before

    def _stop_commit_start(
        self, db: PanelDB, stop: list[str], start: list[str]
    ) -> tuple[str, dict[str, Any]]:
        """No worker runs while the rows switch keys: old workers are gone before the
        commit, new ones start after it. The panel is unavailable for the restart
        itself and never shows blank credentials."""
        timeout = self.profile.restart_timeout_s
        ahead = self.stop_ahead or StopAhead(stop, timeout)
        begun_ahead = ahead.during_apply
        watch = Stopwatch()
        ahead.wait()
        stop_ms = watch.ms  # what was left of the stop once the apply and .env were done
        faults.checkpoint("restart:stopped")
        db.commit()
        commit_ms = watch.ms - stop_ms
        faults.checkpoint("commit:done")
        said = hooks.run_command("start", start, timeout_s=timeout)
        start_ms = watch.ms - stop_ms - commit_ms
        stopped = (f"{hooks.describe(stop)} in {ahead.took_ms / 1000:.2f} s, begun during the apply "
                   f"({stop_ms / 1000:.2f} s of it after)") if begun_ahead else \
            f"{hooks.describe(stop)} in {ahead.took_ms / 1000:.2f} s"
        detail = (
            f"{stopped} · committed in {commit_ms} ms · "
            f"{hooks.describe(start)} in {start_ms / 1000:.2f} s · no worker saw the other key"
            + (f" · {said}" if said else "")
        )
        data = {"restart_ms": stop_ms + start_ms, "stop_ms": ahead.took_ms, "stop_after_apply_ms": stop_ms,
                "start_ms": start_ms, "commit_ms": commit_ms, "blank_window_ms": 0, "split": True,
                "stop_begun_during_apply": begun_ahead}
        return detail, data

    def _restart_then_commit(self, db: PanelDB) -> tuple[str, dict[str, Any]]:
        """One restart command: new workers are up and read the rows under the old key
        until the commit that follows: that is the whole blank window."""
        command = self.profile.restart_command
        restart_watch = Stopwatch()
        said = hooks.run_command("restart", command, timeout_s=self.profile.restart_timeout_s)
        restart_ms = restart_watch.ms
        faults.checkpoint("commit:before")
        commit_watch = Stopwatch()
        db.commit()
        blank_ms = commit_watch.ms
        detail = (
            f"{hooks.describe(command)} ok in {restart_ms / 1000:.2f} s · "
            f"committed {blank_ms} ms later" + (f" · {said}" if said else "")
        )
        return detail, {"restart_ms": restart_ms, "blank_window_ms": blank_ms, "split": False}

    def _hook_env(self, new_fp: str) -> dict[str, str]:
        return {
            "ROTATOR_PANEL": self.profile.name,
            "ROTATOR_ROTATION_ID": self.rotation_id,
            "ROTATOR_KEY_FINGERPRINT": new_fp,
            "ROTATOR_ENV_FILE": str(self.profile.env_path),
        }

    # -- failure: roll back by itself ---------------------------------------------------
    def fail(self, pre: Preflight, failure: EngineError) -> NoReturn:
        assert self.record is not None and self.env_before is not None
        if self.stop_ahead is not None:
            self.stop_ahead.settle()  # the rollback's restart must not race a stop in flight
        if self.db is not None:
            self.db.rollback()
            self.db.close()
            self.db = None
        plan = RollbackPlan(restart_needed=self.restart_attempted)
        outcome = roll_back(self.ctx, self.record, plan, cause=failure.message)
        failure.rolled_back = True
        failure.details = {
            "rotation_id": self.rotation_id,
            "state": "ROLLED_BACK",
            "old_fingerprint": self.record.old_fingerprint,
            "new_fingerprint": self.record.new_fingerprint,
            "verified_old": outcome.get("verified"),
            "panel_check": outcome.get("panel_check"),
            "duration_ms": self.watch.ms,
        }
        raise failure

