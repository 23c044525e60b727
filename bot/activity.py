"""One structured log line per request transition: who asked, who approved, what ran, how it ended.

Why in the store's write path and not in the handlers: every request, approval, denial,
expiry and run end is a compare-and-swap in ``bot.store.requests``; logging there, after
the write won, misses none and logs each once, whichever replica or thread made it.

The line's fields ride on the record as ``record.activity``; ``JsonLinesFormatter``
prints them as one JSON object per line (``python -m bot --log-format json``). No
field holds a secret: ids, states, the panel and the requester's reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from handlers.rotation_request import RotationRequest

log = logging.getLogger("bot.activity")


def transition(request: RotationRequest, event: str, from_state: str | None, actor: str) -> None:
    """Log that ``request`` went from ``from_state`` to its state through ``event`` by ``actor``."""
    fields: dict[str, Any] = {
        "event": f"request.{event}",
        "request": request.id,
        "panel": request.panel,
        "op": request.op,
        "actor": actor.rsplit("/", 1)[-1],  # a person is their Slack user id
        "from": from_state,
        "to": request.state.value,
    }
    if from_state is None:
        fields.update(requester=request.requester.user_id, reason=request.reason, plan=request.plan_hash[:16])
    if request.approvals:
        fields["approvers"] = [a.person.user_id for a in request.approvals if a.person]
    for name in ("code", "rolled_back"):
        if name in request.outcome:
            fields[name] = request.outcome[name]
    text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event" and v not in (None, [], ""))
    log.info("%s %s", fields["event"], text, extra={"activity": fields})


class JsonLinesFormatter(logging.Formatter):
    """Every record as one JSON object: time, level, logger, message, and any activity fields.

    ``redact`` runs over the finished line, so a secret in any field is caught as it is
    in the text format.
    """

    def __init__(self, redact: Callable[[str], str] = lambda text: text) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "activity", {}) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return self.redact(json.dumps(line, default=str, ensure_ascii=False))
