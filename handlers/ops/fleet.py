"""The fleet: one approved request rotates many panels (``/rotate-offboard``, and
``/rotate-key --panels a,b | --tag prod | --all-panels``).

The operation on the Slack side is three modules: this one (settings, parsing and help,
planning every panel with its own engine ``plan`` in parallel, the offboarding done at
filing time: the person's approvals and TOTP enrollment revoked, their pending requests
voided; the listeners), ``fleet_views`` (the card, the checklist message while it runs,
the summary, the per-panel CSV table) and ``fleet_model`` (what is kept of each panel's
plan, a panel's run). ``bot.fleet_runner`` runs an approved fleet: each panel is its own engine
run over its own SSH session.

A fleet request is a ``RotationRequest`` of op ``rotate-fleet``, so approvals, expiry,
denial, cancelling and step-up are the usual ones. Its plan binds every panel's plan
hash (``PlanView.fleet``): a panel whose host, key or engine changed before its turn is
refused by its engine (plan mismatch) and left unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_bolt import Ack, App
from slack_sdk import WebClient

from handlers import cards
from handlers import messages as m
from handlers.errors import PlanError, new_reference
from handlers.lanes import Lane
from handlers.ops import Operation
from handlers.ops.fleet_model import OP, compact_leg, fleet_label, members, panels_of, runnable
from handlers.ops.fleet_views import headline, manual_checklist, request_card, table_csv, upload_table
from handlers.plan_view import PlanView
from handlers.ports import HandlerDeps
from handlers.rotation_request import Person, RotationRequest, State

log = logging.getLogger(__name__)

OFFBOARD = "/rotate-offboard"
MIN_REASON = 3
MAX_REASON = 500
#: ``--with`` parts, in the incident order (each verified before the next)
PARTS: tuple[str, ...] = ("db-password", "key", "agents")
_MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$")
_FLAGS = ("--panels", "--tag", "--all-panels", "--with")
#: lines of panels the checklist and the card show before "… and N more (see the file)"
MAX_PANEL_LINES = 120
MAX_SECTIONS_OF_LINES = 6
# --- settings and ports ------------------------------------------------------------------


class Offboarding(Protocol):
    """What the bot does for an offboarding, outside the request store (``bot.fleet_runner``)."""

    def revoke(self, user_id: str, *, by: Person, request_id: str) -> bool:
        """Mark ``user_id`` offboarded and remove their TOTP enrollment (both audited);
        True if they had an enrollment."""
        ...

    def is_offboarded(self, user_id: str) -> bool: ...

    def refused(self, person: Person, act: str) -> None:
        """Audit that an offboarded ``person`` tried to ``act`` and was refused."""
        ...


@dataclass(frozen=True)
class FleetSettings:
    """The fleet's part of the settings (``HandlerDeps.ops_config["rotate-fleet"]``)."""

    #: panel -> its tags
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: user id -> the panels (or ``tag:NAME``) they could reach; not listed: every panel
    reach: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    concurrency: int = 4
    stop_on_failure: bool = False
    #: plans asked at once while a fleet request is planned
    plan_threads: int = 8
    offboarding: Offboarding | None = None


def settings_of(deps: HandlerDeps) -> FleetSettings:
    found = deps.ops_config.get(OP)
    return found if isinstance(found, FleetSettings) else FleetSettings()


# --- parsing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetParsed:
    """A well-formed fleet request, before anyone checked who asked."""

    panels: tuple[str, ...]
    reason: str
    #: how the panels were chosen, in the card's words
    selector: str
    parts: tuple[str, ...] = ("key",)
    #: ``/rotate-offboard``: the departing person's user id
    person: str = ""
    #: the settings do not list the person's reach: every panel
    reach_default: bool = False


def claims_rotate_key(text: str) -> bool:
    """``/rotate-key`` text that names several panels belongs to the fleet."""
    return any(word.split("=", 1)[0] in ("--panels", "--tag", "--all-panels") for word in text.split())


def _options(words: list[str], allowed: Sequence[str]) -> dict[str, str]:
    """Pop ``--flag value`` / ``--flag=value`` / ``--all-panels`` off the front of ``words``."""
    found: dict[str, str] = {}
    while words and words[0].startswith("--"):
        word = words.pop(0)
        name, _, value = word.partition("=")
        if name not in _FLAGS or name not in allowed:
            raise _Refusal(m.esc(f"Unknown option {m.fit(name, 40)}. Options: {', '.join(allowed)}."))
        if name in found:
            raise _Refusal(m.esc(f"{name} is given twice."))
        if name != "--all-panels" and not value:
            if not words or words[0].startswith("--"):
                raise _Refusal(m.esc(f"{name} needs a value, e.g. {_EXAMPLES[name]}."))
            value = words.pop(0)
        found[name] = value
    return found


