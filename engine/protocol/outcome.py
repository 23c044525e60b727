"""``Outcome``: how an operation ended, read once from its closing event (house rule 10).

The closing ``result`` or ``error`` event is the engine's whole answer. ``Outcome.of``
reads it once: whether it succeeded, what was done, what was proven, what is left, the
code and its advice, and the CLI's exit status. The CLI, the Slack summary, the incident
report and the Home tab render an ``Outcome``; none of them reads the event's keys.

Per operation, what the result says (``engine.ops.<kind>`` builds it):

* ``rotate-key``: the key's fingerprints, how many stored values, verified.
* ``rotate-db-password``: the login, the password's fingerprints, verified, the accounts
  it opens and the routes (``RouteResult``) the old password was refused on.
* ``rotate-agent``: one ``AgentResult`` per agent; ``ok`` False once one is not proven.
* ``rotate-incident``: one ``PartResult`` per part, in order (when it ran, its
  fingerprints, the DB login, the agents rotated); the parts left unfinished; the
  ``ManualItem`` list a person must rotate elsewhere.
* ``recover``: the direction it converged (forward, back, none).

Plain classes with ``__slots__``, no dataclasses: this module is part of the contract
``serve`` imports before its ``hello``.
"""

from __future__ import annotations

from engine.protocol import codes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _number(value: object) -> int | float | None:
    """A count or a time in ms as the engine sent it; None when it sent none."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list | tuple) else []


def _strs(value: object) -> tuple[str, ...]:
    """A list of names as text (an account of an older engine may be a mapping: shown as sent)."""
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


class _Record:
    """Equality and repr by slots (what a dataclass would give, without importing one)."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({shown})"


class AgentResult(_Record):
    """One agent of a ``rotate-agent`` run (``engine.ops.agents.outcome`` writes it)."""

    __slots__ = (
        "duration_ms",
        "error",
        "failed_step",
        "id",
        "install_token",
        "name",
        "new_fingerprint",
        "new_token",
        "ok",
        "old_fingerprint",
        "old_token",
        "old_token_valid",
        "outcome",
        "resumed_from",
        "server",
        "state",
    )  # fmt: skip

    def __init__(self, raw: dict[str, Any]) -> None:
        #: an older engine named an agent ``agent`` or only by its ``id``
        self.name = str(raw.get("name") or raw.get("agent") or raw.get("id") or "")
        self.id = _number(raw.get("id"))
        self.ok = raw.get("ok") is True
        #: "rotated" | "unverified" | "failed" | "ready" (dry run)
        self.outcome = str(raw.get("outcome") or ("rotated" if self.ok else "failed"))
        self.state = _str(raw.get("state"))
        self.failed_step = _str(raw.get("failed_step"))
        self.error = _str(raw.get("error"))
        self.old_fingerprint = _str(raw.get("old_fingerprint"))
        self.new_fingerprint = _str(raw.get("new_fingerprint"))
        self.install_token = _str(raw.get("install_token"))
        self.old_token_valid: bool | None = raw.get("old_token_valid")
        self.server = _str(raw.get("server"))
        #: what was proven of each token: "proven by re-registration" | "issued, not proven" |
        #: "none"; "refused" | "could not verify" | "still valid" | "not checked" (None: not said)
        self.new_token = _str(raw.get("new_token"))
        self.old_token = _str(raw.get("old_token"))
        self.resumed_from = _str(raw.get("resumed_from"))
        self.duration_ms = _number(raw.get("duration_ms"))

    @property
    def unverified(self) -> bool:
        return self.outcome == "unverified"


class RouteResult(_Record):
    """One route the DB password was proven on: which account, and how the old password fared."""

    __slots__ = ("account", "new", "old", "route")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.account = _str(raw.get("account"))
        self.route = str(raw.get("route"))
        #: "refused" once the old password is proven dead on this route
        self.old = _str(raw.get("old"))
        self.new = _str(raw.get("new"))


