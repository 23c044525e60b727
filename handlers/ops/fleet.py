"""The fleet: one approved request rotates many panels (``/rotate-offboard``, and
``/rotate-key --panels a,b | --tag prod | --all-panels``).

Everything about the operation on the Slack side lives here: parsing and help, planning
every panel (each panel's own engine ``plan``, in parallel), the card, the offboarding
done at filing time (the person's approvals and TOTP enrollment revoked, their pending
requests voided), the checklist message while it runs, the summary, the per-panel table
(a CSV file) and the listener wiring. ``bot.fleet`` runs an approved fleet: each panel is
its own engine run over its own SSH session.

A fleet request is a ``RotationRequest`` of op ``rotate-fleet``, so approvals, expiry,
denial, cancelling and step-up are the usual ones. Its plan binds every panel's plan
hash (``PlanView.fleet``): a panel whose host, key or engine changed before its turn is
refused by its engine (plan mismatch) and left unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from handlers import blocks, cards
from handlers import messages as m
from handlers.ops import Operation
from handlers.plan import PlanView
from handlers.ports import (
    HandlerDeps,
    Lane,
    Person,
    PlanError,
    RotationRequest,
    State,
    new_reference,
)

log = logging.getLogger(__name__)

OP = "rotate-fleet"
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
PANEL_ICONS = {
    "queued": "⏳",
    "running": "▶",
    "verified": "✔",
    "rolled_back": "✖",
    "failed": ":sos:",
    "refused": "⊘",
    "skipped": "⏭",
}
PANEL_WORDS = {
    "queued": "queued",
    "running": "running",
    "verified": "verified",
    "rolled_back": "rolled back",
    "failed": "failed, NOT rolled back",
    "refused": "refused, nothing changed",
    "skipped": "not started",
}
FINAL_PANEL_STATES = frozenset({"verified", "rolled_back", "failed", "refused", "skipped"})


# --- settings and ports ------------------------------------------------------------------


class Offboarding(Protocol):
    """What the bot does for an offboarding, outside the request store (``bot.fleet``)."""

    def revoke(self, user_id: str, *, by: Person, request_id: str) -> bool:
        """Mark ``user_id`` offboarded and remove their TOTP enrollment (both audited);
        True if they had an enrollment."""
        ...

    def is_offboarded(self, user_id: str) -> bool: ...


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


#: What a panel's run needs of each leg's plan (the run request names it; the engine re-checks
#: the rest): kept per panel with the fleet request, the rest of the plan is not.
LEG_FIELDS = (
    "panel", "op", "engine_version", "host_key_fingerprint", "agents", "all_agents", "panel_host",
    "key_fingerprint", "scheme", "total", "engine_plan_hash", "password_fingerprint",
)  # fmt: skip


def compact_leg(plan: PlanView) -> dict[str, Any]:
    data = plan.to_dict()
    return {name: data[name] for name in LEG_FIELDS if data.get(name) not in (None, "", [], 0, False)}


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


def fleet_label(n: int) -> str:
    return m.plural(n, "panel")


def members(plan: PlanView) -> list[dict[str, Any]]:
    return list(plan.fleet.get("members") or ())


def runnable(plan: PlanView) -> list[dict[str, Any]]:
    """The panels this request runs: those that could be planned."""
    return [mem for mem in members(plan) if not mem.get("error")]


def leg_plans(member: Mapping[str, Any]) -> list[PlanView]:
    return [PlanView.from_dict(leg) for leg in member.get("legs") or ()]


def panels_of(request: RotationRequest) -> tuple[str, ...]:
    return tuple(mem["panel"] for mem in runnable(request.plan))


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


def approval_refusal(deps: HandlerDeps, person: Person) -> str | None:
    offboarding = settings_of(deps).offboarding
    if offboarding is not None and offboarding.is_offboarded(person.user_id):
        return "You were offboarded: your approvals no longer count. Ask a colleague to approve."
    return None


# --- the card ----------------------------------------------------------------------------


def _headline(request: RotationRequest) -> str:
    fleet = request.plan.fleet
    n = len(runnable(request.plan))
    icon, word = _title(request)
    if fleet.get("kind") == "offboard":
        who = f"<@{m.esc(fleet.get('person'))}>"
        return f"{icon} Offboarding {who} {word}: rotate every panel they could reach ({fleet_label(n)})"
    return f"{icon} Fleet key rotation {word}: {m.esc(fleet.get('selector'))} ({fleet_label(n)})"


def _title(request: RotationRequest) -> tuple[str, str]:
    state, outcome = request.state, request.outcome
    if state == State.PENDING:
        return (":busts_in_silhouette:" if request.plan.fleet.get("kind") == "offboard" else ":key:"), "requested"
    if state == State.FAILED:
        return ":warning:", "finished with failures" if outcome.get("verified") else "failed"
    return {
        State.APPROVED: (":arrow_forward:", "approved"),
        State.RUNNING: (":arrows_counterclockwise:", "running"),
        State.DONE: (":white_check_mark:", "done"),
        State.DENIED: (":no_entry:", "denied"),
        State.EXPIRED: (":hourglass:", "expired"),
        State.CANCELLED: (":x:", "cancelled"),
        State.VOIDED: (":warning:", "voided"),
    }.get(state, (":key:", state.value))


def _parts_line(plan: PlanView) -> str:
    ok = runnable(plan)
    parts = plan.fleet.get("parts") or ["key"]
    db = sum(1 for mem in ok if mem.get("db_password"))
    agents = sum(len(mem.get("agents") or ()) for mem in ok)
    return (
        "key on all"
        + (f"; DB password on {db}" if "db-password" in parts else "; DB password: no")
        + (f"; agents: {m.plural(agents, 'agent')}" if "agents" in parts else "; agents: no")
    )


def plan_lines(plan: PlanView, most: int = MAX_PANEL_LINES) -> str:
    """The fleet's plan: totals, the panels by their first tag, those that cannot be planned."""
    ok = runnable(plan)
    values = sum(int(mem.get("values") or 0) for mem in ok)
    lines = [
        f"*Plan* `{plan.short_hash}` · {fleet_label(len(ok))} · "
        f"{m.plural(values, 'stored credential')} · {_parts_line(plan)}"
    ]
    fleet = plan.fleet
    if fleet.get("kind") == "offboard":
        if fleet.get("reach_default"):
            lines.append(
                f"Reach: every panel (the settings do not list what <@{m.esc(fleet.get('person'))}> could reach)"
            )
        else:
            lines.append("Reach: the panels the settings list for this person (`offboard_reach`)")
    groups: dict[str, list[dict[str, Any]]] = {}
    for mem in ok:
        groups.setdefault((mem.get("tags") or ["untagged"])[0], []).append(mem)
    shown = 0
    for tag, items in sorted(groups.items()):
        entries = []
        for mem in items:
            if shown >= most:
                break
            shown += 1
            entries.append(
                f"{m.esc(mem['panel'])} {int(mem.get('values') or 0):,} `{m.short_fp(mem.get('key_fingerprint'))}`"
            )
        if entries:
            rest = len(items) - len(entries)
            lines.append(
                f"  *{m.esc(tag)}* ({len(items)})  " + " · ".join(entries) + (f" · … {rest} more" if rest else "")
            )
    if shown < len(ok):
        lines.append(f"  … {len(ok) - shown} more panels: the whole plan is in the thread as a file")
    bad = [mem for mem in members(plan) if mem.get("error")]
    for mem in bad[:20]:
        lines.append(
            f"  :no_entry_sign: cannot plan: {m.esc(mem['panel'])} ({m.esc(m.fit(str(mem['error']), 200))}): "
            "it is left out of this request"
        )
    if len(bad) > 20:
        lines.append(f"  :no_entry_sign: … and {len(bad) - 20} more cannot be planned (see the file)")
    return "\n".join(lines)


