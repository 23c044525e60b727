"""Step-up approval with TOTP (RFC 6238): enrollment, verification, replay and rate limits.

An approver's Slack session alone can't approve a rotation on a panel with
``step_up = "totp"``: the Approve click asks for the 6-digit code of the
authenticator they enrolled with ``/rotate-enroll``. Codes are checked with
``pyotp`` within one 30-second step either side; a code whose step (or a later
one) was already used is refused. Each try is counted in the store before its
code is looked at (``EnrollmentRows.take_try``: one locked step, so parallel
submissions can't share a try), a right code gets its try back, and too many
tries in the window lock the approver out until the oldest of them ages out.
The secret is sealed under the enrollment key (``bot.enrollment_key``), which
never enters the store.

A new enrollment approves nothing until (1) its owner types a first valid
code within ``PENDING_S`` (then the bot deletes the direct message and the QR
file that carried the secret) and (2) unless ``step_up_enrollment_approval`` is
off, an enroll admin other than its owner approves it: a stolen session of an
approver who never enrolled can't enroll itself and approve.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyotp
from slack_sdk import WebClient

from bot.enrollment_key import EnrollmentKey
from bot.errors import StoreError
from bot.store import Store
from bot.store.enrollments import ACTIVE, AWAITING_APPROVAL, PENDING, Enrollment, Try
from handlers.rotation_request import Person
from handlers.second_factor import SecretMessages, StepUpCheck, StepUpVerdict

log = logging.getLogger(__name__)

ISSUER = "MyOsicam Rotator"
STEP_S = 30
VALID_WINDOW = 1  # steps either side of now
PENDING_S = 10 * 60.0  # an enrollment not confirmed with a first code by then approves nothing


def quiet_client(client: WebClient) -> WebClient:
    """A client like ``client`` whose request log is off (slack_sdk logs request bodies at DEBUG)."""
    logger = logging.getLogger("bot.totp.secret_client")
    logger.setLevel(logging.WARNING)  # its failures still reach the bot's log; its bodies never
    quiet = WebClient(
        token=client.token, base_url=client.base_url, timeout=client.timeout, logger=logger
    )
    quiet.retry_handlers = list(client.retry_handlers)
    return quiet


class TotpStepUp:
    """``handlers.second_factor.StepUp`` over the store, the enrollment key and a clock."""

    def __init__(
        self,
        *,
        store: Store,
        key: EnrollmentKey,
        panels: Mapping[str, bool],
        admins: tuple[str, ...],
        secret_client: WebClient,
        max_failures: int = 5,
        window_s: float = 15 * 60.0,
        needs_admin_approval: bool = True,
        pending_s: float = PENDING_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.panels = dict(panels)
        self.admins = admins
        self.secret_client = secret_client
        self.max_failures = max_failures
        self.window_s = window_s
        self.needs_admin_approval = needs_admin_approval
        self.pending_s = pending_s
        self.clock = clock

    def required(self, panel: str) -> bool:
        return self.panels.get(panel, False)

    def _state(self, enrollment: Enrollment | None, now: float) -> StepUpVerdict | None:
        """Why ``enrollment`` can't approve anything (None: it is active)."""
        if enrollment is None:
            return StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        if enrollment.status == PENDING:
            check = StepUpCheck.EXPIRED if enrollment.expired(now) else StepUpCheck.NOT_CONFIRMED
            return StepUpVerdict(check)
        if enrollment.status == AWAITING_APPROVAL:
            return StepUpVerdict(StepUpCheck.AWAITING_APPROVAL)
        return None

    def _limited(self, counted: tuple[float, ...] | list[float], now: float) -> StepUpVerdict:
        oldest_counted = counted[-self.max_failures]
        wait = max(oldest_counted + self.window_s - now, 1.0)
        return StepUpVerdict(StepUpCheck.RATE_LIMITED, retry_after_s=wait)

    def precheck(self, user_id: str) -> StepUpVerdict:
        now = self.clock()
        refused = self._state(self.store.enrollment(user_id), now)
        if refused is not None:
            return refused
        failures = self.store.failures_since(user_id, now - self.window_s)
        if len(failures) >= self.max_failures:
            return self._limited(failures, now)
        return StepUpVerdict(StepUpCheck.OK, tries_left=self.max_failures - len(failures))

    def _matching_step(self, enrollment: Enrollment, code: str, taken: Try, now: float) -> int | None:
        """The time step ``code`` belongs to (now, or one either side), or None.

        Raises ``StoreError`` (the try handed back) when the key does not open the secret."""
        try:
            secret = self.key.open(enrollment.sealed_secret, enrollment.user_id)
        except StoreError:
            if taken.id is not None:
                self.store.give_back_try(taken.id)
            raise
        totp = pyotp.TOTP(secret, interval=STEP_S)
        current = int(now // STEP_S)
        for step in (current, current - VALID_WINDOW, current + VALID_WINDOW):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    def _take_try(self, user_id: str, now: float) -> tuple[Try | None, StepUpVerdict | None]:
        taken = self.store.take_try(user_id, max_tries=self.max_failures, window_s=self.window_s)
        if taken is None:
            return None, StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        if taken.id is None:
            return None, self._limited(taken.counted, now)
        return taken, None

    def _refused(self, user_id: str, taken: Try, matched: int | None) -> StepUpVerdict:
        check = StepUpCheck.WRONG if matched is None else StepUpCheck.REPLAYED
        log.info("step-up code refused for %s: %s", user_id, check.value)
        left = max(self.max_failures - len(taken.counted), 0)
        return StepUpVerdict(check, tries_left=left, retry_after_s=self.window_s)

    def _key_mismatch(self, user_id: str) -> StepUpVerdict:
        log.warning(
            "the TOTP enrollment of %s does not open with enrollment key %s: the key was "
            "changed or is wrong (ROTATOR_ENROLLMENT_KEY / _FILE); restore it, or reset the "
            "enrollment with /rotate-enroll reset",
            user_id,
            self.key.fingerprint,
        )
        return StepUpVerdict(StepUpCheck.KEY_MISMATCH)

    def verify(self, user_id: str, code: str) -> StepUpVerdict:
        """Check an approval code: counted first, then checked, accepted once."""
        now = self.clock()
        enrollment = self.store.enrollment(user_id)
        refused = self._state(enrollment, now)
        if refused is not None or enrollment is None:
            return refused or StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        taken, refused = self._take_try(user_id, now)
        if taken is None:
            return refused or StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        try:
            matched = self._matching_step(enrollment, code, taken, now)
        except StoreError:
            return self._key_mismatch(user_id)
        if matched is not None and self.store.use_step(user_id, matched, taken.id):
            return StepUpVerdict(StepUpCheck.OK)
        if matched is not None and self.store.enrollment(user_id) is None:
            return StepUpVerdict(StepUpCheck.NOT_ENROLLED)  # reset meanwhile
        return self._refused(user_id, taken, matched)

    def enroll(self, person: Person) -> str | None:
        secret = pyotp.random_base32()
        sealed = self.key.seal(secret, person.user_id)
        if not self.store.enroll(person.user_id, sealed, actor=person.key, pending_s=self.pending_s):
            return None
        log.info("TOTP enrollment created for %s (pending its first code)", person.user_id)
        return pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(
            name=person.user_id, issuer_name=ISSUER
        )

    def status(self, user_id: str) -> str | None:
        """``pending``, ``expired``, ``awaiting_approval``, ``active``, or None (not enrolled)."""
        enrollment = self.store.enrollment(user_id)
        if enrollment is None:
            return None
        return "expired" if enrollment.expired(self.clock()) else enrollment.status

    def sent(self, user_id: str, where: SecretMessages) -> None:
        self.store.record_enrollment_dm(user_id, where.channel, where.ts, where.file_id)

    def secret_messages(self, user_id: str) -> SecretMessages | None:
        """Where this person's secret still is in Slack (the DM message, the QR file), if anywhere."""
        enrollment = self.store.enrollment(user_id)
        if enrollment is None or not (enrollment.dm_ts or enrollment.dm_file):
            return None
        return SecretMessages(enrollment.dm_channel, enrollment.dm_ts, enrollment.dm_file)

    def expired_with_secret(self) -> list[str]:
        now = self.clock()
        return [
            e.user_id
            for e in self.store.enrollments()
            if e.expired(now) and (e.dm_ts or e.dm_file)
        ]

    def secret_deleted(self, user_id: str, by: str, outcome: dict[str, str]) -> None:
        """Audit what became of the secret's message and file (``outcome``: what -> result)."""
        self.store.forget_enrollment_dm(user_id)
        self.store.audit_step_up(
            "step_up.secret_deleted", actor=by, data={"user": user_id, **outcome}
        )

    def confirm(self, person: Person, code: str) -> StepUpVerdict:
        """The first code of ``person``'s pending enrollment (counted like an approval code)."""
        user_id = person.user_id
        now = self.clock()
        enrollment = self.store.enrollment(user_id)
        if enrollment is None:
            return StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        if enrollment.status == AWAITING_APPROVAL:
            return StepUpVerdict(StepUpCheck.AWAITING_APPROVAL)
        if enrollment.status == ACTIVE:
            return StepUpVerdict(StepUpCheck.ALREADY_CONFIRMED)
        if enrollment.expired(now):
            return StepUpVerdict(StepUpCheck.EXPIRED)
        taken, refused = self._take_try(user_id, now)
        if taken is None:
            return refused or StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        try:
            matched = self._matching_step(enrollment, code, taken, now)
        except StoreError:
            return self._key_mismatch(user_id)
        if matched is not None and self.store.confirm_enrollment(
            user_id, matched, taken.id, needs_approval=self.needs_admin_approval, actor=person.key
        ):
            log.info("TOTP enrollment of %s confirmed with a first code", user_id)
            return StepUpVerdict(StepUpCheck.OK)
        if matched is not None:
            latest = self.store.enrollment(user_id)
            if latest is None or latest.expired(self.clock()):
                return StepUpVerdict(StepUpCheck.EXPIRED if latest else StepUpCheck.NOT_ENROLLED)
        return self._refused(user_id, taken, matched)

    def approve_enrollment(self, user_id: str, by: Person) -> bool:
        done = self.store.approve_enrollment(user_id, actor=by.key)
        if done:
            log.info("TOTP enrollment of %s approved by %s", user_id, by.key)
        return done

    def refuse(self, user_id: str, by: Person, reason: str) -> None:
        """Audit a refused enrollment change (a self-reset without a valid code)."""
        self.store.audit_step_up(
            "step_up.reset_refused", actor=by.key, data={"user": user_id, "reason": reason}
        )

    def reset(self, user_id: str, by: Person, detail: dict[str, Any] | None = None) -> bool:
        done = self.store.reset_enrollment(user_id, actor=by.key, detail=dict(detail or {}))
        if done is not None:
            log.info("TOTP enrollment of %s reset by %s", user_id, by.key)
        return done is not None
