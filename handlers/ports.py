"""The handlers' vocabulary, and the ports through which ``bot`` serves them.

``handlers`` may not import ``bot`` (the dependency direction is
``bot -> handlers -> engine.protocol``), yet a button click needs the state
store, the engine's plan and the run of an approved request. So the data
(``RotationRequest``, ``Person``, ``Decision``) and the shapes of those
services (``RequestStore``, ``Planner``, ``Directory``) live here, and
``bot.app`` injects the implementations through ``HandlerDeps``.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from slack_sdk import WebClient

from handlers.plan_view import PlanView


class State(enum.StrEnum):
    """Where a request is. Only ``pending`` takes approvals; the last five are final."""

    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    VOIDED = "voided"


ACTIVE_STATES: frozenset[State] = frozenset({State.PENDING, State.APPROVED, State.RUNNING})
FINAL_STATES: frozenset[State] = frozenset(State) - ACTIVE_STATES


@dataclass(frozen=True)
class Person:
    """A Slack user; one person is one user id, whatever team id the request carried.

    Under Enterprise Grid a slash command carries the workspace it was typed
    in and a click carries the user's home team, so the same person comes with
    different team ids. User ids are unique across an organisation: the
    two-person rule (self-approval, duplicate approvals, counting) compares
    them alone. ``team_id`` is kept for the record (``key``, the audit actor).
    """

    team_id: str = field(compare=False)
    user_id: str

    @property
    def mention(self) -> str:
        return f"<@{self.user_id}>"

    @property
    def key(self) -> str:
        return f"{self.team_id}/{self.user_id}"

    def to_dict(self) -> dict[str, str]:
        return {"team_id": self.team_id, "user_id": self.user_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Person:
        return cls(team_id=str(data.get("team_id", "")), user_id=str(data["user_id"]))


@dataclass(frozen=True)
class Decision:
    """Who approved, denied, cancelled (or the clock, for an expiry), when and why;
    ``factor`` names the second factor an approval was made with (``"TOTP"``), if any."""

    person: Person | None
    at: float
    reason: str = ""
    factor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "person": self.person.to_dict() if self.person else None,
            "at": self.at,
            "reason": self.reason,
            **({"factor": self.factor} if self.factor else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        person = data.get("person")
        return cls(
            person=Person.from_dict(person) if person else None,
            at=float(data["at"]),
            reason=str(data.get("reason", "")),
            factor=str(data.get("factor", "")),
        )

    @property
    def approver_label(self) -> str:
        """The approver as a card shows them: ``<@U2> (with TOTP)`` when a second factor was checked."""
        mention = self.person.mention if self.person else "nobody"
        return mention + (f" (with {self.factor})" if self.factor else "")


@dataclass(frozen=True)
class RotationRequest:
    """One request from a slash command to its final state, as the store keeps it.

    ``version`` is the compare-and-swap counter: every update names the version
    it read and loses if someone else wrote first. ``progress`` is the current
    engine step (for the card), ``outcome`` the closing summary.
    """

    id: str
    op: str
    panel: str
    reason: str
    requester: Person
    channel_id: str
    plan: PlanView
    created_at: float
    expires_at: float
    state: State = State.PENDING
    version: int = 1
    agents: tuple[str, ...] = ()
    all_agents: bool = False
    message_ts: str | None = None
    approvals: tuple[Decision, ...] = ()
    decision: Decision | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_seq: int = 0
    progress: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_hash(self) -> str:
        return self.plan.hash

    def approved_by(self, person: Person) -> bool:
        return any(a.person == person for a in self.approvals)

    def evolve(self, **changes: Any) -> RotationRequest:
        return replace(self, **changes)


@dataclass(frozen=True)
class Transition:
    """One row of a request's history (``/rotate-status <id>``)."""

    request_id: str
    event: str
    from_state: str | None
    to_state: str
    actor: str
    at: float


