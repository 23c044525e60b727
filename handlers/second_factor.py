"""The second factor asked at approval time: what a check finds, and the port ``bot.totp`` serves.

``handlers.step_up_modal`` asks for the code; ``bot.totp`` implements ``StepUp`` with TOTP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk import WebClient

from handlers.rotation_request import Person


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