class ManualItem(_Record):
    """A secret this tool can't rotate, and what a person must do (``rotate-incident``)."""

    __slots__ = ("action", "message", "name")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.name = str(raw.get("name"))
        self.action = str(raw.get("action"))
        #: the text to send the secret's issuer (``PANEL_LICENSE_KEY``: MyOsicam support)
        self.message = _str(raw.get("message"))

    @classmethod
    def read(cls, item: ManualItem | Mapping[str, Any]) -> ManualItem:
        """``item`` typed (a plan's list is still the mappings the engine sent)."""
        return item if isinstance(item, ManualItem) else cls(item)


class PartResult(_Record):
    """One part of a ``rotate-incident`` run, or of its plan.

    A run's part says when it ran and what its rotation reported (fingerprints; the DB
    password's login, accounts and routes; the key's counts; the agents'); a plan's part
    has no ``state`` and says what would be rotated.
    """

    __slots__ = (
        "accounts",
        "agents",
        "available",
        "code",
        "columns",
        "configured",
        "db_user",
        "detail",
        "duration_ms",
        "error",
        "finished_at",
        "new_fingerprint",
        "old_fingerprint",
        "part",
        "password_in_env",
        "rotated",
        "routes",
        "started_at",
        "state",
        "title",
        "total",
    )  # fmt: skip

    def __init__(self, raw: dict[str, Any]) -> None:
        self.part = str(raw.get("part", ""))
        self.title = str(raw.get("title") or self.part)
        #: "done" | "skipped" | "not_started" | "rolled_back" | "failed" | "needs_recover",
        #: None in a plan
        self.state = _str(raw.get("state"))
        self.detail = _str(raw.get("detail"))
        self.error = _str(raw.get("error"))
        self.code = _str(raw.get("code"))
        self.old_fingerprint = _str(raw.get("old_fingerprint"))
        self.new_fingerprint = _str(raw.get("new_fingerprint"))
        #: when the part ran, epoch ms (None: it did not start)
        self.started_at = _number(raw.get("started_at"))
        self.finished_at = _number(raw.get("finished_at"))
        self.duration_ms = _number(raw.get("duration_ms"))
        # the DB password: its login, every account it opened, the routes it was proven on
        self.db_user = _str(raw.get("db_user"))
        self.accounts = _strs(raw.get("accounts"))
        self.routes = tuple(RouteResult(r) for r in _dicts(raw.get("routes")))
        #: a plan's: the password is in ``.env`` (True), set in the profile (False), not said (None)
        self.password_in_env: bool | None = bool(raw["env_key"]) if "env_key" in raw else None
        #: a plan's: this engine can rotate the DB password; the profile has an ``[agents]`` section
        self.available = raw.get("available", True) is not False
        self.configured = raw.get("configured", True) is not False
        # the key: stored values by column; the agents: how many of how many were rotated
        self.total = _number(raw.get("total"))
        self.columns = {str(k): v for k, v in raw["columns"].items()} if isinstance(raw.get("columns"), dict) else {}
        self.rotated = _number(raw.get("rotated"))
        self.agents = tuple(AgentResult(a) for a in _dicts(raw.get("agents")))


