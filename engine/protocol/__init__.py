"""The bot <-> engine protocol: versions, the operation list, requests, event shapes.

This package is the one piece of ``engine`` that ``handlers`` and ``bot`` import, and it
imports nothing else of the engine (the shared contract): the operations' names
(``OPERATIONS``, the one list), the requests, the events, the codes table with each
code's meaning and advice (``codes``), the errors' root and the protocol's refusals
(``errors``), the typed ``Outcome`` of a closing event (``outcome``) and how counts are
said (``words``). It holds no I/O and imports nothing heavy (no pydantic): ``serve`` must answer
``hello`` before any third-party import. One request line goes in on stdin,
JSON Lines come out: ``hello`` first, then ``step`` / ``progress`` events, then
exactly one closing ``result`` or ``error``. Every event carries the rotation
``id`` and a ``seq``. Key material only ever appears as a fingerprint (first 16
hex of SHA-256).

A run request (``rotate-key``, ``rotate-agent``, not a dry run) names what was
approved: the engine's ``plan_hash`` of the approved plan, and the expected
current ``key_fingerprint`` (``rotate-key``) or the exact ``agents`` list
(``rotate-agent``). The engine re-plans in the same process and refuses a
mismatch (``check_run``). The same validation (``parse_request_line``,
``Request``, ``check_run``) serves the engine and the test suite's fake engine.
"""

from __future__ import annotations

import json
import re
import time

from engine.protocol.codes import MISMATCH_CODES as MISMATCH_CODES
from engine.protocol.codes import NOTHING_CHANGED_CODES as NOTHING_CHANGED_CODES
from engine.protocol.errors import PlanMismatchError as PlanMismatchError
from engine.protocol.errors import RequestError as RequestError

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: serve's hello must not import typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Literal

    from engine.protocol.errors import EngineError

    StepState = Literal["started", "ok", "failed", "skipped"]
else:
    StepState = str  # importable at run time, for modules that import the name

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_REQUEST_BYTES = 16 * 1024


class Operation:
    """What the protocol knows of one operation: its name and how a request of it behaves.

    The engine maps each name to its implementation (``engine.ops.REGISTRY``); the bot
    maps it to its Slack side (``handlers.ops``). A test ties both to this list.
    """

    __slots__ = ("doc", "mutating", "name", "plannable", "runs_plan")

    def __init__(
        self, name: str, doc: str, *, mutating: bool = False, runs_plan: bool = False, plannable: bool = False
    ) -> None:
        self.name = name
        #: one line for ``--help`` and the docs
        self.doc = doc
        #: it changes the panel: it outlives its connection (serve, the bot's clients, the host's run record)
        self.mutating = mutating
        #: it runs an approved plan, and so must name it (``require_plan``)
        self.runs_plan = runs_plan
        #: ``plan`` can plan for it (``plan_for``)
        self.plannable = plannable

    def __repr__(self) -> str:
        return f"Operation({self.name!r})"


#: The operations, in the order the docs list them: the one list (house rule 9).
REGISTRY: tuple[Operation, ...] = (
    Operation("hello", "the engine's version and protocol versions"),
    Operation("probe", "detect the ciphertext layout and count stored values (read-only)"),
    Operation("plan", "what a rotation would do (read-only); plan_for names which"),
    Operation("rotate-key", "rotate PANEL_ENCRYPTION_KEY", mutating=True, runs_plan=True, plannable=True),
    Operation(
        "rotate-agent", "rotate agent tokens by re-running the bootstrap", mutating=True, runs_plan=True,
        plannable=True,
    ),
    Operation(
        "rotate-incident",
        "after a leaked .env: rotate the database password, the key and every agent token, in that order",
        mutating=True, runs_plan=True, plannable=True,
    ),
    Operation(
        "rotate-db-password", "rotate the panel's database password (DB_PASSWORD)", mutating=True,
        runs_plan=True, plannable=True,
    ),
    Operation("status", "the unfinished rotation, if any, and recent ones"),
    Operation("recover", "converge after an interrupted rotation", mutating=True),
    Operation("attach", "follow a running rotation's events again (after a lost connection)"),
)
BY_NAME: dict[str, Operation] = {op.name: op for op in REGISTRY}
OPERATIONS: tuple[str, ...] = tuple(BY_NAME)
#: Operations that change the panel: they outlive their connection (serve, the bot's clients,
#: the host's run record). engine.serve, engine.ops and bot.local_client use it.
MUTATING_OPS = frozenset(op.name for op in REGISTRY if op.mutating)
#: Operations that run an approved plan, and so must name it.
RUN_OPS = frozenset(op.name for op in REGISTRY if op.runs_plan)
#: What ``plan`` can plan for (``plan_for``).
PLANNABLE_OPS = tuple(op.name for op in REGISTRY if op.plannable)