def _offboard_lines(request: RotationRequest) -> list[str]:
    fleet = request.plan.fleet
    if fleet.get("kind") != "offboard":
        return []
    person = f"<@{m.esc(fleet.get('person'))}>"
    done = request.outcome.get("offboarded") or request.progress.get("offboarded")
    lines = []
    if isinstance(done, dict):
        voided = [str(v) for v in done.get("voided") or ()]
        what = f"{person}'s approvals" + (" and TOTP enrollment" if done.get("enrollment_revoked") else "") + " revoked"
        if voided:
            what += f"; {m.plural(len(voided), 'pending request')} voided ({m.esc(m.some_names(voided, 5))})"
        lines.append(f"Done at request time: {what}")
    lines.append(
        f"A person must still: remove {person}'s SSH keys and panel accounts on each host (checklist in the thread)"
    )
    return lines


def request_card(
    request: RotationRequest,
    *,
    approvers: str,
    approvals_required: int,
    now: float,
    name_requester: bool = True,
    runs: Sequence[PanelRun] | None = None,
) -> blocks.Message:
    """The fleet's card, within Slack's limits whatever the number of panels."""
    status = blocks.status_lines(
        request, approvers=approvers, approvals_required=approvals_required, now=now, name_requester=name_requester
    )
    if request.state == State.RUNNING and request.progress.get("counts"):
        status[-1] = f"{status[-1].split(' · ')[0]} · running: {counts_line(request.progress['counts'])}"
    if request.state in (State.DONE, State.FAILED):
        status = [status[0], counts_line(request.outcome.get("counts") or {})]
    headline = _headline(request)
    out: list[dict[str, Any]] = [
        blocks._section(f"*{headline}*   `[{request.state.value}]`"),
        blocks._section(f"Requested by {request.requester.mention} · {m.quote(request.reason)}"),
        *blocks._sections(plan_lines(request.plan), most=MAX_SECTIONS_OF_LINES),
        *blocks._sections("\n".join([*_offboard_lines(request), *status]), most=3),
    ]
    if request.state == State.PENDING:
        out.append(blocks._buttons(request))
    out.append(blocks._context(f"Request `{m.esc(request.id)}` · plan hash `{m.esc(request.plan_hash[:16])}`"))
    text = f"{headline} by {request.requester.mention} · {status[-1]} · plan {request.plan.short_hash}"
    return {"text": m.fit(text, blocks.PREVIEW_LIMIT), "blocks": out}


