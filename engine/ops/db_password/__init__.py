"""``rotate-db-password``: give the panel's database login(s) a new password.

The operation kind's face, as every kind's: ``plan``, ``run``, ``recover``, and for the
CLI ``approved``, ``print_plan`` and ``print_summary``. Modules: ``accounts`` (every
account the old password opens, and the route to each), ``journal`` (the write-ahead
record of an unfinished rotation), ``rotation`` (the preflight, the journaled state
machine and its recovery).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from engine import __version__, protocol
from engine.context import Context
from engine.ops.approval import names_a_plan, refuse_mismatch, run_options
from engine.protocol import Request

if TYPE_CHECKING:
    from engine.ops.db_password.rotation import PasswordPreflight


def binding(ctx: Context, pre: PasswordPreflight) -> dict[str, Any]:
    return protocol.db_password_binding(
        panel=ctx.profile.name,
        engine_version=__version__,
        db_user=pre.settings.user,
        db_host=pre.settings.host,
        password_fingerprint=pre.fingerprint,
        accounts=list(pre.routes.accounts()),
    )


def plan_of(ctx: Context, pre: PasswordPreflight) -> dict[str, Any]:
    return {**pre.summary(ctx.profile.name), "plan_hash": protocol.plan_hash(binding(ctx, pre))}


def plan(ctx: Context, request: Request) -> dict[str, Any]:
    """The login whose password would change, read-only."""
    from engine.ops.db_password.journal import PasswordJournal
    from engine.ops.db_password.rotation import password_preflight

    unfinished = PasswordJournal(ctx.profile.journal_dir).load()
    pre = password_preflight(ctx, write_checks=True)
    return {**plan_of(ctx, pre), "unfinished": unfinished.public() if unfinished else None}


def run(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.db_password.rotation import DbPasswordRotation

    def matches_the_approved_plan(pre: PasswordPreflight) -> None:
        if names_a_plan(request):
            refuse_mismatch(request, binding(ctx, pre), plan_of(ctx, pre))

    return DbPasswordRotation(ctx, **run_options(request), expect=matches_the_approved_plan).run()


def recover(ctx: Context, *, rollback: bool) -> dict[str, Any] | None:
    """Converge an unfinished password rotation; None when there is none."""
    from engine.ops.db_password.rotation import has_unfinished, recover_password

    return recover_password(ctx, rollback=rollback) if has_unfinished(ctx) else None


# -- the CLI ------------------------------------------------------------------------------


def approved(plan: dict[str, Any]) -> dict[str, Any]:
    return {"plan_hash": plan.get("plan_hash"), "password_fingerprint": plan.get("password_fingerprint")}


def print_plan(out: IO[str], data: dict[str, Any]) -> None:
    out.write(
        f"Panel {data.get('panel', '')}: the database login {data['db_user']}@{data['db_host']} "
        f"would get a new password (current {data['password_fingerprint']}…) on every account it opens: "
        + ", ".join(f"{a['account']} ({'; '.join(a['routes'])})" for a in data.get("accounts") or []) + "\n"
    )


def print_summary(out: IO[str], data: dict[str, Any]) -> None:
    from engine import protocol
    from engine.protocol.outcome import Outcome

    done = Outcome.of(protocol.result_event("rotate-db-password", **data))
    login = f"{done.db_user}@{done.db_host}"
    if done.dry_run:
        out.write(f"Dry run: {login} can get a new password. Nothing was changed.\n")
        return
    out.write(
        f"Done · {login} password {done.old_fingerprint}… → "
        f"{done.new_fingerprint}… · accounts {', '.join(done.accounts or ('?',))}, old password "
        f"refused on every route · {done.duration_ms / 1000:.1f} s · rotation {done.rotation_id}\n"
    )