#: The parts of ``rotate-incident``, in the order they run (each verified before the next).
INCIDENT_PARTS: tuple[str, ...] = ("db_password", "key", "agents")

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

#: The visible steps of a database password rotation, in order.
DB_PASSWORD_STEPS: tuple[str, ...] = (
    "db_preflight",
    "db_stage",
    "db_change",
    "db_write_env",
    "db_restart",
    "db_verify",
    "db_backup",
)

#: The steps of one agent's token rotation.
AGENT_STEPS: tuple[str, ...] = (
    "preflight",
    "issue_token",
    "bootstrap",
    "reregistered",
    "old_revoked",
)

CLOSING_TYPES = frozenset({"result", "error"})
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_ID = ID_PATTERN
_PLAN_HASH = r"^[0-9a-f]{64}$"
_FINGERPRINT = r"^[0-9a-f]{16}$"
_AGENT_NAME_MAX = 128
_PERSON_MAX = 64

_DEFAULTS: dict[str, Any] = {
    "dry_run": False,
    "requested_by": None,
    "approved_by": (),
    "reason": None,
    "rollback": False,
    "agents": None,
    "all_agents": False,
    "after_seq": 0,
    "rotation_id": None,
    "plan_hash": None,
    "key_fingerprint": None,
    "incident": False,
    "db_password": False,
    "password_fingerprint": None,
    "plan_for": None,
}
FIELDS: tuple[str, ...] = ("v", "id", "op", *_DEFAULTS)


class Request:
    """One request line on the engine's stdin. Built from keywords, it validates itself.

    A plain class, not a dataclass or a pydantic model: ``serve`` builds one before
    its ``hello``, and those imports cost more than the whole check.
    """

    __slots__ = FIELDS

    v: int
    id: str
    op: str
    dry_run: bool
    requested_by: str | None
    approved_by: list[str]
    reason: str | None
    rollback: bool
    agents: list[str] | None
    all_agents: bool
    after_seq: int
    rotation_id: str | None
    plan_hash: str | None
    key_fingerprint: str | None
    incident: bool
    db_password: bool
    password_fingerprint: str | None
    plan_for: str | None

    def __init__(
        self,
        *,
        v: int,
        id: str,
        op: str,
        dry_run: bool = False,
        requested_by: str | None = None,
        approved_by: Sequence[str] = (),
        reason: str | None = None,
        rollback: bool = False,
        agents: Sequence[str] | None = None,
        all_agents: bool = False,
        after_seq: int = 0,
        rotation_id: str | None = None,
        plan_hash: str | None = None,
        key_fingerprint: str | None = None,
        incident: bool = False,
        db_password: bool = False,
        password_fingerprint: str | None = None,
        plan_for: str | None = None,
    ) -> None:
        values = dict(locals())
        del values["self"]
        for name in ("approved_by", "agents"):
            if isinstance(values[name], list | tuple):  # any sequence, kept as a list of its own
                values[name] = list(values[name])
        for name in FIELDS:
            object.__setattr__(self, name, values[name])
        _validate(self)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Request is immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in FIELDS)
        return f"Request({shown})"

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as JSON types."""
        out: dict[str, Any] = {"v": self.v, "id": self.id, "op": self.op}
        for name, default in _DEFAULTS.items():
            value = getattr(self, name)
            if name == "approved_by" and not value:
                continue
            if value != default:
                out[name] = list(value) if isinstance(value, list | tuple) else value
        return out

    def to_line(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":")) + "\n"

    def replace(self, **changes: Any) -> Request:
        values = {n: getattr(self, n) for n in FIELDS}
        return Request(**{**values, **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        """Validate a decoded request object exactly as the engine does."""
        unknown = [k for k in data if k not in FIELDS]
        if unknown:
            names = ", ".join(_field_name(k) for k in unknown[:5])
            raise RequestError("bad_request", f"bad request: unknown field(s) {names}")
        version = data.get("v")
        if isinstance(version, int) and not isinstance(version, bool) and version not in SUPPORTED_VERSIONS:
            shown = version if 0 <= version < 1000 else "(out of range)"
            raise RequestError(
                "unsupported_version",
                f"protocol version {shown} is not supported; "
                f"engine speaks {list(SUPPORTED_VERSIONS)}",
            )
        op = data.get("op")
        if isinstance(op, str) and op not in OPERATIONS:
            raise RequestError(
                "unknown_operation", f"unknown operation; expected one of {', '.join(OPERATIONS)}"
            )
        for name in ("v", "id", "op"):
            if name not in data:
                raise RequestError("bad_request", f"bad request: {name}: field required")
        for name in ("approved_by", "agents"):
            if name in data and data[name] is not None and not isinstance(data[name], list):
                raise RequestError("bad_request", f"bad request: {name}: must be a list")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_name(part: object) -> str:
    """A field name from the request, echoed only if it looks like one."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_]{1,32}", text) else "(field)"