class Outcome(_Record):
    """How one operation ended. Build it with ``Outcome.of(closing_event)``."""

    __slots__ = (
        "accounts",
        "agents",
        "code",
        "db_host",
        "db_user",
        "details",
        "done",
        "dry_run",
        "duration_ms",
        "exit_status",
        "left",
        "manual",
        "message",
        "new_fingerprint",
        "nothing_changed",
        "ok",
        "old_fingerprint",
        "op",
        "panel",
        "parts",
        "proven",
        "retryable",
        "rolled_back",
        "rotation_id",
        "routes",
        "state",
        "total",
        "unfinished",
    )  # fmt: skip

    op: str
    ok: bool
    dry_run: bool
    #: the error code (``codes.CODES``), None when it succeeded
    code: str | None
    message: str
    state: str | None
    rolled_back: bool | None
    retryable: bool
    #: the panel is known to be exactly as it was
    nothing_changed: bool
    #: the CLI's exit status (``codes.EXIT_*``)
    exit_status: int
    #: what was done, proven and left, one short plain sentence each (no markup, no secret)
    done: tuple[str, ...]
    proven: tuple[str, ...]
    left: tuple[str, ...]
    rotation_id: str | None
    panel: str | None
    old_fingerprint: str | None
    new_fingerprint: str | None
    total: int
    duration_ms: int
    agents: tuple[AgentResult, ...]
    parts: tuple[PartResult, ...]
    #: an incident's parts that did not finish (``left``), and what a person must rotate elsewhere
    unfinished: tuple[PartResult, ...]
    manual: tuple[ManualItem, ...]
    #: the DB password's login, the accounts it opens, the routes the old one was refused on
    db_user: str | None
    db_host: str | None
    accounts: tuple[str, ...]
    routes: tuple[RouteResult, ...]
    #: the error's extra facts (``locations``, ``differences``, ``plan``), for renderers
    details: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an Outcome is immutable")

    @property
    def advice(self) -> codes.Code | None:
        """The code's row: its meaning and what to do next (None when it succeeded)."""
        return codes.lookup(self.code) if self.code else None

    @classmethod
    def of(cls, event: dict[str, Any], op: str | None = None) -> Outcome:
        """Read a closing ``result`` or ``error`` event (``op``: the request's, for an error)."""
        if event.get("type") == "error":
            return _of_error(event, op or str(event.get("op") or ""))
        if event.get("type") != "result":
            raise ValueError("not a closing event")
        return _of_result(event, str(event.get("op") or op or ""))


def _of_error(event: dict[str, Any], op: str) -> Outcome:
    code = str(event.get("code") or "engine_error")
    row = codes.lookup(code)
    rolled_back: bool | None = event.get("rolled_back")
    status = event.get("exit_status")
    if not isinstance(status, int) or isinstance(status, bool):
        status = row.exit_status
    done: tuple[str, ...] = ()
    proven: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    if rolled_back is True:
        done = ("rolled back: the panel is as it was",)
        proven = ("every stored value opens with the old key",)
    elif rolled_back is False or row.exit_status == codes.EXIT_NEEDS_RECOVER:
        left = ("the rotation is unfinished: run recover on the panel host",)
    reserved = {"type", "code", "message", "retryable", "rolled_back", "exit_status", "id", "seq", "ts", "op"}
    return Outcome(
        op=op, ok=False, dry_run=False, code=code, message=str(event.get("message") or row.meaning),
        state=None, rolled_back=rolled_back, retryable=bool(event.get("retryable", row.retryable)),
        nothing_changed=row.nothing_changed, exit_status=status, done=done, proven=proven, left=left,
        rotation_id=_str(event.get("id")), panel=None, old_fingerprint=None, new_fingerprint=None,
        total=0, duration_ms=0, agents=(), parts=(), unfinished=(), manual=(), **_login(event), routes=(),
        details={k: v for k, v in event.items() if k not in reserved},
    )  # fmt: skip


def _of_result(event: dict[str, Any], op: str) -> Outcome:
    agents = tuple(AgentResult(a) for a in _dicts(event.get("agents")))
    parts = tuple(PartResult(p) for p in _dicts(event.get("parts")))
    ok = event.get("ok", True) is not False
    code = _str(event.get("code")) if not ok else None
    dry_run = event.get("dry_run") is True
    done, proven, left = _facts(op, event, agents, parts, dry_run)
    return Outcome(
        op=op, ok=ok, dry_run=dry_run, code=code, message=str(event.get("message") or ""),
        state=_str(event.get("state")), rolled_back=event.get("rolled_back"), retryable=False,
        nothing_changed=dry_run or op not in _FACTS,
        exit_status=_result_exit_status(op, event, ok, code), done=done, proven=proven, left=left,
        rotation_id=_str(event.get("rotation_id")), panel=_str(event.get("panel")),
        old_fingerprint=_str(event.get("old_fingerprint")), new_fingerprint=_str(event.get("new_fingerprint")),
        total=_int(event.get("total")), duration_ms=_int(event.get("duration_ms")), agents=agents,
        parts=parts, unfinished=tuple(PartResult(p) for p in _dicts(event.get("left"))),
        manual=tuple(ManualItem(i) for i in _dicts(event.get("manual"))), **_login(event),
        routes=tuple(RouteResult(r) for r in _dicts(event.get("routes"))), details={},
    )  # fmt: skip


