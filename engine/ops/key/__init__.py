"""``rotate-key``: re-encrypt every stored value under a new PANEL_ENCRYPTION_KEY.

The operation kind's face (the same for every kind): ``plan``, ``run``, ``recover``,
and for the CLI ``approved`` (what a confirmed run names of the plan shown),
``print_plan`` and ``print_summary``. Modules, in the order a rotation uses them:
``preflight`` (read-only checks and counts, the plan's facts), ``scan`` and ``offload``
(stage and seal the values, the crypto in a worker process), ``rotation`` (the journaled
state machine), ``verify`` (every value opens with the key read back from disk),
``converge`` (recover: roll forward or back).
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from engine import __version__, protocol
from engine.context import Context
from engine.ops.approval import names_a_plan, refuse_mismatch, run_options
from engine.protocol import Request
from engine.protocol.outcome import Outcome
from engine.protocol.words import plural

if TYPE_CHECKING:
    from engine.ops.key.preflight import Preflight


def binding(ctx: Context, pre: Preflight) -> dict[str, Any]:
    """What a ``rotate-key`` approval binds, as the engine computes it now."""
    return protocol.key_binding(
        panel=ctx.profile.name,
        engine_version=__version__,
        key_fingerprint=pre.key_fingerprint,
        scheme=pre.scheme.label,
    )


def plan_of(ctx: Context, pre: Preflight) -> dict[str, Any]:
    """The ``plan`` result for rotate-key: the preflight's facts and the plan's hash."""
    return {
        **pre.summary(),
        "panel": ctx.profile.name,
        "escrow": ctx.profile.escrow_description,
        "plan_hash": protocol.plan_hash(binding(ctx, pre)),
    }


def plan(ctx: Context, request: Request) -> dict[str, Any]:
    """Read-only: the preflight with its write checks, and any unfinished rotation."""
    from engine.ops.key.preflight import run_preflight

    unfinished = ctx.journal.load()
    pre = run_preflight(ctx, lock_note="read-only", write_checks=True)
    return {**plan_of(ctx, pre), "unfinished": unfinished.public() if unfinished else None}


def run(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.key.rotation import KeyRotation

    def matches_the_approved_plan(pre: Preflight) -> None:
        """Runs under the panel's lock, right after the preflight (the re-plan)."""
        if names_a_plan(request):
            refuse_mismatch(request, binding(ctx, pre), plan_of(ctx, pre))

    return KeyRotation(ctx, **run_options(request), expect=matches_the_approved_plan).run()


def recover(ctx: Context, *, rollback: bool) -> dict[str, Any]:
    """Converge an unfinished key rotation (forward by default once ``.env`` holds the new key)."""
    from engine.ops.key.converge import recover as converge

    return converge(ctx, rollback=rollback)


# -- the CLI ------------------------------------------------------------------------------


def approved(plan: dict[str, Any]) -> dict[str, Any]:
    """What a run confirmed at the terminal names of the plan it was shown."""
    return {"plan_hash": plan.get("plan_hash"), "key_fingerprint": plan.get("key_fingerprint")}


def values(n: int) -> str:
    return plural(n, "stored value")


def print_layout(out: IO[str], data: dict[str, Any], *, current_key: bool) -> None:
    """The columns and their counts, the tables skipped, the layout (``plan`` and ``probe``)."""
    for label, count in (data.get("columns") or {}).items():
        out.write(f"  {label}: {count:,}\n")
    for table in data.get("skipped") or []:
        out.write(f"  {table}: table not present, skipped\n")
    if data.get("scheme"):
        out.write(f"Layout: {data['scheme']} ({data.get('scheme_description', '')})\n")
    if current_key and data.get("key_fingerprint"):
        out.write(f"Current key: {data['key_fingerprint']}…\n")
    if data.get("problem"):
        out.write(f"Problem: {data['problem']}\n")


def print_plan(out: IO[str], data: dict[str, Any]) -> None:
    if data.get("panel"):
        out.write(f"Panel {data['panel']}: {values(data.get('total', 0))} would be re-encrypted\n")
    print_layout(out, data, current_key=True)


def print_summary(out: IO[str], data: dict[str, Any]) -> None:
    if data.get("dry_run"):
        out.write(f"Dry run: {data['total']:,} values would be re-encrypted ({data['scheme']}). "
                  "Nothing was changed.\n")  # fmt: skip
        return
    done = Outcome.of(protocol.result_event("rotate-key", **data))
    out.write(
        f"Done · old key {done.old_fingerprint}… → new key {done.new_fingerprint}… · {done.total:,} values · "
        f"{done.duration_ms / 1000:.1f} s · rotation {done.rotation_id}\n"
    )