# --- while it runs: one checklist message --------------------------------------------------


@dataclass(frozen=True)
class PanelRun:
    """One panel of a running fleet, as the store keeps it (``bot.store.fleets``)."""

    fleet_id: str
    panel: str
    position: int
    state: str = "queued"
    leg: int = 0
    run_id: str = ""
    last_seq: int = 0
    step: str = ""
    old_fingerprint: str = ""
    new_fingerprint: str = ""
    values: int = 0
    code: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_PANEL_STATES

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.finished_at or time.time()) - self.started_at)


def count_runs(runs: Sequence[PanelRun]) -> dict[str, int]:
    return dict(Counter(r.state for r in runs))


def counts_line(counts: Mapping[str, int], failed_names: Sequence[str] = ()) -> str:
    """``✔ 12 verified · ▶ 4 running · ⏳ 1 queued · ↩ 1 rolled back (prod-us-4)``."""
    parts = []
    for state in ("verified", "running", "queued", "rolled_back", "failed", "refused", "skipped"):
        n = int(counts.get(state, 0))
        if n:
            parts.append(f"{PANEL_ICONS[state]} {n} {PANEL_WORDS[state]}")
    line = " · ".join(parts) or "no panels"
    if failed_names:
        line += f" ({m.esc(m.some_names(failed_names, 5))})"
    return line


def _panel_line(run: PanelRun) -> str:
    fp = ""
    if run.new_fingerprint and run.state == "verified":
        fp = f" · `{m.short_fp(run.new_fingerprint)}`"
    elif run.old_fingerprint:
        fp = f" · `{m.short_fp(run.old_fingerprint)}`"
    took = f" · {run.seconds:.1f} s" if run.seconds is not None and run.state != "queued" else ""
    step = f" · {m.esc(m.step_label(run.step))}" if run.state == "running" and run.step else ""
    word = PANEL_WORDS.get(run.state, run.state)
    return f"{PANEL_ICONS.get(run.state, '?')} {m.esc(run.panel)} · {word}{step}{fp}{took}"


def checklist_message(request: RotationRequest, runs: Sequence[PanelRun]) -> blocks.Message:
    """The run's one checklist message (updated in place): the counts, then a line per
    panel, failures and running ones first, as many as fit."""
    failed = [r.panel for r in runs if r.state in ("rolled_back", "failed")]
    head = f"*Fleet run* `{m.esc(request.id)}` · {counts_line(count_runs(runs), failed)}"
    order = {"failed": 0, "rolled_back": 1, "running": 2, "refused": 3, "queued": 4, "skipped": 5, "verified": 6}
    ranked = sorted(runs, key=lambda r: (order.get(r.state, 9), r.position))
    lines = [_panel_line(r) for r in ranked[:MAX_PANEL_LINES]]
    if len(runs) > MAX_PANEL_LINES:
        lines.append(f"… {len(runs) - MAX_PANEL_LINES} more; the whole table comes as a file at the end")
    out = [blocks._section(head), *blocks._sections("\n".join(lines) or "…", most=MAX_SECTIONS_OF_LINES)]
    return {"text": m.fit(head.replace("*", ""), blocks.PREVIEW_LIMIT), "blocks": out}


def failure_reply(request: RotationRequest, run: PanelRun) -> str:
    """The one thread reply a failed panel gets: what happened, what the engine did, next."""
    what = m.esc(m.fit(run.message or run.code or "failed", 500))
    if run.state == "rolled_back":
        return (
            f"✖ {m.esc(run.panel)}: {what}. ↩ Rolled back: the panel is as it was (old key verified). "
            f"Next: look at {m.esc(run.panel)}'s logs, then request that panel again. The other panels go on."
        )
    if run.state == "refused":
        return (
            f"⊘ {m.esc(run.panel)}: {what}. Nothing was changed on it. "
            f"Next: request {m.esc(run.panel)} again (its plan must be approved anew)."
        )
    return (
        f":sos: {m.esc(run.panel)}: {what}. NOT rolled back: run `recover` on {m.esc(run.panel)} "
        f"(run `{m.esc(run.run_id)}`), see docs/operations.md."
    )


