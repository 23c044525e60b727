"""The Bolt app factory, and the services it wires into the handlers.

``create_app(settings, store, engine_clients, web_client=...)`` returns a
Bolt ``App``; ``build_rotator`` returns the same app with the background
services next to it (the runner, the expiry watcher), for the entry point and
for tests that restart the bot. Nothing happens at import, and building does
not call Slack: Bolt asks ``auth.test`` on the first request, once.

Acknowledgement stays fast: the listeners' ``ack`` functions do no I/O; the
only store access before the ack is the delivery dedupe below (one small
insert). Planning, posting and running happen in lazy listeners and the
runner's threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.middleware.request_verification import RequestVerification
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.audit import AuditLog
from bot.engine_client import EngineClient
from bot.enrollment_key import EnrollmentKey, load_enrollment_key
from bot.errors import BotError, RemoteEngineError, StoreError
from bot.expiry import ExpiryWatcher
from bot.fleet_runner import FleetRunner, StoreOffboarding
from bot.home_publisher import ControlRoom, ReminderWatcher
from bot.runner import Runner
from bot.settings import Settings
from bot.store import Store
from bot.totp import TotpStepUp, quiet_client
from engine.protocol import PROTOCOL_VERSION, Request
from handlers import actions, cards, commands, home, ops
from handlers import enroll as enroll_handlers
from handlers import messages as m
from handlers.access import mention
from handlers.errors import DirectoryUnavailable, PlanError, new_reference
from handlers.lanes import Lane
from handlers.ops import fleet
from handlers.plan_view import PlanView
from handlers.ports import HandlerDeps
from handlers.rotation_request import RotationRequest

log = logging.getLogger(__name__)

EngineClients = Callable[[str], EngineClient]


# --- engine planning ---------------------------------------------------------------------


class EnginePlanner:
    """``handlers.ports.Planner`` over engine clients: one read-only ``plan`` per call.

    Engine-client errors are translated here, once, into ``PlanError`` whose
    message is safe to show (the clients' and engine's messages carry no secret).
    """

    def __init__(self, engine_clients: EngineClients, panel_hosts: Mapping[str, str]) -> None:
        self.engine_clients = engine_clients
        self.panel_hosts = dict(panel_hosts)

    def plan(
        self,
        *,
        panel: str,
        op: str,
        agents: Sequence[str],
        all_agents: bool,
        request_id: str,
    ) -> PlanView:
        request = Request(
            v=PROTOCOL_VERSION,
            id=f"{request_id}.plan",
            op="plan",
            **ops.get(op).plan_fields(agents, all_agents),
        )
        closing: dict[str, Any] | None = None
        try:
            client = self.engine_clients(panel)
            for event in client.run(request):
                if event.get("type") in ("result", "error"):
                    closing = event
                    break
            host_key = client.host_key_fingerprint
        except RemoteEngineError as exc:
            raise PlanError(exc.message, code=exc.code) from exc
        except BotError as exc:
            raise PlanError(exc.message, code=exc.code) from exc
        if closing is None:
            raise PlanError("the engine ended without a plan", code="engine_crashed")
        if closing["type"] == "error":
            raise PlanError(
                str(closing.get("message", "engine error")), code=str(closing.get("code"))
            )
        return PlanView.from_engine(
            closing,
            panel=panel,
            op=op,
            agents=agents,
            all_agents=all_agents,
            host_key_fingerprint=host_key,
            panel_host=self.panel_hosts.get(panel, panel),
        )


# --- Slack user groups -------------------------------------------------------------------


class SlackDirectory:
    """User-group members (``usergroups.users.list``) and channel members
    (``conversations.members``), each cached for ``ttl_s``.

    While Slack does not answer, the last members seen are used for at most
    ``max_age_s`` after they were listed; past that, or for a group or channel
    never listed, ``DirectoryUnavailable`` refuses the decision with a clear
    message. An outage can refuse an approval but never grant one on stale membership.
    """

    def __init__(
        self,
        client: WebClient,
        ttl_s: float = 60.0,
        max_age_s: float = 15 * 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def group_members(self, group_id: str) -> frozenset[str]:
        def fetch() -> frozenset[str]:
            response = self.client.usergroups_users_list(usergroup=group_id)
            return frozenset(str(u) for u in response.get("users") or ())

        return self._members(group_id, fetch, "user group", mention(group_id))

    def channel_members(self, channel_id: str) -> frozenset[str]:
        def fetch() -> frozenset[str]:
            members: set[str] = set()
            cursor = ""
            for _ in range(1000):  # Slack pages at most 1,000 members at a time
                response = self.client.conversations_members(
                    channel=channel_id, limit=1000, **({"cursor": cursor} if cursor else {})
                )
                members.update(str(u) for u in response.get("members") or ())
                cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
                if not cursor:
                    break
            return frozenset(members)

        return self._members(f"#{channel_id}", fetch, "channel", f"<#{channel_id}>")

    def _members(
        self, key: str, fetch: Callable[[], frozenset[str]], kind: str, shown: str
    ) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            members = fetch()
        except (SlackApiError, SlackClientError) as exc:
            age = now - cached[0] if cached else None
            if cached and age is not None and age < self.max_age_s:
                log.warning(
                    "could not list %s %s (%s); using its members of %.0f s ago",
                    kind,
                    key,
                    type(exc).__name__,
                    age,
                )
                return cached[1]
            log.warning("could not list %s %s: %s", kind, key, type(exc).__name__)
            raise DirectoryUnavailable(m.directory_unavailable(shown, self.max_age_s / 60)) from exc
        with self._lock:
            self._cache[key] = (now, members)
        return members


# --- Slack deliveries: retries and replays -----------------------------------------------


def _header(req: BoltRequest, name: str) -> str:
    values = req.headers.get(name) or []
    return str(values[0]) if values else ""


def action_key(body: dict[str, Any], raw_body: str = "") -> str:
    """The user action or event of a delivery: a Slack retry repeats it, a new click does not."""
    logical = body.get("event_id") or body.get("trigger_id")
    if not logical:
        logical = hashlib.sha256((raw_body or repr(sorted(body.items()))).encode()).hexdigest()
    return f"act:{logical}"


def delivery_keys(req: BoltRequest) -> tuple[str | None, str]:
    """(replay key, action key) of one delivery.

    Over HTTP the replay key is the signature: the same bytes sent again. A
    Socket Mode message has no signature (nor any header): it arrives on the
    websocket the app opened with its own token, so there is nothing to replay
    and no replay key; repeats are caught by the action key alone. The action
    key names the user action (``trigger_id``) or event (``event_id``), which a
    Slack retry repeats under a new signature or envelope.
    """
    body = req.body if isinstance(req.body, dict) else {}
    signature = _header(req, "x-slack-signature")
    replay = f"sig:{signature}" if req.mode != "socket_mode" else None
    return replay, action_key(body, req.raw_body)


class SeenRecently:
    """Keys seen in the last ``ttl_s`` seconds, in memory: the fast first line against repeats.

    The durable line is the store (``first_delivery``), checked after the
    acknowledgement, which also covers other replicas and restarts.
    """

    def __init__(self, ttl_s: float = 600.0, max_keys: int = 200_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check_and_add(self, key: str) -> bool:
        """True if ``key`` was seen before (within ``ttl_s``); records it either way."""
        now = time.monotonic()
        with self._lock:
            before = self._seen.get(key)
            self._seen[key] = now
            if len(self._seen) > self.max_keys:
                self._forget(now)
        return before is not None and now - before < self.ttl_s

    def _forget(self, now: float) -> None:
        fresh = {k: t for k, t in self._seen.items() if now - t < self.ttl_s}
        if len(fresh) > self.max_keys // 2:
            fresh = dict(sorted(fresh.items(), key=lambda item: item[1])[-(self.max_keys // 2) :])
        self._seen = fresh


def dedupe_middleware(seen: SeenRecently) -> Callable[..., BoltResponse]:
    """A replayed request (same signature) gets 401; a Slack retry gets an empty 200."""

    def dedupe_deliveries(
        req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        replay_key, action = delivery_keys(req)
        replayed = replay_key is not None and seen.check_and_add(replay_key)
        repeated = seen.check_and_add(action)
        retry = _header(req, "x-slack-retry-num")
        if replayed and not retry:
            log.warning("refused a replayed Slack request (same signature seen before)")
            return BoltResponse(status=401, body="replayed request")
        if repeated:
            log.info("ignored a repeated Slack delivery (retry %s)", retry or "none")
            return BoltResponse(status=200, body="")
        return next()

    return dedupe_deliveries


def first_delivery(store: Store) -> Callable[[dict[str, Any]], bool]:
    """True the first time the store sees a delivery's action key (any replica, any restart)."""

    def first(body: dict[str, Any]) -> bool:
        if store.claim_deliveries([action_key(body)]):
            log.info("ignored a delivery another process or an earlier run already handled")
            return False
        return True

    return first