class RequestStore(Protocol):
    """Durable requests with compare-and-swap updates (``bot.store`` implements it)."""

    def create(self, request: RotationRequest, *, actor: str) -> bool:
        """Insert a new request; False if its id is already taken."""
        ...

    def get(self, request_id: str) -> RotationRequest | None: ...

    def update(
        self,
        request: RotationRequest,
        *,
        expected_version: int,
        event: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        record: bool = True,
    ) -> RotationRequest | None:
        """Write ``request`` if the stored version is still ``expected_version``.

        Returns the stored request (version + 1), or ``None`` if another writer
        won; the caller then re-reads and decides again.
        """
        ...

    def list_in_states(self, states: Iterable[State], limit: int = 50) -> list[RotationRequest]: ...

    def pending_of(self, user_id: str, limit: int = 100) -> list[RotationRequest]: ...

    def recent_final(self, limit: int = 5) -> list[RotationRequest]: ...

    def history(self, request_id: str) -> list[Transition]: ...


class UserFacingError(Exception):
    """An error whose message may be shown to the person who acted (no secret, no trace)."""

    code = "user_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def __str__(self) -> str:
        return self.message


class PlanError(UserFacingError):
    """The engine could not produce a plan; ``message`` says why in the user's words."""

    code = "plan_failed"


class Planner(Protocol):
    """Asks a panel's engine for a read-only plan (``bot.app`` implements it)."""

    def plan(
        self,
        *,
        panel: str,
        op: str,
        agents: Sequence[str],
        all_agents: bool,
        request_id: str,
    ) -> PlanView: ...


class Directory(Protocol):
    """Slack user-group membership (cached by ``bot``).

    Members are user ids, unique across an Enterprise Grid organisation, so
    membership is the user id alone (a member's clicks carry their home team,
    which need not be the bot's workspace). ``group_members`` raises
    ``DirectoryUnavailable`` when it cannot vouch for a group's members.
    """

    def group_members(self, group_id: str) -> frozenset[str]: ...

    def channel_members(self, channel_id: str) -> frozenset[str]:
        """The user ids in a conversation (``conversations.members``); raises
        ``DirectoryUnavailable`` when it cannot vouch for them."""
        ...


class DirectoryUnavailable(UserFacingError):
    """Slack could not list a user group, and what the bot last saw is too old to trust."""

    code = "directory_unavailable"


def is_listed(entries: Sequence[str], person: Person, directory: Directory) -> bool:
    """``person`` is one of ``entries``: a user id, a ``T…/U…`` user, or a member of an ``S…`` group."""
    for entry in entries:
        if entry.startswith("S"):
            if person.user_id in directory.group_members(entry):
                return True
        elif entry.rsplit("/", 1)[-1] == person.user_id:
            return True
    return False


#: ``where`` for a surface that is in no channel: App Home, a modal, a Home-tab click
NO_CHANNEL: str | None = None