def _bad(name: str, problem: str) -> RequestError:
    return RequestError("bad_request", f"bad request: {name}: {problem}")


def _check_str(name: str, value: object, *, max_len: int, pattern: str | None = None,
               optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    if len(value) > max_len:
        raise _bad(name, f"at most {max_len} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise _bad(name, "has the wrong form")


def _check_list(name: str, value: object, *, max_items: int, max_len: int) -> None:
    if not isinstance(value, list):
        raise _bad(name, "must be a list")
    if len(value) > max_items:
        raise _bad(name, f"at most {max_items} items")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > max_len:
            raise _bad(name, f"items must be strings of 1 to {max_len} characters")


def _validate(r: Request) -> None:
    """Every field's type and bounds, then what each operation needs."""
    if not _is_int(r.v):
        raise _bad("v", "must be an integer")
    if r.v not in SUPPORTED_VERSIONS:
        raise RequestError(
            "unsupported_version",
            f"protocol version {r.v if 0 <= r.v < 1000 else '(out of range)'} is not supported; "
            f"engine speaks {list(SUPPORTED_VERSIONS)}",
        )
    _check_str("id", r.id, max_len=64, pattern=_ID, optional=False)
    if not isinstance(r.op, str):
        raise _bad("op", "must be a string")
    if r.op not in OPERATIONS:
        raise RequestError(
            "unknown_operation", f"unknown operation; expected one of {', '.join(OPERATIONS)}"
        )
    for name in ("dry_run", "rollback", "all_agents", "incident", "db_password"):
        if not isinstance(getattr(r, name), bool):
            raise _bad(name, "must be true or false")
    _check_str("requested_by", r.requested_by, max_len=_PERSON_MAX)
    _check_list("approved_by", r.approved_by, max_items=20, max_len=_PERSON_MAX)
    _check_str("reason", r.reason, max_len=500)
    if r.agents is not None:
        _check_list("agents", r.agents, max_items=500, max_len=_AGENT_NAME_MAX)
    if not _is_int(r.after_seq) or r.after_seq < 0:
        raise _bad("after_seq", "must be an integer >= 0")
    _check_str("rotation_id", r.rotation_id, max_len=64, pattern=_ID)
    _check_str("plan_hash", r.plan_hash, max_len=64, pattern=_PLAN_HASH)
    _check_str("key_fingerprint", r.key_fingerprint, max_len=16, pattern=_FINGERPRINT)
    _check_str("password_fingerprint", r.password_fingerprint, max_len=16, pattern=_FINGERPRINT)
    if r.plan_for is not None:
        _check_plan_for(r)


def _check_plan_for(r: Request) -> None:
    """``plan_for`` names a plannable operation, on a ``plan``, and agrees with the old flags."""
    if r.plan_for not in PLANNABLE_OPS:
        raise _bad("plan_for", f"must be one of {', '.join(PLANNABLE_OPS)}")
    if r.op != "plan":
        raise _bad("plan_for", "only a plan names what it plans for")
    if _planned_by_flags(r) not in (r.plan_for, "rotate-key"):
        raise _bad("plan_for", "disagrees with the incident, db_password or agents fields")
    if r.plan_for == "rotate-agent" and not (r.agents or r.all_agents):
        raise _bad("plan_for", "rotate-agent needs agents or all_agents")


def _planned_by_flags(r: Request) -> str:
    """What a plan request plans for, by the fields older bots send (before ``plan_for``)."""
    if r.db_password:
        return "rotate-db-password"
    if r.incident:
        return "rotate-incident"
    if r.agents or r.all_agents:
        return "rotate-agent"
    return "rotate-key"


def planned_op(r: Request) -> str:
    """The operation a ``plan`` request plans for: ``plan_for``, else what the old flags say
    (``incident``, ``db_password``, ``agents``/``all_agents``; none: ``rotate-key``)."""
    return r.plan_for if r.plan_for is not None else _planned_by_flags(r)


#: What a run request must name of its approved plan, besides its hash.
_PLAN_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "rotate-key": (("key_fingerprint", "key_fingerprint"),),
    "rotate-incident": (("key_fingerprint", "key_fingerprint"),),
    "rotate-db-password": (("password_fingerprint", "password_fingerprint"),),
    "rotate-agent": (("agents", "agents (the exact approved list)"),),
}


def require_plan(r: Request) -> None:
    """A run sent over the protocol names the approved plan: its hash, and the key or
    the exact agent list. (A person at the host's CLI runs without one.)"""
    if r.op not in RUN_OPS or r.dry_run:
        return
    missing = []
    if r.plan_hash is None:
        missing.append("plan_hash")
    for name, label in _PLAN_NAMES.get(r.op, ()):
        if not getattr(r, name):
            missing.append(label)
    if missing:
        raise RequestError(
            "plan_required",
            f"{r.op} must name the approved plan: missing {', '.join(missing)}",
        )


def parse_request_line(raw: bytes) -> Request:
    """Validate one request line; raise ``RequestError`` with a precise code."""
    body = raw.rstrip(b"\r\n")
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError("request_too_large", f"request line exceeds {MAX_REQUEST_BYTES} bytes")
    if not body.strip():
        raise RequestError("bad_request", "no request line on stdin")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError("bad_request", "request line is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise RequestError("bad_request", "request line must be a JSON object")
    request = Request.from_dict(data)
    require_plan(request)
    return request


# -- the plan a run must match -------------------------------------------------------------


def key_binding(*, panel: str, engine_version: str, key_fingerprint: str, scheme: str) -> dict[str, Any]:
    """What a ``rotate-key`` approval binds, as the engine can check it on the host."""
    return {
        "op": "rotate-key",
        "panel": panel,
        "engine_version": engine_version,
        "key_fingerprint": key_fingerprint,
        "scheme": scheme,
    }


def db_password_binding(
    *, panel: str, engine_version: str, db_user: str, db_host: str, password_fingerprint: str,
    accounts: list[str] | tuple[str, ...],
) -> dict[str, Any]:
    """What a ``rotate-db-password`` approval binds: the login, its current password and
    every account that password opens (``user@host``, sorted): a twin that appears after
    the approval is a different plan."""
    return {
        "op": "rotate-db-password",
        "panel": panel,
        "engine_version": engine_version,
        "db_user": db_user,
        "db_host": db_host,
        "password_fingerprint": password_fingerprint,
        "accounts": sorted(accounts),
    }


def agent_binding(*, panel: str, engine_version: str, agents: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What a ``rotate-agent`` approval binds: the exact, sorted agent names."""
    return {
        "op": "rotate-agent",
        "panel": panel,
        "engine_version": engine_version,
        "agents": sorted(agents),
    }


def incident_binding(
    *, panel: str, engine_version: str, key_fingerprint: str, scheme: str,
    agents: list[str] | tuple[str, ...], db_user: str | None, password_fingerprint: str | None = None,
    db_accounts: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """What a ``rotate-incident`` approval binds: the key, the exact agents, the DB login,
    its current password (by fingerprint; None when the DB password part is skipped) and
    every account that password opens."""
    return {
        "op": "rotate-incident",
        "panel": panel,
        "engine_version": engine_version,
        "key_fingerprint": key_fingerprint,
        "scheme": scheme,
        "agents": sorted(agents),
        "db_user": db_user,
        "password_fingerprint": password_fingerprint,
        "db_accounts": sorted(db_accounts),
    }


def plan_hash(binding: dict[str, Any]) -> str:
    """SHA-256 of the binding's canonical JSON: the ``plan_hash`` a run request names."""
    import hashlib  # not at the top: ``serve`` answers hello before it needs it

    canonical = json.dumps(binding, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_run(request: Request, binding: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` unless ``request`` names exactly the plan ``binding`` describes.

    Checked in this order, so that the code says the most useful thing: the current
    key, the agent list, then the hash of the whole plan (engine version, layout, panel).
    """
    differences = _differences(request, binding)
    expected = binding.get("key_fingerprint")
    if request.key_fingerprint is not None and expected is not None and request.key_fingerprint != expected:
        raise PlanMismatchError(
            "key_mismatch",
            f"the panel's current key is {expected}, not the approved {request.key_fingerprint}: "
            "the plan changed since it was approved; nothing was changed",
            differences,
        )
    current = binding.get("password_fingerprint")
    if current is not None and request.password_fingerprint != current:
        raise PlanMismatchError(
            "password_mismatch",
            f"the panel's database password is now {current}, not the approved "
            f"{request.password_fingerprint}: the plan changed since it was approved; nothing was changed",
            differences,
        )
    if "agents" in binding and sorted(request.agents or ()) != binding["agents"]:
        raise PlanMismatchError(
            "agents_mismatch",
            "the agents on the panel no longer match the approved list; nothing was changed",
            differences,
        )
    if request.plan_hash is not None and request.plan_hash != plan_hash(binding):
        raise PlanMismatchError(
            "plan_mismatch",
            "the plan changed since it was approved (" + ("; ".join(differences) or "its hash")
            + "); nothing was changed",
            differences,
        )


def _differences(request: Request, binding: dict[str, Any]) -> list[str]:
    out = []
    if request.key_fingerprint is not None and binding.get("key_fingerprint") not in (None, request.key_fingerprint):
        out.append(f"current key {request.key_fingerprint} -> {binding['key_fingerprint']}")
    if "agents" in binding:
        sent, now = set(request.agents or ()), set(binding["agents"])
        if now - sent:
            out.append("agents added: " + ", ".join(sorted(now - sent)[:5]))
        if sent - now:
            out.append("agents gone: " + ", ".join(sorted(sent - now)[:5]))
    return out


def fingerprint(material: bytes | str) -> str:
    """First 16 hex characters of SHA-256: how keys and tokens are named anywhere."""
    import hashlib
    data = material.encode() if isinstance(material, str) else material
    return hashlib.sha256(data).hexdigest()[:16]


def negotiate(offered: object, engine_version: object = "?", *, mine: int | None = None) -> int:
    """The version a client speaks with an engine whose ``hello`` offered ``offered``.

    The engine answers every version in ``SUPPORTED_VERSIONS`` (the current one and, for a
    release, the one before); a client speaks one (``PROTOCOL_VERSION``). So upgrade the
    engines first, then the bot. Raises ``ValueError`` with the side to upgrade named.
    """
    mine = PROTOCOL_VERSION if mine is None else mine
    versions = [v for v in offered if isinstance(v, int) and not isinstance(v, bool)] \
        if isinstance(offered, list) else []
    if mine in versions:
        return mine
    if not versions:
        raise ValueError(f"engine {engine_version} did not say which protocol versions it speaks")
    if max(versions) < mine:
        advice = "upgrade the engine on this panel host (engines first, then the bot)"
    else:
        advice = "upgrade the bot: this engine no longer speaks the bot's version"
    raise ValueError(
        f"engine {engine_version} speaks protocol {versions}, this bot speaks {mine}: {advice}"
    )


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
    for steps in (KEY_STEPS, DB_PASSWORD_STEPS):
        if name in steps and "index" not in data:
            event["index"] = steps.index(name) + 1
            event["total"] = len(steps)
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


def error_event_of(exc: EngineError) -> dict[str, Any]:
    """The closing ``error`` event of an engine error: its fields, then its details."""
    fields = exc.event_fields()
    details = {k: v for k, v in exc.details.items() if k not in _RESERVED}
    return {"type": "error", **fields, **details}


#: Event fields an error's details may not shadow.
_RESERVED = frozenset({"type", "code", "message", "retryable", "rolled_back", "exit_status", "id", "seq", "ts"})


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

# Pattern strings, compiled (and cached by ``re``) on first use, not at import.
_SECRETISH = (
    r"(?i)\b([A-Z0-9_]*(?:KEY|TOKEN|PASS(?:WORD)?|SECRET|CREDENTIAL)[A-Z0-9_]*)(\s*[=:]\s*)(\S+)"
)
_LONG_HEX = r"\b[0-9a-fA-F]{32,}\b"
_LONG_B64 = r"(?<![\w/.+-])[A-Za-z0-9+/_-]{32,}={0,2}"


def redact(text: str) -> str:
    """Hide anything that looks like key material or a credential."""
    text = re.sub(_SECRETISH, r"\1\2[redacted]", text)
    text = re.sub(_LONG_HEX, "[redacted-hex]", text)
    return re.sub(_LONG_B64, _redact_token, text)


def _redact_token(match: re.Match[str]) -> str:
    """Base64-like runs: redacted when they mix upper case, lower case and digits."""
    token = match.group(0)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return "[redacted]" if mixed and not token.startswith("/") else token