def logged(work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except Exception:
            ref = new_reference()
            log.exception("ref %s: work after an acknowledgement failed", ref)

    return run


_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class _DropUnusedTokenNotice(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment itself and, since the bot gives it a
    ready ``WebClient``, warns on every start that the token is unused: noise, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("bot.bolt")
    if not any(isinstance(f, _DropUnusedTokenNotice) for f in logger.filters):
        logger.addFilter(_DropUnusedTokenNotice())
    return logger


class QuietRequestVerification(RequestVerification):
    """Bolt's signature check, minus its log line that quotes the refused body,
    and with a 401 (not a 500 and a traceback) for a timestamp that is not a number.

    Bolt logs a request with a bad signature in full, and a slash command's
    body carries Slack's verification token: that must not reach a log.
    """

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        if not self._can_skip(req.mode, req.body):
            timestamp = _header(req, "x-slack-request-timestamp")
            if not _TIMESTAMP.fullmatch(timestamp):
                self.logger.info("refused a Slack request whose timestamp is not a number")
                return self._build_error_response()
        return super().process(req=req, resp=resp, next=next)

    def _debug_log_error(self, signature: Any, timestamp: Any, body: Any) -> None:
        self.logger.info(
            "refused a Slack request with an invalid signature (timestamp %s)", timestamp
        )


# --- acknowledgements first --------------------------------------------------------------


class AckFirst:
    """Background work yields to acknowledgements in flight, for at most ``max_delay_s``.

    Slack gives an acknowledgement 3 seconds; a card can wait a moment. In a
    burst of commands the lazy listeners (planning, posting cards) would take
    the interpreter away from the threads still acknowledging; with this gate
    they start once no acknowledgement has been in flight for ``quiet_s``, or
    after ``max_delay_s`` at the latest, so they are delayed but never starved.
    """

    def __init__(self, quiet_s: float = 0.02, max_delay_s: float = 2.0) -> None:
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self._in_flight = 0
        self._last_end = 0.0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def acknowledging(self) -> Iterator[None]:
        with self._changed:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._last_end = time.monotonic()
                if not self._in_flight:
                    self._changed.notify_all()

    def wait_quiet(self) -> None:
        deadline = time.monotonic() + self.max_delay_s
        with self._changed:
            while True:
                now = time.monotonic()
                quiet_for = now - self._last_end
                if now >= deadline or (not self._in_flight and quiet_for >= self.quiet_s):
                    return
                wait = deadline - now if self._in_flight else self.quiet_s - quiet_for
                self._changed.wait(min(wait, deadline - now))


class AckFirstExecutor(ThreadPoolExecutor):
    """An executor whose tasks first wait for a quiet moment (``AckFirst``)."""

    def __init__(self, gate: AckFirst, max_workers: int, name: str = "bolt-lazy") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=name)
        self.gate = gate

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def after_the_acks() -> Any:
            self.gate.wait_quiet()
            return fn(*args, **kwargs)

        return super().submit(after_the_acks)


class Lanes:
    """The work after acknowledgements, one executor per ``Lane``.

    Plans ask the engine and take seconds; one requester can queue many. So
    they get their own threads, and yield to acknowledgements in flight
    (``AckFirst``). Clicks (a store update, a message) and modal openings
    (Slack's trigger id lives 3 s) each have threads of their own that no plan
    can occupy, and start at once.
    """

    def __init__(
        self, gate: AckFirst, plan_threads: int, click_threads: int = 4, modal_threads: int = 2
    ) -> None:
        self.executors: dict[Lane, ThreadPoolExecutor] = {
            Lane.PLAN: AckFirstExecutor(gate, plan_threads, "bolt-plan"),
            Lane.CLICK: ThreadPoolExecutor(click_threads, thread_name_prefix="bolt-click"),
            Lane.MODAL: ThreadPoolExecutor(modal_threads, thread_name_prefix="bolt-modal"),
        }

    def submit(self, work: Callable[[], None], lane: Lane) -> Future[Any]:
        return self.executors[lane].submit(logged(work))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)