@dataclass(frozen=True)
class AccessPolicy:
    """Who may request and approve, how many approvals, for how long a request waits.

    Entries are Slack user ids (``U…``/``W…``), user-group ids (``S…``) or a
    team-qualified user ``T…/U…`` (matched by its user id: user ids are unique
    across an organisation). An empty ``requesters`` means anyone in an
    allowed channel; an empty ``channels`` means any channel.

    This is the one access rule of every surface: slash commands, the App Home
    tab (what it shows and its buttons), the request modal (when it opens and
    again when it is submitted), clicks and ``/rotate-status``. ``where`` is the
    channel a slash command was typed in: Slack only lets people type where they
    are members, so an allowed channel is proof enough. Every other surface (App
    Home, modals, button clicks) is checked with ``NO_CHANNEL``: then, with
    ``channels`` set, the person must be a member of one of them, asked of Slack.
    Without that, the Home tab would show and accept what the commands refuse to
    someone outside the rotations channel.
    """

    approvers: tuple[str, ...]
    requesters: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    approvals_required: int = 1
    expiry_s: float = 30 * 60
    max_pending_per_user: int = 5

    def in_scope(self, person: Person, directory: Directory, where: str | None = NO_CHANNEL) -> bool:
        """The channel half of the rule: acting in an allowed channel, or (on a surface
        without one) being a member of an allowed channel."""
        if not self.channels:
            return True
        if where:
            return where in self.channels
        return any(person.user_id in directory.channel_members(c) for c in self.channels)

    def may_request(
        self, person: Person, directory: Directory, where: str | None = NO_CHANNEL
    ) -> bool:
        listed = not self.requesters or is_listed(self.requesters, person, directory)
        return listed and self.in_scope(person, directory, where)

    def may_approve(
        self, person: Person, directory: Directory, where: str | None = NO_CHANNEL
    ) -> bool:
        return is_listed(self.approvers, person, directory) and self.in_scope(
            person, directory, where
        )

    def may_see(self, person: Person, directory: Directory, where: str | None = NO_CHANNEL) -> bool:
        """Pending requests, their ids and reasons: for those who may request or approve."""
        return self.may_approve(person, directory, where) or self.may_request(
            person, directory, where
        )

    def channel_allowed(self, channel_id: str) -> bool:
        return not self.channels or channel_id in self.channels

    @property
    def approver_mentions(self) -> str:
        return mention_list(self.approvers)

    def approvers_for(self, requester: Person) -> tuple[str, bool]:
        """Who may approve ``requester``'s request, as mentions, and whether to add
        "(not @requester)": people are listed without the requester; a user group is
        named as it is, and may hold the requester, so only then is the note needed."""
        others = [e for e in self.approvers if e.rsplit("/", 1)[-1] != requester.user_id]
        return mention_list(others), any(e.startswith("S") for e in others)

    @property
    def requester_mentions(self) -> str:
        return mention_list(self.requesters)


def mention(entry: str) -> str:
    """``S…`` -> a user-group mention, anything else -> a user mention."""
    if entry.startswith("S"):
        return f"<!subteam^{entry}>"
    return f"<@{entry.rsplit('/', 1)[-1]}>"


def mention_list(entries: Sequence[str]) -> str:
    mentions = [mention(e) for e in entries]
    if len(mentions) <= 1:
        return "".join(mentions)
    return ", ".join(mentions[:-1]) + " or " + mentions[-1]


def new_request_id(now: float) -> str:
    """``r-20261126-031402-7f3a``: sortable, readable in a thread, unique enough with 16 bits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"r-{stamp}-{secrets.token_hex(2)}"


def new_reference() -> str:
    """A short id that ties an error message in Slack to its log line."""
    return secrets.token_hex(2)


class StepUpCheck(enum.Enum):
    """What a step-up check found."""

    OK = "ok"
    WRONG = "wrong"  # not the code of this moment (nor of the step before or after)
    REPLAYED = "replayed"  # a code whose time step was already used (or an older one)
    RATE_LIMITED = "rate_limited"  # too many failures lately: no code is checked
    NOT_ENROLLED = "not_enrolled"
    NOT_CONFIRMED = "not_confirmed"  # enrolled, but the first code was never typed
    EXPIRED = "expired"  # that pending enrollment is older than its 10 minutes
    AWAITING_APPROVAL = "awaiting_approval"  # confirmed; an enroll admin has not approved it yet
    KEY_MISMATCH = "key_mismatch"  # the enrollment key does not open the stored secret
    ALREADY_CONFIRMED = "already_confirmed"  # a first code for an enrollment that is in use


@dataclass(frozen=True)
class StepUpVerdict:
    check: StepUpCheck
    tries_left: int = 0
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class SecretMessages:
    """Where an enrollment's secret was sent: the DM message and the QR file."""

    channel: str
    ts: str
    file_id: str