_EXAMPLES = {
    "--panels": "--panels prod-eu,prod-us",
    "--tag": "--tag prod",
    "--with": "--with db-password,agents",
}


class _Refusal(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _parts(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ("key",)
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in ("db-password", "agents")]
    if not names or bad:
        shown = m.esc(m.fit(",".join(bad) or value, 40))
        raise _Refusal(f"`--with` takes `db-password`, `agents` or both (`--with db-password,agents`), not `{shown}`.")
    return tuple(p for p in PARTS if p == "key" or p in names)


def _reason(words: list[str], example: str) -> str:
    reason = " ".join(words).strip()
    if len(reason) < MIN_REASON:
        raise _Refusal(m.esc(f"Say why, e.g. `{example}`."))
    if len(reason) > MAX_REASON:
        raise _Refusal(m.reason_too_long(MAX_REASON))
    return reason


def _unknown_panels(names: Sequence[str], panels: Sequence[str]) -> str:
    import difflib

    hints = []
    for name in names[:5]:
        close = difflib.get_close_matches(name, panels, n=1, cutoff=0.75)
        hints.append(f"`{m.esc(m.fit(name, 64))}`" + (f" (did you mean `{m.esc(close[0])}`?)" if close else ""))
    return (
        f"Unknown panel{'s' if len(names) > 1 else ''} {', '.join(hints)}. "
        f"Known panels: {m.esc(m.some_names(panels, 20))}."
    )


def select_panels(
    options: Mapping[str, str], panels: Sequence[str], tags: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[str, ...], str]:
    """The panels ``--panels``/``--tag``/``--all-panels`` choose, and how to say so."""
    chosen = [o for o in ("--panels", "--tag", "--all-panels") if o in options]
    if len(chosen) > 1:
        raise _Refusal(m.esc(f"Choose panels one way: {' or '.join(chosen)}, not both."))
    if "--all-panels" in options:
        return tuple(sorted(panels)), "all panels"
    if "--tag" in options:
        wanted = [t for t in options["--tag"].split(",") if t]
        known = sorted({t for ts in tags.values() for t in ts})
        unknown = [t for t in wanted if t not in known]
        if not wanted or unknown:
            listed = ", ".join(f"`{t}`" for t in known) or "none (add `tags = [...]` to a panel's settings)"
            raise _Refusal(
                f"Unknown tag `{m.esc(m.fit(','.join(unknown) or options['--tag'], 40))}`. Known tags: {m.esc(listed)}."
            )
        found = tuple(p for p in sorted(panels) if set(tags.get(p, ())) & set(wanted))
        return found, "tag " + ", ".join(wanted)
    names = list(dict.fromkeys(n for n in options["--panels"].split(",") if n))
    unknown = [n for n in names if n not in panels]
    if unknown:
        raise _Refusal(_unknown_panels(unknown, panels))
    if not names:
        raise _Refusal(m.esc(f"Name the panels, e.g. {_EXAMPLES['--panels']}."))
    return tuple(sorted(names)), "panels " + ", ".join(sorted(names))


def parse_fleet_key(text: str, panels: Sequence[str], settings: FleetSettings) -> FleetParsed | str:
    """``/rotate-key --panels a,b|--tag T|--all-panels [--with db-password,agents] <reason>``."""
    words = text.split()
    try:
        options = _options(words, ("--panels", "--tag", "--all-panels", "--with"))
        chosen, selector = select_panels(options, panels, settings.tags)
        if not chosen:
            raise _Refusal(m.esc(f"No panel has {selector}."))
        reason = _reason(words, "/rotate-key --tag prod quarterly review")
        return FleetParsed(chosen, reason, selector, _parts(options.get("--with")))
    except _Refusal as refusal:
        return refusal.message


def parse_offboard(text: str, panels: Sequence[str], settings: FleetSettings, requester: str = "") -> FleetParsed | str:
    """``/rotate-offboard @person [--with db-password,agents] <reason>``."""
    words = text.split()
    usage = (
        "`/rotate-offboard @person [--with db-password,agents] <reason>`, "
        "e.g. `/rotate-offboard @erin left the ops team, HR-2211`"
    )
    if not words:
        return f"Who is leaving? {usage}."
    match = _MENTION.match(words[0])
    if match is None:
        return (
            f"Name the person with an @-mention that Slack turns into their user id "
            f"(`{m.esc(m.fit(words[0], 40))}` is not one). {usage}."
        )
    person = match.group(1)
    if person == requester:
        return "You cannot offboard yourself: ask a colleague to file it."
    words.pop(0)
    try:
        options = _options(words, ("--with",))
        reason = _reason(words, "/rotate-offboard @erin left the ops team, HR-2211")
        parts = _parts(options.get("--with"))
    except _Refusal as refusal:
        return refusal.message
    reach = settings.reach.get(person)
    if not reach:
        return FleetParsed(tuple(sorted(panels)), reason, "every panel", parts, person, True)
    chosen: set[str] = set()
    for entry in reach:
        if entry.startswith("tag:"):
            chosen |= {p for p in panels if entry[4:] in settings.tags.get(p, ())}
        elif entry in panels:
            chosen.add(entry)
    return FleetParsed(tuple(sorted(chosen)), reason, "the panels the settings list", parts, person)


# --- planning ----------------------------------------------------------------------------


def legs_for(parts: Sequence[str]) -> tuple[str, ...]:
    """The engine runs of one panel, in the incident order: all three parts are the
    engine's ``rotate-incident`` (one run); fewer are one run each."""
    if "db-password" in parts and "agents" in parts:
        return ("rotate-incident",)
    legs = {"db-password": "rotate-db-password", "key": "rotate-key", "agents": "rotate-agent"}
    return tuple(legs[p] for p in PARTS if p in parts)


def plan_member(
    deps: HandlerDeps, panel: str, legs: Sequence[str], request_id: str, tags: Sequence[str]
) -> dict[str, Any]:
    """One panel's plans (one per leg), or why it could not be planned."""
    plans: list[PlanView] = []
    try:
        for n, leg in enumerate(legs):
            plans.append(
                deps.planner.plan(
                    panel=panel,
                    op=leg,
                    agents=(),
                    all_agents=leg == "rotate-agent",
                    request_id=f"{request_id}.{n}",
                )
            )
    except PlanError as exc:
        return {
            "panel": panel,
            "tags": list(tags),
            "error": m.fit(exc.message, 300),
            "code": exc.code,
            "plan_hashes": None,
        }
    except Exception as exc:  # one panel's surprise must not sink the fleet's plan
        ref = new_reference()
        log.exception("ref %s: planning %s failed", ref, panel)
        return {"panel": panel, "tags": list(tags), "error": f"could not plan ({type(exc).__name__}, ref {ref})",
                "code": "plan_failed", "plan_hashes": None}  # fmt: skip
    key = next((p for p in plans if p.key_fingerprint), plans[0])
    return {
        "panel": panel,
        "tags": list(tags),
        "plan_hashes": [p.hash for p in plans],
        "legs": [compact_leg(p) for p in plans],
        "values": max((p.total for p in plans), default=0),
        "key_fingerprint": key.key_fingerprint,
        "db_password": any(p.password_fingerprint for p in plans),
        "agents": sorted({a for p in plans for a in p.agents}),
        "host": key.panel_host or panel,
        "host_key": key.host_key_fingerprint,
    }


def plan_fleet(deps: HandlerDeps, parsed: FleetParsed, request_id: str) -> PlanView:
    """Every chosen panel planned (in parallel, bounded); the fleet's ``PlanView``."""
    settings = settings_of(deps)
    legs = legs_for(parsed.parts)
    with ThreadPoolExecutor(max_workers=max(1, min(settings.plan_threads, len(parsed.panels)))) as pool:
        members = list(
            pool.map(
                lambda panel: plan_member(deps, panel, legs, request_id, settings.tags.get(panel, ())),
                parsed.panels,
            )
        )
    versions = sorted({str(leg.get("engine_version")) for mem in members for leg in mem.get("legs") or ()})
    return PlanView(
        panel=fleet_label(len(members)),
        op=OP,
        engine_version=",".join(versions),
        host_key_fingerprint="",
        fleet={
            "kind": "offboard" if parsed.person else "panels",
            "person": parsed.person,
            "selector": parsed.selector,
            "reach_default": parsed.reach_default,
            "parts": list(parsed.parts),
            "legs": list(legs),
            "members": members,
        },
    )


# --- filing: offboarding done at request time ---------------------------------------------


def revoke_person(deps: HandlerDeps, client: WebClient, request: RotationRequest) -> dict[str, Any]:
    """Offboarding at filing time: the person's TOTP enrollment and approvals are revoked
    (audited by the bot), and each active request they made or approved that has not
    started is voided, with the reason on its card and in its thread."""
    person = str(request.plan.fleet.get("person") or "")
    settings = settings_of(deps)
    enrollment = False
    if settings.offboarding is not None:
        enrollment = settings.offboarding.revoke(person, by=request.requester, request_id=request.id)
    voided: list[str] = []
    for other in deps.store.list_in_states([State.PENDING, State.APPROVED], limit=1000):
        if other.id == request.id:
            continue
        made = other.requester.user_id == person
        approved = any(a.person and a.person.user_id == person for a in other.approvals)
        if not (made or approved):
            continue
        why = (
            f"<@{person}> was offboarded by request `{m.esc(request.id)}`: "
            + ("their request no longer counts" if made else "their approval no longer counts")
            + "; request again if it is still needed"
        )
        done = _void(deps, other, why, request)
        if done is not None:
            voided.append(done.id)
            cards.refresh_card(client, done, deps.policy, deps.clock())
            cards.post_thread(client, done, f"{done.requester.mention} :warning: Voided: {why}.")
    return {"person": person, "enrollment_revoked": enrollment, "approvals_revoked": True, "voided": voided}


def _void(deps: HandlerDeps, request: RotationRequest, why: str, by: RotationRequest) -> RotationRequest | None:
    current: RotationRequest | None = request
    for _ in range(20):
        if current is None or current.state not in (State.PENDING, State.APPROVED):
            return None
        stored = deps.store.update(
            current.evolve(
                state=State.VOIDED,
                finished_at=deps.clock(),
                outcome={"voided_because": why, "voided_by": by.id},
            ),
            expected_version=current.version,
            event="voided",
            actor=by.requester.key,
            detail={"offboarding": by.id},
        )
        if stored is not None:
            return stored
        current = deps.store.get(request.id)
    return None


#: what an offboarded person is told, per act (``handlers.ops.ACTS``)
OFFBOARDED_ANSWERS = {
    "request": "You were offboarded: you can no longer request rotations.",
    "approve": "You were offboarded: your approvals no longer count. Ask a colleague to approve.",
    "deny": "You were offboarded: you can no longer deny requests. Ask a colleague to decide.",
}
#: what an offboarded person's Home tab says instead of its buttons
OFFBOARDED_HOME = "You were offboarded: you can no longer request, approve or deny rotations."
RESTORE_HINT = " If this is a mistake, an admin can restore you (`python -m bot people restore`)."


def refusal(deps: HandlerDeps, person: Person, act: str) -> str | None:
    """The offboarding rule: from the moment an offboarding is filed, the departing person
    may not request, approve or deny on any surface (audited: ``person.refused``). A denied
    or expired offboarding request does not restore them (docs/operations.md)."""
    offboarding = settings_of(deps).offboarding
    if offboarding is None or not offboarding.is_offboarded(person.user_id):
        return None
    offboarding.refused(person, act)
    return OFFBOARDED_ANSWERS.get(act, OFFBOARDED_ANSWERS["request"]) + RESTORE_HINT


def barred(deps: HandlerDeps, person: Person) -> str | None:
    """The same rule, as the Home tab says it instead of offering buttons; not audited,
    since opening the tab is not an attempt to act."""
    offboarding = settings_of(deps).offboarding
    if offboarding is None or not offboarding.is_offboarded(person.user_id):
        return None
    return OFFBOARDED_HOME + RESTORE_HINT


# --- the commands ----------------------------------------------------------------------------


def open_fleet_request(
    deps: HandlerDeps, client: WebClient, parsed: FleetParsed, person: Person, channel: str
) -> RotationRequest | None:
    """Check who asks, plan every panel, store the request, revoke (offboarding), post."""
    from handlers.commands import _post, request_refusal  # the card's posting, the one access rule

    refused = request_refusal(deps, person, channel)
    if refused:
        cards.tell(client, channel, person.user_id, refused)
        return None
    pending = deps.store.pending_of(person.user_id, limit=deps.policy.max_pending_per_user)
    if len(pending) >= deps.policy.max_pending_per_user:
        cards.tell(client, channel, person.user_id,
                   m.too_many_pending(deps.policy.max_pending_per_user, [r.id for r in pending]))  # fmt: skip
        return None
    cards.tell(
        client, channel, person.user_id,
        f":hourglass_flowing_sand: Asking the engines of {fleet_label(len(parsed.panels))} for a plan…",
    )  # fmt: skip
    now = deps.clock()
    request_id = deps.new_id(now)
    plan = plan_fleet(deps, parsed, request_id)
    if not runnable(plan):
        reasons = "; ".join(f"{mem['panel']}: {mem['error']}" for mem in members(plan)[:5])
        cards.tell(client, channel, person.user_id,
                   f"No panel could be planned, so nothing was requested: {m.esc(m.fit(reasons, 1500))}.")  # fmt: skip
        return None
    request = RotationRequest(
        id=request_id,
        op=OP,
        panel=plan.panel,
        reason=parsed.reason,
        requester=person,
        channel_id=channel,
        plan=plan,
        created_at=now,
        expires_at=now + deps.policy.expiry_s,
    )
    for _ in range(20):
        if deps.store.create(request, actor=person.key):
            break
        request = request.evolve(id=deps.new_id(now))
    else:
        raise RuntimeError("could not find a free request id")
    if parsed.person:
        done = revoke_person(deps, client, request)
        for _ in range(20):
            current = deps.store.get(request.id)
            if current is None:
                break
            stored = deps.store.update(
                current.evolve(progress={**current.progress, "offboarded": done}),
                expected_version=current.version,
                event="offboarded",
                actor=person.key,
                detail={"person": parsed.person, "voided": done["voided"]},
            )
            if stored is not None:
                request = stored
                break
    posted = _post(deps, client, request, person, channel)
    if posted is None:
        return None
    upload_table(client, posted, table_csv(posted), f"{posted.id}-plan.csv", f"Plan of {posted.id}")
    if parsed.person:
        cards.post_thread(client, posted, manual_checklist(posted))
    return posted


def _listener(
    deps: HandlerDeps, parse: Callable[[str, str], FleetParsed | str]
) -> Callable[[dict[str, Any], Ack], None]:
    client = deps.client

    def fleet_command(body: dict[str, Any], ack: Ack) -> None:
        channel = str(body.get("channel_id", ""))
        if not deps.policy.channel_allowed(channel):
            ack(text=m.wrong_channel(deps.policy.channels))
            return
        parsed = parse(str(body.get("text", "")), str(body.get("user_id", "")))
        if isinstance(parsed, str):
            ack(text=parsed)
            return
        if not parsed.panels:
            ack(text="No configured panel matches that choice, so there is nothing to rotate.")
            return
        ack()
        person = Person(team_id=str(body.get("team_id", "")), user_id=str(body["user_id"]))

        def open_it() -> None:
            with cards.reporting_errors(client, channel, person.user_id, "fleet request"):
                open_fleet_request(deps, client, parsed, person, channel)

        deps.after_ack(body, open_it, lane=Lane.PLAN)

    return fleet_command


def rotate_key_listener(deps: HandlerDeps) -> Callable[[dict[str, Any], Ack], None]:
    panels = list(deps.panels)
    return _listener(deps, lambda text, user: parse_fleet_key(text, panels, settings_of(deps)))


def register(app: App, deps: HandlerDeps) -> None:
    panels = list(deps.panels)
    app.command("/rotate-offboard")(
        _listener(deps, lambda text, user: parse_offboard(text, panels, settings_of(deps), user))
    )


def plan_digest(plan: PlanView) -> str:
    """A short digest of every panel's plan hashes (for logs and the audit)."""
    joined = "|".join(f"{mem['panel']}:{','.join(mem.get('plan_hashes') or ())}" for mem in runnable(plan))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


HELP_LINES = (
    m.esc(
        "• `/rotate-key --panels a,b | --tag prod | --all-panels [--with db-password,agents] <reason>`: "
        "rotate the key of several panels with one approval."
    ),
    m.esc(
        "• `/rotate-offboard @person [--with db-password,agents] <reason>`: someone with server access "
        "left: rotate every panel they could reach, revoke their approvals and TOTP enrollment."
    ),
)

OPERATION = Operation(
    name=OP,
    commands=(OFFBOARD,),
    card=request_card,
    headline=headline,
    panels=panels_of,
    help_lines=HELP_LINES,
    register=register,
    shares={"/rotate-key": (claims_rotate_key, rotate_key_listener)},
    refusal=refusal,
    barred=barred,
)
