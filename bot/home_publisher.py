"""The App Home control room and the key-age reminders, over the engines' ``status``.

``ControlRoom`` asks each panel's engine for ``status`` (read-only: the key's and
agent tokens' last rotations, the host's run record), builds each viewer's Home
tab and publishes it with ``views.publish``: when a person opens the tab, and for
everyone who opened it since the bot started after every run.

``ReminderWatcher`` looks at the same ages every ``check_s`` seconds and posts one
reminder per panel and secret whose age passed the limit, in the rotations
channel. The store remembers each reminder (``key_reminders``),
so a restart or a second replica does not repeat it within ``interval_s``. It
never starts a rotation: the reminder's button only opens the request modal.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.engine_client import EngineClient
from bot.errors import BotError, StoreError
from bot.store import Store
from engine.protocol import PROTOCOL_VERSION, Request
from handlers import home
from handlers.access import NO_CHANNEL, AccessPolicy, Directory
from handlers.errors import DirectoryUnavailable
from handlers.rotation_request import Person, RotationRequest, State

log = logging.getLogger(__name__)


class ControlRoom:
    def __init__(
        self,
        *,
        engine_clients: Callable[[str], EngineClient],
        panels: Sequence[str],
        store: Store,
        client: WebClient,
        policy: AccessPolicy,
        directory: Directory,
        max_age_s: Callable[[str], float],
        clock: Callable[[], float] = time.time,
        cache_s: float = 30.0,
        barred: Callable[[Person], str | None] = lambda person: None,
    ) -> None:
        self.engine_clients = engine_clients
        self.panels = list(panels)
        self.store = store
        self.client = client
        self.policy = policy
        self.directory = directory
        self.max_age_s = max_age_s
        self.clock = clock
        self.cache_s = cache_s
        self.barred = barred
        self._cached: tuple[float, list[home.PanelStatus]] | None = None
        self._lock = threading.Lock()

    def panel_status(self, panel: str) -> home.PanelStatus:
        """The engine's ``status`` of ``panel``; an engine that does not answer is said so."""
        request = Request(v=PROTOCOL_VERSION, id=f"home-{secrets.token_hex(4)}", op="status")
        try:
            for event in self.engine_clients(panel).run(request):
                if event.get("type") == "result":
                    return home.PanelStatus.from_engine(panel, event)
                if event.get("type") == "error":
                    return home.PanelStatus(panel, error=str(event.get("message", "error")))
        except BotError as exc:
            return home.PanelStatus(panel, error=exc.message)
        return home.PanelStatus(panel, error="the engine ended without an answer")

    def statuses(self, *, fresh: bool = True) -> list[home.PanelStatus]:
        """Every panel's status; with ``fresh=False`` one at most ``cache_s`` old will do
        (people opening their Home tab often do not open an SSH session each time)."""
        with self._lock:
            cached = self._cached
        if not fresh and cached is not None and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        statuses = [self.panel_status(panel) for panel in self.panels]
        with self._lock:
            self._cached = (time.monotonic(), statuses)
        return statuses

    def publish(
        self, person: Person, statuses: Sequence[home.PanelStatus] | None = None, *, opened: bool = True
    ) -> None:
        """Build and publish ``person``'s Home tab. Who ``opened`` it is remembered in the
        store, so their tab is refreshed after each run (by any replica, after a restart too)."""
        if opened:
            try:
                self.store.remember_home_viewer(person.team_id, person.user_id)
            except StoreError as exc:
                log.warning("Home tab viewer %s not remembered: %s", person.user_id, exc.message)
        try:
            view = self._view_for(person, statuses)
            self.client.views_publish(user_id=person.user_id, view=view)
        except DirectoryUnavailable as exc:
            log.warning("Home tab of %s not published: %s", person.user_id, exc)
        except (SlackApiError, SlackClientError) as exc:
            log.warning("could not publish the Home tab of %s: %s", person.user_id, type(exc).__name__)

    def refresh_all(self) -> None:
        """After a run: every viewer's Home tab, with one ``status`` per panel."""
        try:
            viewers = [Person(team_id=team, user_id=user) for team, user in self.store.home_viewers()]
        except StoreError as exc:
            log.warning("Home tabs not refreshed: %s", exc.message)
            return
        if not viewers:
            return
        statuses = self.statuses()
        for person in viewers:
            self.publish(person, statuses, opened=False)

    def _view_for(
        self, person: Person, statuses: Sequence[home.PanelStatus] | None
    ) -> dict[str, object]:
        """The same rule as the commands (``AccessPolicy``, with no channel: the Home tab is
        in none): pending requests for those who may see them, Approve/Deny for approvers
        on others' requests, the request buttons for those who may request; for someone
        barred from acting (offboarded: ``handlers.ops.barred``), no button but why."""
        policy = self.policy
        refusal = home.home_refusal(policy, self.directory, person)
        if refusal:
            return home.not_allowed_view(refusal)
        barred = self.barred(person)
        may_approve = not barred and policy.may_approve(person, self.directory, NO_CHANNEL)

        def may_decide(request: RotationRequest) -> bool:
            return may_approve and request.requester.user_id != person.user_id

        return home.home_view(
            statuses if statuses is not None else self.statuses(fresh=False),
            self.store.list_in_states([State.PENDING]),
            now=self.clock(),
            max_age_s=self.max_age_s,
            may_decide=may_decide,
            may_request=not barred and policy.may_request(person, self.directory, NO_CHANNEL),
            barred=barred,
        )


class ReminderWatcher:
    def __init__(
        self,
        room: ControlRoom,
        store: Store,
        client: WebClient,
        channel: str | None,
        *,
        interval_s: float,
        check_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.room = room
        self.store = store
        self.client = client
        self.channel = channel
        self.interval_s = interval_s
        self.check_s = check_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[tuple[str, str]]:
        """Post the reminders due now; returns (panel, secret) of each one posted."""
        if self.channel is None:
            log.warning("key-age reminders are off: no rotations channel is configured")
            return []
        posted = []
        for status in self.room.statuses():
            if status.error:
                log.info("no key ages for %s: %s", status.panel, status.error)
                continue
            limit = self.room.max_age_s(status.panel)
            for secret, label, rotated_at in status.secrets():
                now = self.clock()
                if rotated_at is None or not home.is_overdue(rotated_at, now, limit):
                    continue
                if not self.store.claim_reminder(status.panel, secret, self.interval_s):
                    continue
                message = home.reminder_message(status.panel, secret, label, rotated_at, now, limit)
                try:
                    self.client.chat_postMessage(channel=self.channel, **message)
                except (SlackApiError, SlackClientError) as exc:
                    log.warning("could not post a key-age reminder: %s", type(exc).__name__)
                    continue
                posted.append((status.panel, secret))
        return posted

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="reminders", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        # the first look waits one period too: a bot that restarts often (or a test)
        # does not ask every engine for its status at each start
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except Exception:
                log.exception("key-age reminder check failed; trying again later")