def summary_message(request: RotationRequest, runs: Sequence[PanelRun], took_s: float) -> blocks.Message:
    counts = count_runs(runs)
    failed = [r.panel for r in runs if r.state not in ("verified",)]
    verified = counts.get("verified", 0)
    head = (
        f"{':white_check_mark:' if not failed else ':warning:'} Fleet `{m.esc(request.id)}` finished: "
        f"{verified}/{len(runs)} panels verified in {took_s:.1f} s · {counts_line(counts)}"
    )
    people = (
        f"requested by {request.requester.mention} · approved by "
        f"{m.people([a.approver_label for a in request.approvals if a.person])} · reason {m.quote(request.reason)}"
    )
    lines = [head, people]
    if failed:
        lines.append(f"Not verified: {m.esc(m.some_names(failed, 20))} (each has its reply above)")
    lines.append("The whole per-panel table is attached as a file.")
    anchor = request.outcome.get("audit")
    if isinstance(anchor, dict):
        lines.append(f"audit #{anchor.get('seq')} {str(anchor.get('digest'))[:16]}")
    text = "\n".join(lines)
    return {"text": m.fit(text, blocks.PREVIEW_LIMIT), "blocks": blocks._sections(text, most=4)}


TABLE_COLUMNS = (
    "panel",
    "host",
    "tags",
    "outcome",
    "old_key",
    "new_key",
    "values",
    "seconds",
    "code",
    "run_id",
    "to_do_by_hand",
)


def table_csv(request: RotationRequest, runs: Sequence[PanelRun] | None = None) -> str:
    """The whole per-panel table (the plan's, or the run's when ``runs`` are given)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TABLE_COLUMNS)
    by_panel = {r.panel: r for r in runs or ()}
    person = str(request.plan.fleet.get("person") or "")
    manual = f"remove the SSH keys and panel accounts of Slack user {person}" if person else ""
    for mem in members(request.plan):
        run = by_panel.get(mem["panel"])
        if mem.get("error"):
            outcome, code = "not planned: " + str(mem["error"]), str(mem.get("code") or "")
        elif run is None:
            outcome, code = "planned", ""
        else:
            outcome, code = PANEL_WORDS.get(run.state, run.state), run.code
        writer.writerow([
            mem["panel"], mem.get("host", ""), " ".join(mem.get("tags") or ()), outcome,
            (run.old_fingerprint if run and run.old_fingerprint else mem.get("key_fingerprint") or ""),
            run.new_fingerprint if run else "", mem.get("values", ""),
            f"{run.seconds:.1f}" if run and run.seconds is not None else "", code,
            run.run_id if run else "", manual,
        ])  # fmt: skip
    return out.getvalue()


def upload_table(client: WebClient, request: RotationRequest, content: str, name: str, title: str) -> bool:
    """The table as a CSV file in the request's thread (files v2 upload)."""
    try:
        client.files_upload_v2(
            channel=request.channel_id,
            thread_ts=request.message_ts,
            content=content,
            filename=name,
            title=title,
        )
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not upload the table of %s: %s", request.id, type(exc).__name__)
        return False
    return True


def manual_checklist(request: RotationRequest) -> str:
    """What the tool cannot do and a person must, per host."""
    person = f"<@{m.esc(request.plan.fleet.get('person'))}>"
    ok = runnable(request.plan)
    lines = [f":clipboard: *A person must still, on each host* (this tool cannot remove {person}'s own access):"]
    for mem in ok[:40]:
        lines.append(
            f"☐ {m.esc(mem['panel'])} ({m.esc(mem.get('host'))}): "
            f"remove {person}'s SSH keys (`authorized_keys`) and panel accounts"
        )
    if len(ok) > 40:
        lines.append(f"☐ … and {len(ok) - 40} more hosts: see the plan file (column to_do_by_hand)")
    return "\n".join(lines)


# --- the commands ----------------------------------------------------------------------------


def open_fleet_request(
    deps: HandlerDeps, client: WebClient, parsed: FleetParsed, person: Person, channel: str
) -> RotationRequest | None:
    """Check who asks, plan every panel, store the request, revoke (offboarding), post."""
    from handlers.commands import _post  # the card's posting and its ts, shared

    if not deps.policy.may_request(person, deps.directory):
        cards.tell(client, channel, person.user_id, m.not_a_requester(deps.policy.requester_mentions))
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
    headline=_headline,
    panels=panels_of,
    help_lines=HELP_LINES,
    register=register,
    shares={"/rotate-key": (claims_rotate_key, rotate_key_listener)},
    approval_refusal=approval_refusal,
)