def _login(event: dict[str, Any]) -> dict[str, Any]:
    """The DB password's login and accounts (a result's, or an error's details)."""
    return {"db_user": _str(event.get("db_user")), "db_host": _str(event.get("db_host")),
            "accounts": _strs(event.get("accounts"))}  # fmt: skip


def _result_exit_status(op: str, event: dict[str, Any], ok: bool, code: str | None) -> int:
    """A result's exit status: 0 unless the result itself says the run did not succeed."""
    if op in _PROBING and (event.get("problem") or not event.get("scheme")):
        return codes.EXIT_FAILED  # the profile and the stored values do not agree
    verdict = event.get("verdict")
    if op in _STATUS and isinstance(verdict, dict) and verdict.get("state") == "unfinished":
        return codes.EXIT_NEEDS_RECOVER  # so monitoring can alert on it
    if ok:
        return codes.EXIT_OK
    stopped = event.get("stopped")
    if isinstance(stopped, dict):  # a run of parts: the part's code is not the run's status
        return codes.EXIT_NEEDS_RECOVER if stopped.get("state") == "needs_recover" else codes.EXIT_FAILED
    return codes.lookup(code).exit_status if code else codes.EXIT_FAILED


Facts = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _key_facts(event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...]) -> Facts:
    old, new = event.get("old_fingerprint"), event.get("new_fingerprint")
    if not new:
        return (), (), ()
    done = (f"key {old}… → {new}…, {_int(event.get('total')):,} stored values re-encrypted",)
    return done, ("every stored value opens with the new key",) if event.get("verified") else (), ()


def _db_password_facts(
    event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...]
) -> Facts:
    old, new = event.get("old_fingerprint"), event.get("new_fingerprint")
    if not new:
        return (), (), ()
    proven = ("the panel's database login works with the new password",) if event.get("verified") else ()
    return (f"database password {old}… → {new}…",), proven, ()


def _agent_facts(event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...]) -> Facts:
    done: list[str] = []
    proven: list[str] = []
    left: list[str] = []
    for agent in agents:
        if agent.outcome == "rotated":
            done.append(f"{agent.name}: token {agent.old_fingerprint}… → {agent.new_fingerprint}…")
            proven.append(f"{agent.name} re-registered with its new token")
        elif agent.unverified:
            done.append(f"{agent.name}: new token (whether the old one still works is unknown)")
            left.append(f"{agent.name}: check by hand that its old token is refused")
        else:
            left.append(f"{agent.name}: failed at {agent.failed_step}; request again for it")
    return tuple(done), tuple(proven), tuple(left)


def _incident_facts(
    event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...]
) -> Facts:
    done = tuple(f"{p.title}: {p.detail or 'done'}" for p in parts if p.state == "done")
    proven = tuple(f"{p.title}: verified" for p in parts if p.state == "done")
    unfinished = ("not_started", "failed", "needs_recover", "rolled_back")
    left = tuple(f"{p.title}: {(p.state or '').replace('_', ' ')}" for p in parts if p.state in unfinished)
    return done, proven, left


def _recover_facts(event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...]) -> Facts:
    if event.get("direction") in (None, "none"):
        return (), (), ()
    done = f"rotation {event.get('rotation_id')} converged: {event.get('state')} ({event.get('direction')})"
    return (done,), (), ()


#: How to read each operation's result (the operations without one say nothing was changed).
_FACTS = {
    "rotate-key": _key_facts,
    "rotate-db-password": _db_password_facts,
    "rotate-agent": _agent_facts,
    "rotate-incident": _incident_facts,
    "recover": _recover_facts,
}
#: Operations whose result is a layout that may not fit the profile.
_PROBING = frozenset({"probe"})
#: Operations whose result gives the panel's verdict (running, unfinished or clear).
_STATUS = frozenset({"status"})


def _facts(
    op: str, event: dict[str, Any], agents: tuple[AgentResult, ...], parts: tuple[PartResult, ...], dry_run: bool
) -> Facts:
    """(done, proven, left) of a result, one plain sentence each."""
    read = _FACTS.get(op)
    if dry_run or read is None:
        return (), (), ()
    return read(event, agents, parts)
