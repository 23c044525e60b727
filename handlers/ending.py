"""``Ending``: how a finished request ended, read once from the outcome the store keeps.

The runner keeps a finished request's outcome as the engine's closing event plus what
the bot knows of it (how long it ran, whether nothing changed, the audit anchor). Every
renderer (the card, the thread's summary, the incident report, the Home tab) reads it
through ``Ending.of(request.outcome)``, here and only here, never by its keys: this module
is the one place that turns the stored keys into attributes (DESIGN.md section 9,
rule 10), so the switch to the protocol's typed ``Outcome`` is made here.

``kept_outcome`` is what the runner keeps of an engine's closing event: its fields, and
what the protocol's typed ``Outcome`` of it says (done, partial, failed, whether nothing
changed).

A finished engine run's lists are read into the protocol's types: each incident part and
what is left (``PartResult``), the manual list (``ManualItem``), the DB password's routes
(``RouteResult``) and accounts. Each agent is kept as the engine sent it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.protocol.outcome import AgentResult, ManualItem, Outcome, PartResult, RouteResult

Item = Mapping[str, Any]
__all__ = ["AgentResult", "Ending", "ManualItem", "PartResult", "RouteResult", "kept_outcome"]


def _items(value: object) -> tuple[Item, ...]:
    return tuple(v for v in value if isinstance(v, Mapping)) if isinstance(value, list | tuple) else ()


def _list(value: object) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else ()


@dataclass(frozen=True)
class Ending:
    """What a finished request's outcome says, as attributes."""

    #: the request did what it was asked, and it was verified
    ok: bool = False
    #: the engine finished, but not everything succeeded (some agents, an incident part)
    partial: bool = False
    #: the error code (the engine's, or the bot's when it lost the engine), None when done
    code: str | None = None
    #: what happened, in the engine's or the bot's words (None: it said nothing)
    message: str | None = None
    #: True: rolled back; False: NOT rolled back (recover); None: not said
    rolled_back: bool | None = None
    #: the panel is known to be exactly as it was
    nothing_changed: bool = False
    #: after a roll-back: whether the old key was verified (None: not said)
    verified_old: Any = None
    duration_ms: int | None = None
    #: the audit chain's position when the run closed: (seq, digest)
    audit: tuple[int, str] | None = None
    #: the summary was posted (False: the runner posts it after a restart)
    reported: bool | None = None
    #: why a request was voided without a plan change (an offboarding), and the plan's changes
    voided_because: str | None = None
    differences: tuple[str, ...] = ()
    # --- the key ---------------------------------------------------------------------------
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    total: int | None = None
    columns: dict[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    escrow: str | None = None
    #: True, False, a count of verified values, or None (not reported)
    verified: Any = None
    panel_check: str | None = None
    #: ``undecryptable``: where the values the current key does not open are
    locations: tuple[Any, ...] = ()
    # --- agents, the incident's parts, the DB password ------------------------------------
    agents: tuple[Any, ...] = ()
    parts: tuple[PartResult, ...] = ()
    #: the incident's parts not done nor skipped
    left: tuple[PartResult, ...] = ()
    manual: tuple[ManualItem, ...] = ()
    db_user: str | None = None
    routes: tuple[RouteResult, ...] = ()
    #: every account the DB password opens (as text)
    accounts: tuple[str, ...] = ()

    @classmethod
    def of(cls, outcome: Mapping[str, Any]) -> Ending:
        """Read a stored outcome (the closing event's fields plus the bot's own)."""
        get = outcome.get
        anchor = get("audit") or {}
        audit = (int(anchor["seq"]), str(anchor["digest"])) if anchor.get("seq") and anchor.get("digest") else None
        return cls(
            ok=get("ok") is True,
            partial=bool(get("partial")),
            code=None if get("code") is None else str(get("code")),
            message=None if get("message") is None else str(get("message")),
            rolled_back=get("rolled_back"),
            nothing_changed=bool(get("nothing_changed")),
            verified_old=get("verified_old"),
            duration_ms=get("duration_ms"),
            audit=audit,
            reported=get("reported"),
            voided_because=get("voided_because") or None,
            differences=tuple(str(d) for d in get("differences") or ()),
            old_fingerprint=get("old_fingerprint"),
            new_fingerprint=get("new_fingerprint"),
            total=get("total"),
            columns=dict(get("columns") or {}),
            skipped=tuple(get("skipped") or ()),
            escrow=get("escrow") or None,
            verified=get("verified"),
            panel_check=get("panel_check") or None,
            locations=_list(get("locations")),
            agents=_list(get("agents")),
            parts=tuple(PartResult(dict(p)) for p in _items(get("parts"))),
            left=tuple(PartResult(dict(p)) for p in _items(get("left"))),
            manual=tuple(ManualItem(i) for i in _items(get("manual"))),
            db_user=get("db_user"),
            routes=tuple(RouteResult(dict(r)) for r in _items(get("routes"))),
            accounts=tuple(str(a) for a in _list(get("accounts"))),
        )

    @classmethod
    def read(cls, outcome: Ending | Mapping[str, Any]) -> Ending:
        """``outcome`` as an ``Ending`` (read once, if it is still the stored mapping)."""
        return outcome if isinstance(outcome, Ending) else cls.of(outcome)


def kept_outcome(closing: Mapping[str, Any], *, highest_step: int) -> dict[str, Any]:
    """What the store keeps of an engine's closing ``result`` or ``error`` event: its fields,
    and what the protocol's ``Outcome`` of it says of the request.

    A result that is not ``ok`` is partial: the engine finished, some agents (or the
    incident's later parts) were not rotated or not proven, each reported in the thread.
    An error changed nothing when its code says so (the protocol's codes table), or when
    the run stopped before its second step (``highest_step``: the highest step index the
    run reported) and the engine did not say whether it rolled back.
    """
    engine = Outcome.of(dict(closing))
    data = {k: v for k, v in closing.items() if k not in ("type", "id", "seq", "ts")}
    if engine.ok:
        return {**data, "ok": True}
    if closing.get("type") == "result":
        return {**data, "partial": True, "code": engine.code or "agent_failed", "rolled_back": None}
    nothing_changed = engine.rolled_back is None and (engine.nothing_changed or highest_step <= 1)
    return {**data, "ok": False, "code": engine.code, "nothing_changed": nothing_changed}
