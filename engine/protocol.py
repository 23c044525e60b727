"""The bot <-> engine protocol: versions, the operation list, and event shapes.

This module is the one piece of ``engine`` that ``handlers`` and ``bot`` import.
It holds no I/O. One request line goes in on stdin, JSON Lines come out:
``hello`` first, then ``step`` / ``progress`` events, then exactly one closing
``result`` or ``error``. Every event carries the rotation ``id`` and a ``seq``.
Key material only ever appears as a fingerprint (first 16 hex of SHA-256).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_REQUEST_BYTES = 16 * 1024

OPERATIONS: tuple[str, ...] = (
    "hello",
    "probe",
    "plan",
    "rotate-key",
    "rotate-agent",
    "status",
    "recover",
    "attach",
)

#: The visible steps of a key rotation, in order (the card shows "step 4/9").
KEY_STEPS: tuple[str, ...] = (
    "preflight",
    "stage",
    "reencrypt",
    "verify_db",
    "write_env",
    "restart",
    "sweep",
    "verify",
    "backup",
)

#: The steps of one agent's token rotation.
AGENT_STEPS: tuple[str, ...] = (
    "preflight",
    "issue_token",
    "bootstrap",
    "reregistered",
    "old_revoked",
)

StepState = Literal["started", "ok", "failed", "skipped"]
CLOSING_TYPES = frozenset({"result", "error"})
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class Request(BaseModel):
    """One request line on the engine's stdin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int
    id: str = Field(pattern=ID_PATTERN)
    op: str
    dry_run: bool = False
    requested_by: str | None = Field(default=None, max_length=64)
    approved_by: list[str] = Field(default_factory=list, max_length=20)
    reason: str | None = Field(default=None, max_length=500)
    rollback: bool = False
    agents: list[str] | None = Field(default=None, max_length=500)
    all_agents: bool = False
    after_seq: int = Field(default=0, ge=0)
    rotation_id: str | None = Field(default=None, pattern=ID_PATTERN)

    @field_validator("op")
    @classmethod
    def _known_op(cls, value: str) -> str:
        if value not in OPERATIONS:
            raise ValueError(f"unknown operation; expected one of {', '.join(OPERATIONS)}")
        return value

    @field_validator("v")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported protocol version {value}; engine speaks {SUPPORTED_VERSIONS}")
        return value

    def to_line(self) -> str:
        return self.model_dump_json(exclude_defaults=True) + "\n"


def fingerprint(material: bytes | str) -> str:
    """First 16 hex characters of SHA-256: how keys and tokens are named anywhere."""
    import hashlib

    data = material.encode() if isinstance(material, str) else material
    return hashlib.sha256(data).hexdigest()[:16]


def hello_event(engine_version: str) -> dict[str, Any]:
    return {"type": "hello", "engine": engine_version, "protocol": list(SUPPORTED_VERSIONS)}


def step_event(
    name: str,
    state: StepState,
    detail: str = "",
    elapsed_ms: int | None = None,
    **data: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "step", "name": name, "state": state, "detail": detail}
    if elapsed_ms is not None:
        event["elapsed_ms"] = elapsed_ms
    if name in KEY_STEPS and "index" not in data:
        event["index"] = KEY_STEPS.index(name) + 1
        event["total"] = len(KEY_STEPS)
    event.update(data)
    return event


def progress_event(name: str, done: int, total: int) -> dict[str, Any]:
    return {"type": "progress", "name": name, "done": done, "total": total}


def result_event(op: str, **data: Any) -> dict[str, Any]:
    return {"type": "result", "op": op, "ok": True, **data}


def error_event(
    code: str,
    message: str,
    *,
    retryable: bool = False,
    rolled_back: bool | None = None,
    **data: Any,
) -> dict[str, Any]:
    return {
        "type": "error",
        "code": code,
        "message": message,
        "retryable": retryable,
        "rolled_back": rolled_back,
        **data,
    }


def encode_event(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=False) + "\n"


def decode_event(line: str | bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict) or "type" not in value:
        raise ValueError("not an engine event")
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


# -- redaction: the last line of defence for free text (stderr, hook output) ----------

_SECRETISH = re.compile(
    r"(?i)\b([A-Z0-9_]*(?:KEY|TOKEN|PASS(?:WORD)?|SECRET|CREDENTIAL)[A-Z0-9_]*)(\s*[=:]\s*)(\S+)"
)
_LONG_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_LONG_B64 = re.compile(r"(?<![\w/.+-])[A-Za-z0-9+/_-]{32,}={0,2}")


def redact(text: str) -> str:
    """Hide anything that looks like key material or a credential."""
    text = _SECRETISH.sub(r"\1\2[redacted]", text)
    text = _LONG_HEX.sub("[redacted-hex]", text)
    return _LONG_B64.sub(_redact_token, text)


def _redact_token(match: re.Match[str]) -> str:
    """Base64-like runs: redacted when they mix upper case, lower case and digits."""
    token = match.group(0)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return "[redacted]" if mixed and not token.startswith("/") else token
