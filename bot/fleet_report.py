"""``audit export --fleet ID --format markdown``: a fleet request's record, from the audit log.

One row per panel, from the ``fleet.panel`` audit records (written with the panel's final
state, in one transaction), so the table shows what the log holds, not what Slack showed.
The offboarding's own records (``person.offboarded``, ``step_up.reset``) come first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from handlers.ops import fleet_model as fm
from handlers.ops import fleet_views as fv
from handlers.rotation_request import RotationRequest, Transition


def _when(ts_ms: int | float | None) -> str:
    if not ts_ms:
        return ""
    return datetime.fromtimestamp(float(ts_ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any) -> str:
    return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")


def markdown(request: RotationRequest, history: Iterable[Transition], entries: Iterable[dict[str, Any]]) -> str:
    fleet = request.plan.fleet
    panels: list[dict[str, Any]] = []
    offboarding: list[str] = []
    person = str(fleet.get("person") or "")
    for entry in entries:
        data = entry.get("data")
        parsed = json.loads(data) if isinstance(data, str) else dict(data or {})
        if entry.get("request_id") == request.id and entry.get("kind") == "fleet.panel":
            panels.append({**parsed, "seq": entry.get("seq"), "at": _when(entry.get("ts_ms"))})
        elif entry.get("kind") == "person.offboarded" and entry.get("request_id") == request.id:
            offboarding.append(
                f"- {_when(entry.get('ts_ms'))} #{entry.get('seq')}: approvals of {parsed.get('user')} revoked"
            )
        elif entry.get("kind") == "step_up.reset" and person and parsed.get("user") == person:
            offboarding.append(
                f"- {_when(entry.get('ts_ms'))} #{entry.get('seq')}: TOTP enrollment of {person} removed"
            )
    approvers = ", ".join(a.person.user_id for a in request.approvals if a.person) or "nobody"
    what = f"offboarding of {person}" if fleet.get("kind") == "offboard" else f"key rotation of {fleet.get('selector')}"
    lines = [
        f"# Fleet {request.id}: {what}",
        "",
        f"- requested by {request.requester.user_id}, reason: {_cell(request.reason)}",
        f"- approved by {approvers}; state {request.state.value}",
        f"- plan {request.plan_hash[:16]} over {len(fm.runnable(request.plan))} panels; "
        f"parts: {', '.join(fleet.get('parts') or ['key'])}",
    ]
    bad = [m for m in fm.members(request.plan) if m.get("error")]
    if bad:
        lines.append(
            "- left out (could not be planned): " + "; ".join(f"{m['panel']} ({_cell(m['error'])})" for m in bad)
        )
    counts = request.outcome.get("counts") or {}
    if counts:
        lines.append(f"- outcome: {fv.counts_line(counts)}")
    audit = request.outcome.get("audit") or {}
    if audit.get("seq"):
        anchor = f"{audit['seq']}:{audit['digest']}"
        lines.append(f"- audit anchor: `{anchor}` (`python -m bot audit verify --anchor {anchor}`)")
    if offboarding:
        lines += ["", "## Done at request time", "", *offboarding]
    lines += [
        "",
        "## Panels",
        "",
        "| panel | outcome | old key | new key | values | seconds | code | run | audit # | at |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(panels, key=lambda r: str(r.get("panel"))):
        lines.append(
            "| " + " | ".join(_cell(row.get(k)) for k in ("panel", "outcome", "old_fingerprint", "new_fingerprint",
                                                         "values", "seconds", "code", "run_id", "seq", "at")) + " |"
        )  # fmt: skip
    if not panels:
        lines.append("| (no panel has finished) | | | | | | | | | |")
    if fleet.get("kind") == "offboard":
        lines += [
            "",
            "## A person must still",
            "",
            f"- [ ] remove {person}'s SSH keys and panel accounts on each host:",
        ]
        lines += [f"  - [ ] {m['panel']} ({m.get('host', '')})" for m in fm.runnable(request.plan)]
    lines += ["", "## History", ""]
    for t in history:
        lines.append(f"- {_when(t.at * 1000)} {t.event}: {t.from_state or ''} -> {t.to_state} ({t.actor})")
    return "\n".join(lines) + "\n"
