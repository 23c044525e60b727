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

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.middleware.request_verification import RequestVerification
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.audit import AuditLog
from bot.engine_client import EngineClient
from bot.errors import BotError, EngineClientError, RemoteEngineError, StoreError
from bot.expiry import ExpiryWatcher
from bot.runner import Runner
from bot.settings import Settings
from bot.store import Store
from engine.protocol import PROTOCOL_VERSION, Request
from handlers import actions, cards, commands
from handlers import messages as m
from handlers.plan import PlanView
from handlers.ports import HandlerDeps, PlanError, RotationRequest, new_reference

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
            agents=list(agents) if op == "rotate-agent" and agents else None,
            all_agents=all_agents if op == "rotate-agent" else False,
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
    """User-group members from ``usergroups.users.list``, cached for ``ttl_s``.

    If Slack does not answer, the last known members are used; a group never
    seen counts as empty, so an outage can refuse an approval but never grant one.
    """

    def __init__(self, client: WebClient, ttl_s: float = 60.0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self._home_team: str | None = None

    @property
    def home_team_id(self) -> str:
        """The bot's workspace (``auth.test``), asked once; "" while Slack does not answer."""
        if self._home_team is None:
            try:
                self._home_team = str(self.client.auth_test().get("team_id") or "")
            except (SlackApiError, SlackClientError) as exc:
                log.warning("auth.test failed: %s", type(exc).__name__)
                return ""
        return self._home_team

    def group_members(self, group_id: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(group_id)
        if cached and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            response = self.client.usergroups_users_list(usergroup=group_id)
            members = frozenset(str(u) for u in response.get("users") or ())
        except (SlackApiError, SlackClientError) as exc:
            log.warning("could not list user group %s: %s", group_id, type(exc).__name__)
            return cached[1] if cached else frozenset()
        with self._lock:
            self._cache[group_id] = (now, members)
        return members


# --- Slack deliveries: retries and replays -----------------------------------------------


def _header(req: BoltRequest, name: str) -> str:
    values = req.headers.get(name) or []
    return str(values[0]) if values else ""


def delivery_keys(req: BoltRequest) -> tuple[str, str]:
    """(replay key, logical key) of one signed request.

    The replay key is the signature: the same bytes sent again. The logical key
    names the user action (``trigger_id``) or event (``event_id``), which a
    Slack retry repeats under a new signature.
    """
    signature = _header(req, "x-slack-signature")
    body = req.body if isinstance(req.body, dict) else {}
    logical = body.get("event_id") or body.get("trigger_id")
    if not logical:
        logical = hashlib.sha256(req.raw_body.encode()).hexdigest()
    return f"sig:{signature}", f"act:{logical}"


def dedupe_middleware(store: Store) -> Callable[..., BoltResponse]:
    """Run each Slack delivery once: a replay gets 401, a retry gets an empty 200."""

    def dedupe_deliveries(
        req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        replay_key, logical_key = delivery_keys(req)
        try:
            seen = store.claim_deliveries([replay_key, logical_key])
        except StoreError:
            ref = new_reference()
            log.exception("ref %s: the store is down; refusing a Slack request", ref)
            return BoltResponse(
                status=200,
                body=m.store_down(ref),
            )
        retry = _header(req, "x-slack-retry-num")
        if not seen:
            return next()
        if replay_key in seen and not retry:
            log.warning("refused a replayed Slack request (same signature seen before)")
            return BoltResponse(status=401, body="replayed request")
        log.info("ignored a duplicate Slack delivery (retry %s)", retry or "none")
        return BoltResponse(status=200, body="")

    return dedupe_deliveries


class QuietRequestVerification(RequestVerification):
    """Bolt's signature check, minus its log line that quotes the refused body.

    Bolt logs a request with a bad signature in full, and a slash command's
    body carries Slack's verification token: that must not reach a log.
    """

    def _debug_log_error(self, signature: Any, timestamp: Any, body: Any) -> None:
        self.logger.info("refused a Slack request with an invalid signature (timestamp %s)", timestamp)


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
    _started: bool = field(default=False, repr=False)

    def start(self) -> None:
        """Start expiring, and pick up requests a previous process left approved or running."""
        if self._started:
            return
        self._started = True
        self.expiry.start()
        self.runner.resume()

    def close(self, wait: bool = True) -> None:
        """Stop background work; running rotations stay ``running`` for the next start."""
        self.expiry.stop()
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
) -> Rotator:
    engine_clients_fn: EngineClients
    if isinstance(engine_clients, Mapping):
        engine_clients_fn = engine_clients.__getitem__
    else:
        engine_clients_fn = engine_clients
    client = web_client or WebClient(token=settings.bot_token, base_url=settings.api_url)
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

    def on_expired(request: RotationRequest) -> None:
        cards.refresh_card(client, request, policy, clock())
        cards.post_thread(
            client,
            request,
            f"{request.requester.mention} " + m.expired_line(request.expires_at),
        )

    expiry = ExpiryWatcher(
        store,
        on_expired,
        clock=clock,
        max_wait_s=expiry_max_wait_s,
        housekeeping=store.purge_deliveries,
    )
    deps = HandlerDeps(
        store=store,
        planner=planner,
        policy=policy,
        directory=SlackDirectory(client),
        panels=settings.panel_names,
        start_rotation=runner.start,
        on_request_created=lambda request: expiry.notify(),
        clock=clock,
        panel_hosts=hosts,
    )
    app = App(
        client=client,
        signing_secret=settings.signing_secret,
        token_verification_enabled=False,
        request_verification_enabled=False,
        before_authorize=QuietRequestVerification(settings.signing_secret),
        listener_executor=ThreadPoolExecutor(
            max_workers=settings.config.worker_threads, thread_name_prefix="bolt"
        ),
        logger=logging.getLogger("bot.bolt"),
    )
    app.use(dedupe_middleware(store))
    commands.register(app, deps)
    actions.register(app, deps)

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


__all__ = [
    "EngineClientError",
    "EnginePlanner",
    "Rotator",
    "SlackDirectory",
    "build_rotator",
    "create_app",
    "default_engine_clients",
    "delivery_keys",
]
