"""``rotate-incident``: after a leaked ``.env``, the database password, the key and every
agent token, in that order, each verified before the next (``rotation``).

The operation kind's face, as every kind's: ``plan``, ``run``, and for the CLI
``approved``, ``print_plan`` and ``print_summary``. It has no ``recover`` of its own:
each part is a rotation of its kind, which ``recover`` converges.
"""

from __future__ import annotations

from typing import IO, Any

from engine.context import Context
from engine.protocol import Request
from engine.protocol.words import plural


def plan(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.incident.rotation import plan_incident

    return plan_incident(ctx, request)


def run(ctx: Context, request: Request) -> dict[str, Any]:
    from engine.ops.incident.rotation import rotate_incident

    return rotate_incident(ctx, request)


# -- the CLI ------------------------------------------------------------------------------


def approved(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "plan_hash": plan.get("plan_hash"),
        "key_fingerprint": plan.get("key_fingerprint"),
        "agents": list(plan.get("agents") or []),
        "password_fingerprint": plan.get("password_fingerprint"),
    }


_MARKS = {"done": "✔", "skipped": "–", "not_started": "·", "rolled_back": "↩", "failed": "✖", "needs_recover": "✖"}


def print_plan(out: IO[str], data: dict[str, Any]) -> None:
    """The incident plan or result: each part, then what a person must rotate elsewhere."""
    from engine import protocol
    from engine.protocol.outcome import Outcome

    read = Outcome.of(protocol.result_event("rotate-incident", **data))
    out.write(f"Panel {read.panel or ''}: incident rotation\n")
    for part in read.parts:
        state = part.state
        head = f"{_MARKS.get(state or '', '•')} {part.title}" + (f": {state.replace('_', ' ')}" if state else "")
        if part.part == "db_password" and part.db_user is not None:
            head += f" (database user {part.db_user})"
        if part.part == "key" and part.total is not None and state is None:
            head += f": {plural(part.total, 'stored value')} in {plural(len(part.columns), 'column')}"
        if part.part == "agents" and state is None:
            head += f": {plural(part.total or 0, 'agent')}"
        if part.new_fingerprint:
            head += f" · {part.old_fingerprint}… → {part.new_fingerprint}…"
        if part.detail or part.error:
            head += f" · {part.error or part.detail}"
        out.write(head + "\n")
        if state is None:
            for label, count in part.columns.items():
                out.write(f"    {label}: {count:,}\n")
    out.write("Not rotated by this tool:\n")
    for item in read.manual:
        out.write(f"  {item.name}: {item.action}\n")
        if item.message:
            out.write(f"    message: {item.message}\n")
    if read.message:
        out.write(f"{read.message}\n")


print_summary = print_plan
