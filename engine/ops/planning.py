"""``plan``: what an operation would do, read-only (the operation it plans for is
``protocol.planned_op``: ``plan_for``, else the older flags); and the CLI's printers
of a plan and of a rotation's result, which its kind's package holds."""

from __future__ import annotations

from typing import IO, Any

from engine import ops
from engine.context import Context
from engine.profile import Profile
from engine.protocol import Request, planned_op


def plan(ctx: Context, request: Request) -> dict[str, Any]:
    return ops.IMPLEMENTATIONS[planned_op(request)].kind_module().plan(ctx, request)  # type: ignore[no-any-return]


def print_plan(out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
    """The plan as the kind of the operation it plans for prints it."""
    ops.IMPLEMENTATIONS[planned_op(request)].kind_module().print_plan(out, data)


def print_run(out: IO[str], request: Request, data: dict[str, Any], profile: Profile) -> None:
    """A rotation's result, as its kind prints it."""
    ops.IMPLEMENTATIONS[request.op].kind_module().print_summary(out, data)
