"""What every rotation takes from its request, and the check that a run is the approved plan.

A run request names its approved plan (``plan_hash`` and the key, password or agents it
binds); each operation kind re-plans under the panel's lock and calls ``refuse_mismatch``
with the binding as the engine computes it now (``engine.protocol.check_run``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from engine.errors import PlanMismatchError
from engine.protocol import Request, check_run


def new_rotation_id() -> str:
    return f"r-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def run_options(request: Request) -> dict[str, Any]:
    """What every rotation takes from its request: id, dry run, who asked, who approved, why."""
    return {
        "rotation_id": request.id,
        "dry_run": request.dry_run,
        "requested_by": request.requested_by,
        "approved_by": list(request.approved_by),
        "reason": request.reason,
    }


def refuse_mismatch(request: Request, binding: dict[str, Any], plan: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` unless the request names exactly this plan."""
    try:
        check_run(request, binding)
    except PlanMismatchError as exc:
        exc.details["plan"] = plan
        raise


def names_a_plan(request: Request) -> bool:
    return (
        request.plan_hash is not None
        or request.key_fingerprint is not None
        or request.password_fingerprint is not None
    )