# --- the app -----------------------------------------------------------------------------


@dataclass
class Rotator:
    """The Bolt app and its background services."""

    app: App
    settings: Settings
    store: Store
    audit: AuditLog
    runner: Runner
    expiry: ExpiryWatcher
    client: WebClient
    deps: HandlerDeps
    workers: Lanes
    gate: AckFirst
    home: ControlRoom
    reminders: ReminderWatcher
    _started: bool = field(default=False, repr=False)

    def start(self) -> None:
        """Start expiring and reminding, and pick up requests a previous process left
        approved or running."""
        if self._started:
            return
        self._started = True
        self.expiry.start()
        self.reminders.start()
        self.runner.resume()

    def close(self, wait: bool = True) -> None:
        """Stop background work; running rotations stay ``running`` for the next start."""
        self.expiry.stop()
        self.reminders.stop()
        self.workers.shutdown(wait=wait, cancel_futures=True)
        self.runner.close(wait=wait)

    def healthy(self) -> bool:
        try:
            return self.store.ping()
        except StoreError:
            return False


def build_rotator(
    settings: Settings,
    store: Store,
    engine_clients: EngineClients | Mapping[str, EngineClient],
    web_client: WebClient | None = None,
    *,
    clock: Callable[[], float] = time.time,
    runner_threads: int = 4,
    expiry_max_wait_s: float = 30.0,
    enrollment_key: EnrollmentKey | None = None,
    fleet_update_interval_s: float = 3.0,
) -> Rotator:
    engine_clients_fn: EngineClients
    if isinstance(engine_clients, Mapping):
        engine_clients_fn = engine_clients.__getitem__
    else:
        engine_clients_fn = engine_clients
    client = web_client or WebClient(token=settings.bot_token, base_url=settings.api_url)
    if not any(isinstance(h, RateLimitErrorRetryHandler) for h in client.retry_handlers):
        client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))
    policy = settings.policy
    audit = AuditLog(store)
    hosts = {name: settings.panel_host(name) for name in settings.panel_names}
    planner = EnginePlanner(engine_clients_fn, hosts)
    runner = Runner(
        store=store,
        audit=audit,
        engine_clients=engine_clients_fn,
        planner=planner,
        client=client,
        policy=policy,
        clock=clock,
        threads=runner_threads,
    )

    fleet_settings = fleet.FleetSettings(
        tags=settings.panel_tags,
        reach={user: tuple(panels) for user, panels in settings.config.offboard_reach.items()},
        concurrency=settings.config.fleet_concurrency,
        stop_on_failure=settings.config.stop_on_failure,
        offboarding=StoreOffboarding(store),
    )
    fleet_runner = FleetRunner(
        store=store,
        audit=audit,
        engine_clients=engine_clients_fn,
        client=client,
        policy=policy,
        settings=fleet_settings,
        clock=clock,
        update_interval_s=fleet_update_interval_s,
    )
    runner.delegates[fleet.OPERATION.name] = fleet_runner

    def on_expired(request: RotationRequest) -> None:
        cards.refresh_card(client, request, policy, clock())
        cards.post_thread(
            client,
            request,
            f"{request.requester.mention} " + m.expired_line(request.expires_at),
        )

    totp: TotpStepUp | None = None
    if settings.step_up_anywhere:
        totp = TotpStepUp(
            store=store,
            key=enrollment_key or load_enrollment_key(),
            panels=settings.step_up_panels,
            admins=tuple(settings.config.enroll_admins),
            secret_client=quiet_client(client),
            max_failures=settings.config.step_up_max_failures,
            window_s=settings.config.step_up_window_minutes * 60,
            needs_admin_approval=settings.config.step_up_enrollment_approval,
            clock=clock,
        )

    def housekeeping() -> None:
        store.purge_deliveries()
        if totp is not None:  # expired enrollments' DMs and QR files leave Slack
            enroll_handlers.delete_expired_secrets(totp)

    expiry = ExpiryWatcher(
        store,
        on_expired,
        clock=clock,
        max_wait_s=expiry_max_wait_s,
        housekeeping=housekeeping,
    )
    gate = AckFirst()
    workers = Lanes(gate, plan_threads=settings.config.worker_threads)
    deps = HandlerDeps(
        client=client,
        defer=workers.submit,
        first_delivery=first_delivery(store),
        store=store,
        planner=planner,
        policy=policy,
        directory=SlackDirectory(
            client, max_age_s=settings.config.group_cache_max_age_minutes * 60
        ),
        panels=settings.panel_names,
        start_rotation=runner.start,
        on_request_created=lambda request: expiry.notify(),
        clock=clock,
        panel_hosts=hosts,
        step_up=totp,
        ops_config={fleet.OPERATION.name: fleet_settings},
    )
    app = App(
        client=client,
        # listeners acknowledge on the request's own thread (no I/O before ack());
        # the work after it goes to ``workers`` through ``deps.after_ack``
        process_before_response=True,
        signing_secret=settings.signing_secret,
        token_verification_enabled=False,
        request_verification_enabled=False,
        before_authorize=QuietRequestVerification(settings.signing_secret),
        logger=_bolt_logger(),
    )
    app.use(dedupe_middleware(SeenRecently()))
    commands.register(app, deps)
    actions.register(app, deps)
    channel = policy.channels[0] if policy.channels else None
    room = ControlRoom(
        engine_clients=engine_clients_fn,
        panels=settings.panel_names,
        store=store,
        client=client,
        policy=policy,
        directory=deps.directory,
        max_age_s=settings.max_key_age_s,
        clock=clock,
        barred=lambda person: ops.barred(deps, person),
    )
    runner.on_finished = lambda request: room.refresh_all()
    fleet_runner.on_finished = runner.on_finished
    reminders = ReminderWatcher(
        room,
        store,
        client,
        channel,
        interval_s=settings.config.reminder_interval_days * 86400.0,
        check_s=settings.config.reminder_check_minutes * 60.0,
        clock=clock,
    )
    home.register(app, deps, home.HomePorts(publish=room.publish, channel=lambda: channel))

    @app.error
    def report_listener_error(error: Exception) -> None:
        ref = new_reference()
        log.error("ref %s: a listener failed: %s", ref, type(error).__name__, exc_info=error)

    return Rotator(
        app=app,
        settings=settings,
        store=store,
        audit=audit,
        runner=runner,
        expiry=expiry,
        client=client,
        deps=deps,
        workers=workers,
        gate=gate,
        home=room,
        reminders=reminders,
    )


def create_app(
    settings: Settings,
    store: Store,
    engine_clients: EngineClients | Mapping[str, EngineClient],
    web_client: WebClient | None = None,
    **options: Any,
) -> App:
    """The Bolt app alone (the background services are not started)."""
    return build_rotator(settings, store, engine_clients, web_client, **options).app


def default_engine_clients(settings: Settings) -> EngineClients:
    """Engine clients from the settings.

    SSH for ``[panels]``, a local subprocess for ``[local_panels]``.
    """

    def make(name: str) -> EngineClient:
        local = settings.config.local_panels.get(name)
        if local is not None:
            from bot.local_client import LocalEngineClient

            return LocalEngineClient(local.profile)
        entry = settings.config.panels.get(name)
        from bot.ssh_client import SSHEngineClient

        return SSHEngineClient(entry)

    return make