class StepUp(Protocol):
    """A second factor asked at approval time (``bot.totp`` implements TOTP).

    ``secret_client`` sends the enrollment's direct message: its request log is
    off, since that message is the one that carries a secret (to its owner).
    """

    admins: tuple[str, ...]
    secret_client: WebClient
    #: a confirmed enrollment approves nothing until an enroll admin (not its owner) approves it
    needs_admin_approval: bool
    #: how long a new enrollment waits for its first code
    pending_s: float

    def required(self, panel: str) -> bool: ...

    def precheck(self, user_id: str) -> StepUpVerdict:
        """Before asking for a code: ``NOT_ENROLLED``, ``RATE_LIMITED`` or ``OK``."""
        ...

    def verify(self, user_id: str, code: str) -> StepUpVerdict: ...

    def enroll(self, person: Person) -> str | None:
        """A new pending enrollment's ``otpauth://`` URI, or None if ``person`` has one already."""
        ...

    def confirm(self, person: Person, code: str) -> StepUpVerdict:
        """The first code of a pending enrollment: ``OK`` moves it on (admin approval, or active)."""
        ...

    def status(self, user_id: str) -> str | None:
        """``pending``, ``expired``, ``awaiting_approval``, ``active``, or None (not enrolled)."""
        ...

    def sent(self, user_id: str, where: SecretMessages) -> None: ...

    def secret_messages(self, user_id: str) -> SecretMessages | None: ...

    def expired_with_secret(self) -> list[str]:
        """Users whose pending enrollment expired while its DM or QR file is still in Slack."""
        ...

    def secret_deleted(self, user_id: str, by: str, outcome: dict[str, str]) -> None: ...

    def approve_enrollment(self, user_id: str, by: Person) -> bool: ...

    def refuse(self, user_id: str, by: Person, reason: str) -> None: ...

    def reset(self, user_id: str, by: Person, detail: dict[str, Any] | None = None) -> bool: ...


class Lane(enum.Enum):
    """Which queue a piece of work after an acknowledgement waits in.

    The lanes never wait for one another, so however many plans are queued,
    a click or a modal is not behind them.
    """

    PLAN = "plan"  # asks the engine for a plan: seconds, and many may queue
    CLICK = "click"  # a person's decision: a store update and a message or two
    MODAL = "modal"  # opens a modal: Slack's trigger id lives 3 s


def _run_now(work: Callable[[], None], lane: Lane = Lane.CLICK) -> None:
    work()


@dataclass
class HandlerDeps:
    """Everything the handlers need, injected by ``bot.app.create_app``.

    ``defer`` runs work after the acknowledgement in its ``Lane`` (``bot``
    gives each lane its own worker threads); ``first_delivery`` is true the
    first time a Slack delivery (a user action, by its trigger or event id) is
    seen, in any replica.
    """

    store: RequestStore
    planner: Planner
    policy: AccessPolicy
    directory: Directory
    panels: Sequence[str]
    start_rotation: Callable[[str], object]
    client: WebClient
    defer: Callable[[Callable[[], None], Lane], object] = _run_now
    first_delivery: Callable[[dict[str, Any]], bool] = lambda body: True
    on_request_created: Callable[[RotationRequest], None] = lambda request: None
    clock: Callable[[], float] = time.time
    new_id: Callable[[float], str] = new_request_id
    panel_hosts: dict[str, str] = field(default_factory=dict)
    #: the second factor asked before an approval counts (None: step-up is off everywhere)
    step_up: StepUp | None = None
    #: each registered operation's own settings and ports (``handlers.ops``), by its name
    ops_config: dict[str, Any] = field(default_factory=dict)

    def after_ack(
        self, body: dict[str, Any], work: Callable[[], None], *, lane: Lane = Lane.CLICK
    ) -> None:
        """Run ``work`` after the acknowledgement, once per Slack delivery, in ``lane``."""

        def once() -> None:
            if self.first_delivery(body):
                work()

        self.defer(once, lane)
