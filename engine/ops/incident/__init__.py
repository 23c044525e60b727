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
    out.write(f"Panel {data.get('panel', '')}: incident rotation\n")
    for part in data.get("parts") or []:
        state = part.get("state")
        head = f"{_MARKS.get(state, '•')} {part.get('title')}" + (f": {state.replace('_', ' ')}" if state else "")
        if part.get("part") == "db_password" and "db_user" in part:
            head += f" (database user {part['db_user']})"
        if part.get("part") == "key" and "total" in part and "state" not in part:
            head += f": {plural(part['total'], 'stored value')} in {plural(len(part.get('columns') or {}), 'column')}"
        if part.get("part") == "agents" and "state" not in part:
            head += f": {plural(part.get('total', 0), 'agent')}"
        if part.get("new_fingerprint"):
            head += f" · {part.get('old_fingerprint')}… → {part['new_fingerprint']}…"
        if part.get("detail") or part.get("error"):
            head += f" · {part.get('error') or part.get('detail')}"
        out.write(head + "\n")
        if "state" not in part:
            for label, count in (part.get("columns") or {}).items():
                out.write(f"    {label}: {count:,}\n")
    out.write("Not rotated by this tool:\n")
    for item in data.get("manual") or []:
        out.write(f"  {item['name']}: {item['action']}\n")
        if item.get("message"):
            out.write(f"    message: {item['message']}\n")
    if data.get("message"):
        out.write(f"{data['message']}\n")


print_summary = print_plan
