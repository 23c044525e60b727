"""The postmortem appendix of an incident rotation, in Markdown (``audit export --incident``).

Built from what the bot keeps: the request (who asked, why, who approved, the plan and
its outcome), its history of transitions, and the audit log's entries for it (every
engine event, chained). Fingerprints only: the store and the log hold no secret value.
The appendix ends with the audit anchor to verify it against (``audit verify --anchor``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from handlers.ending import Ending, ManualItem
from handlers.ops.incident import TITLES, WORDS
from handlers.rotation_request import RotationRequest, Transition

MAX_STEPS = 500


def _utc(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _cell(value: object) -> str:
    """One table cell: no line breaks, no pipe that would split the row."""
    text = " ".join(str(value if value is not None else "-").split())
    return text.replace("|", "\\|") or "-"


def _row(*cells: object) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _person(key: str) -> str:
    return key.rsplit("/", 1)[-1] if key else "-"


def markdown(
    request: RotationRequest,
    history: Sequence[Transition],
    entries: Iterable[dict[str, Any]],
    anchor: str | None = None,
) -> str:
    ending = Ending.of(request.outcome)
    approvals = [a for a in request.approvals if a.person]
    lines = [
        f"## Appendix: incident rotation `{request.id}` on panel {request.panel}",
        "",
        _row("Fact", "Value"),
        _row("---", "---"),
        _row("Operation", request.op),
        _row("Panel", request.panel),
        _row("Requested by", f"{request.requester.user_id} at {_utc(request.created_at)}"),
        _row("Reason", request.reason),
        _row("Approved by", ", ".join(f"{a.person.user_id} at {_utc(a.at)}" for a in approvals if a.person) or "-"),
        _row("Plan hash", request.plan.engine_plan_hash or request.plan_hash),
        _row("Started", _utc(request.started_at)),
        _row("Finished", _utc(request.finished_at)),
        _row("Outcome", f"{request.state.value}" + (f": {ending.message}" if ending.message else "")),
        "",
        "### Timeline",
        "",
        _row("Part", "State", "Started", "Finished", "Old fingerprint", "New fingerprint", "Notes"),
        _row("---", "---", "---", "---", "---", "---", "---"),
    ]
    for part in ending.parts:
        state = part.state or "not_started"
        notes = part.error or part.detail or ""
        if part.db_user:
            notes = f"user {part.db_user}" + (f"; {notes}" if notes else "")
        if part.part == "agents" and part.total is not None:
            notes = f"{part.rotated or 0} of {part.total} agents rotated" + (f"; {notes}" if notes else "")
        lines.append(_row(
            TITLES.get(part.part, part.part), WORDS.get(state, state),
            _utc(_seconds(part.started_at)), _utc(_seconds(part.finished_at)),
            part.old_fingerprint, part.new_fingerprint, notes,
        ))  # fmt: skip
    lines += ["", "### Left for a human", ""]
    for part in ending.left:
        title = TITLES.get(part.part, part.part)
        lines.append(f"- [ ] {title}: {WORDS.get(str(part.state), part.state)}; rotate it again")
    message = ""
    for item in map(ManualItem.read, ending.manual or request.plan.manual):
        lines.append(f"- [ ] `{item.name}`: {item.action}")
        message = message or (item.message or "")
    if message:
        lines += ["", "Message for MyOsicam support:", "", f"> {' '.join(message.split())}"]
    lines += ["", "### Engine steps", "", _row("Time", "Part", "Step", "State", "Detail"),
              _row("---", "---", "---", "---", "---")]  # fmt: skip
    steps = 0
    for entry in entries:
        if entry.get("request_id") != request.id or entry.get("kind") != "engine.step":
            continue
        data = _data(entry)
        if data.get("state") == "started":
            continue
        steps += 1
        if steps > MAX_STEPS:
            lines.append(_row("…", "", "", "", "more steps in the audit log"))
            break
        lines.append(_row(
            _utc(int(entry.get("ts_ms") or 0) / 1000), data.get("part"),
            f"{data.get('name')} ({data['agent']})" if data.get("agent") else data.get("name"),
            data.get("state"), data.get("detail"),
        ))  # fmt: skip
    lines += ["", "### Request history", "", _row("Time", "Event", "State", "By"), _row("---", "---", "---", "---")]
    for change in history:
        lines.append(_row(_utc(change.at), change.event, change.to_state, _person(change.actor)))
    if anchor:
        lines += ["", f"Audit anchor: `{anchor}` (check: `python -m bot audit verify --anchor {anchor}`)"]
    return "\n".join(lines) + "\n"


def _seconds(ms: object) -> float | None:
    return ms / 1000 if isinstance(ms, int | float) else None


def _data(entry: dict[str, Any]) -> dict[str, Any]:
    raw = entry.get("data")
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(str(raw))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
