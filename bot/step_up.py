"""Step-up approval with TOTP (RFC 6238): enrollment, verification, replay and rate limits.

An approver's Slack session alone can't approve a rotation on a panel with
``step_up = "totp"``: the Approve click asks for the 6-digit code of the
authenticator they enrolled with ``/rotate-enroll``. Codes are checked with
``pyotp`` within one 30-second step either side; a code whose step (or a later
one) was already used is refused; failures per approver are counted in the
store (so replicas agree) and too many in the window lock the approver out
until the oldest of them ages out. The secret is sealed under the enrollment
key (``bot.enrollment_key``), which never enters the store.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping

import pyotp
from slack_sdk import WebClient

from bot.enrollment_key import EnrollmentKey
from bot.store import Store
from handlers.ports import Person, StepUpCheck, StepUpVerdict

log = logging.getLogger(__name__)

ISSUER = "MyOsicam Rotator"
STEP_S = 30
VALID_WINDOW = 1  # steps either side of now


def quiet_client(client: WebClient) -> WebClient:
    """A client like ``client`` whose request log is off (slack_sdk logs request bodies at DEBUG)."""
    logger = logging.getLogger("bot.step_up.secret_client")
    logger.setLevel(logging.WARNING)  # its failures still reach the bot's log; its bodies never
    quiet = WebClient(
        token=client.token, base_url=client.base_url, timeout=client.timeout, logger=logger
    )
    quiet.retry_handlers = list(client.retry_handlers)
    return quiet


class TotpStepUp:
    """``handlers.ports.StepUp`` over the store, the enrollment key and a clock."""

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.panels = dict(panels)
        self.admins = admins
        self.secret_client = secret_client
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock

    def required(self, panel: str) -> bool:
        return self.panels.get(panel, False)

    def _limited(self, user_id: str, now: float) -> tuple[StepUpVerdict | None, int]:
        failures = self.store.failures_since(user_id, now - self.window_s)
        if len(failures) >= self.max_failures:
            oldest_counted = failures[-self.max_failures]
            wait = max(oldest_counted + self.window_s - now, 1.0)
            return StepUpVerdict(StepUpCheck.RATE_LIMITED, retry_after_s=wait), 0
        return None, self.max_failures - len(failures)

    def precheck(self, user_id: str) -> StepUpVerdict:
        if self.store.enrollment(user_id) is None:
            return StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        limited, left = self._limited(user_id, self.clock())
        return limited or StepUpVerdict(StepUpCheck.OK, tries_left=left)

    def verify(self, user_id: str, code: str) -> StepUpVerdict:
        enrollment = self.store.enrollment(user_id)
        if enrollment is None:
            return StepUpVerdict(StepUpCheck.NOT_ENROLLED)
        now = self.clock()
        limited, left = self._limited(user_id, now)
        if limited is not None:
            return limited
        totp = pyotp.TOTP(self.key.open(enrollment.sealed_secret, user_id), interval=STEP_S)
        current = int(now // STEP_S)
        matched = None
        for step in (current, current - VALID_WINDOW, current + VALID_WINDOW):
            if hmac.compare_digest(totp.generate_otp(step), code):
                matched = step
                break
        if matched is not None and self.store.use_step(user_id, matched):
            return StepUpVerdict(StepUpCheck.OK)
        self.store.record_failure(user_id, keep_s=self.window_s)
        check = StepUpCheck.WRONG if matched is None else StepUpCheck.REPLAYED
        log.info("step-up code refused for %s: %s", user_id, check.value)
        return StepUpVerdict(check, tries_left=max(left - 1, 0), retry_after_s=self.window_s)

    def enroll(self, person: Person) -> str | None:
        secret = pyotp.random_base32()
        sealed = self.key.seal(secret, person.user_id)
        if not self.store.enroll(person.user_id, sealed, actor=person.key):
            return None
        log.info("TOTP enrollment created for %s", person.user_id)
        return pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(
            name=person.user_id, issuer_name=ISSUER
        )

    def reset(self, user_id: str, by: Person) -> bool:
        done = self.store.reset_enrollment(user_id, actor=by.key)
        if done:
            log.info("TOTP enrollment of %s reset by %s", user_id, by.key)
        return done
