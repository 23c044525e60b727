"""The bot under test: the real Bolt app over HTTP, a fake Slack API, signed requests.

``make_bot(...)`` builds one bot (settings from a TOML file written here, a
SQLite store under tmp unless given, engine clients from a ``FakeEngineHost``
unless given), serves it on 127.0.0.1 and returns a ``BotUnderTest``. Several
bots may share a store: that is how tests restart the bot.

The people: Alice requests (member of @secops and @oncall), Bob and Carol
approve (@oncall), Dave is neither. All four are in the rotations channel.
Erin is in it too, and in @desk: with ``SPLIT_ROLES`` (requesters @desk,
approvers @oncall) she may request but not approve, and Bob may approve but not
request. Oscar exists but is not in the rotations channel (an outsider).
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.app import Rotator, build_rotator, default_engine_clients
from bot.audit_key import AuditKey
from bot.fakes.slack_api import Call, FakeSlack
from bot.fakes.slack_signing import Sent, SlackSender
from bot.inventory import PanelEntry
from bot.settings import Settings, load_settings
from bot.store import Store, open_store
from bot.wsgi import HttpLimits, HttpServer
from handlers.blocks import APPROVE_ACTION
from tests.support.fake_engine import FakeEngineHost
from tests.support.secrets_scan import SecretRegistry

TEAM = "T0TEAM"
CHANNEL = "C0ROTATE"
ONCALL = "S0ONCALL"
SECOPS = "S0SECOPS"
ALICE, BOB, CAROL, DAVE = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE"
ERIN, OSCAR = "U0ERIN", "U0OSCAR"
DESK = "S0DESK"
#: make_bot(**SPLIT_ROLES): those who may request and those who may approve differ
SPLIT_ROLES: dict[str, tuple[str, ...]] = {"requesters": (DESK,), "approvers": (ONCALL,)}
ELSEWHERE = "C0ELSEWHERE"  # a channel that exists but is not configured for rotations
PANEL = "prod-eu"
#: the audit log's key for every bot under test (kept outside the store, as in production)
AUDIT_KEY = AuditKey.generate()
REQUEST_ID = re.compile(r"Request `(r-[0-9]{8}-[0-9]{6}-[0-9a-f]{4})`")


@dataclass(frozen=True)
class SlackSecrets:
    bot_token: str
    signing_secret: str
    verification_token: str


@pytest.fixture
def slack_secrets(secret_registry: SecretRegistry) -> SlackSecrets:
    made = SlackSecrets(
        bot_token=f"xoxb-{secrets.randbelow(10**12)}-{secrets.token_hex(12)}",
        signing_secret=secrets.token_hex(16),
        verification_token=secrets.token_hex(12),
    )
    secret_registry.register(made.bot_token, "SLACK_BOT_TOKEN")
    secret_registry.register(made.signing_secret, "SLACK_SIGNING_SECRET")
    secret_registry.register(made.verification_token, "Slack verification token")
    return made


@pytest.fixture
def fake_slack(slack_secrets: SlackSecrets) -> Iterator[FakeSlack]:
    fake = FakeSlack(
        token=slack_secrets.bot_token,
        team_id=TEAM,
        groups={ONCALL: [BOB, CAROL, ALICE], SECOPS: [ALICE, BOB, CAROL], DESK: [ALICE, ERIN]},
        channels=[CHANNEL, ELSEWHERE],
        users=[ALICE, BOB, CAROL, DAVE, ERIN, OSCAR],
        members={CHANNEL: [ALICE, BOB, CAROL, DAVE, ERIN]},  # Oscar is in ELSEWHERE only
    ).start()
    yield fake
    fake.stop()


def write_config(
    path: Path,
    *,
    store_url: str,
    panels: tuple[str, ...] = (PANEL,),
    approvers: tuple[str, ...] = (ONCALL,),
    requesters: tuple[str, ...] = (SECOPS,),
    approvals_required: int = 1,
    expiry_minutes: float = 30,
    channels: tuple[str, ...] = (CHANNEL,),
    extra: Mapping[str, Any] | None = None,
    profiles: dict[str, Path] | None = None,
    ssh_panels: Mapping[str, PanelEntry] | None = None,
    tags: Mapping[str, tuple[str, ...]] | None = None,
    panel_step_up: Mapping[str, str] | None = None,
) -> Path:
    """The bot's TOML: ``panels`` run a local engine, ``ssh_panels`` are ``[panels.X]`` entries."""

    def toml_list(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    lines = [
        f"channels = {toml_list(channels)}",
        f"requesters = {toml_list(requesters)}",
        f"approvers = {toml_list(approvers)}",
        f"approvals_required = {approvals_required}",
        f"expiry_minutes = {expiry_minutes}",
        f'store = "{store_url}"',
        *(f"{k} = {_toml_value(v)}" for k, v in (extra or {}).items()),
    ]
    for name in panels:
        profile = (profiles or {}).get(name, path.parent / f"{name}.profile.toml")
        lines += [
            "",
            f'[local_panels."{name}"]',
            f'profile = "{profile}"',
            f'host = "{name}.example.net"',
            *([f"tags = {toml_list(tuple((tags or {})[name]))}"] if (tags or {}).get(name) else []),
            *([f'step_up = "{(panel_step_up or {})[name]}"'] if (panel_step_up or {}).get(name) else []),
        ]
    for name, entry in (ssh_panels or {}).items():
        fields = entry.model_dump(mode="json", exclude={"name", "key_passphrase"}, exclude_none=True)
        if entry.key_passphrase is not None:
            fields["key_passphrase"] = entry.key_passphrase.get_secret_value()
        if (tags or {}).get(name):
            fields["tags"] = list((tags or {})[name])
        lines += ["", f'[panels."{name}"]', *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o640)  # as setup-bot-host.sh makes it: the bot refuses a store password others can read
    return path


def _toml_value(value: Any) -> str:
    """JSON is TOML for strings, numbers and lists; a table is written inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


# make_bot(**config): these go to write_config; any other key is written as a TOML setting
_WRITE_CONFIG_OPTIONS = frozenset(inspect.signature(write_config).parameters)


@dataclass
class BotUnderTest:
    rotator: Rotator
    server: HttpServer
    slack: SlackSender
    fake: FakeSlack
    store: Store
    settings: Settings
    engine: FakeEngineHost | None = None
    owns_store: bool = True
    closed: bool = field(default=False)
    last_ack: Sent | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def command(self, command: str, text: str, user: str = ALICE, **options: Any) -> Sent:
        return self.slack.command(command, text, user, **options)

    def request_key(
        self, text: str = f"{PANEL} suspected .env disclosure, INC-4412", user: str = ALICE
    ) -> tuple[str, str]:
        """Send /rotate-key, wait for its card and for its ts in the store; (request id, ts)."""
        before = len(self.cards())
        self.last_ack = self.command("/rotate-key", text, user)
        assert self.last_ack.status == 200, self.last_ack.answer
        card = self.fake.wait_for("chat.postMessage", is_card, count=before + 1)[-1]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        wait_until(lambda: self.state(request_id, "message_ts") == ts)
        return request_id, ts

    def state(self, request_id: str, attribute: str = "state") -> Any:
        request = self.store.get(request_id)
        value = getattr(request, attribute) if request else None
        return value.value if attribute == "state" and value is not None else value

    def click(self, action: str, request_id: str, ts: str, user: str, **options: Any) -> Sent:
        return self.slack.click(action, request_id, user, ts, **options)

    def approve(self, request_id: str, ts: str, user: str = BOB, **options: Any) -> Sent:
        return self.click(APPROVE_ACTION, request_id, ts, user, **options)

    def cards(self) -> list[Call]:
        return [c for c in self.fake.calls_to("chat.postMessage") if is_card(c)]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.stop()
        self.rotator.close(wait=False)
        if self.owns_store:
            self.store.close()


def wait_until(
    condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.005)


#: what a requester is told while the engine plans (only once they may request)
PLANNING = ":hourglass_flowing_sand: Asking the engine"


def answers_to(fake: FakeSlack, user: str, count: int = 1) -> list[Call]:
    """The first ``count`` ephemeral answers to ``user``, besides "Asking the engine…"."""
    return fake.wait_for(
        "chat.postEphemeral",
        lambda c: c.params.get("user") == user and not c.text.startswith(PLANNING),
        count=count,
    )


def is_card(call: Call) -> bool:
    return (
        not call.params.get("thread_ts")
        and "requested:" in call.text
        and call.params.get("channel") == CHANNEL
    )


def card_request_id(call: Call) -> str:
    match = REQUEST_ID.search(call.all_text())
    assert match, f"no request id on the card: {call.all_text()}"
    return match.group(1)


MakeBot = Callable[..., BotUnderTest]


@pytest.fixture
def make_bot(
    tmp_path: Path, fake_slack: FakeSlack, slack_secrets: SlackSecrets, secret_registry: SecretRegistry
) -> Iterator[MakeBot]:
    secret_registry.register(AUDIT_KEY.hex(), "ROTATOR_AUDIT_KEY")
    made: list[BotUnderTest] = []
    hosts: list[FakeEngineHost] = []
    counter = iter(range(1, 1000))

    def make(
        *,
        engine: FakeEngineHost | None = None,
        engine_clients: Any = None,
        store: Store | None = None,
        store_url: str | None = None,
        start: bool = True,
        clock: Callable[[], float] | None = None,
        expiry_max_wait_s: float = 30.0,
        limits: HttpLimits | None = None,
        fleet_update_interval_s: float = 0.2,
        **config: Any,
    ) -> BotUnderTest:
        n = next(counter)
        extra = {k: config.pop(k) for k in list(config) if k not in _WRITE_CONFIG_OPTIONS}
        if extra:
            config["extra"] = extra
        url = store_url or f"sqlite://{tmp_path / 'rotator.db'}"
        config_path = write_config(tmp_path / f"rotator-{n}.toml", store_url=url, **config)
        settings = load_settings(
            {
                "SLACK_BOT_TOKEN": slack_secrets.bot_token,
                "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
                "SLACK_API_URL": fake_slack.url,
                "ROTATOR_CONFIG": str(config_path),
            }
        )
        owns_store = store is None
        the_store = store or open_store(
            settings.store_url, **({"clock": clock} if clock else {}), audit_key=AUDIT_KEY
        )
        if engine_clients is None and config.get("ssh_panels"):
            engine_clients = default_engine_clients(settings)  # SSH, as in production
        if engine_clients is None:
            engine = engine or FakeEngineHost()
            hosts.append(engine)
            engine_clients = {name: engine.client() for name in settings.panel_names}
        options: dict[str, Any] = {
            "expiry_max_wait_s": expiry_max_wait_s,
            "fleet_update_interval_s": fleet_update_interval_s,
        }
        if clock:
            options["clock"] = clock
        rotator = build_rotator(settings, the_store, engine_clients, **options)
        server = HttpServer(
            rotator.app,
            rotator.healthy,
            acknowledging=rotator.gate.acknowledging,
            limits=limits or settings.http_limits,
        ).start()
        bot = BotUnderTest(
            rotator=rotator,
            server=server,
            slack=SlackSender(
                url=f"{server.url}/slack/events",
                signing_secret=slack_secrets.signing_secret,
                verification_token=slack_secrets.verification_token,
                team_id=TEAM,
                channel_id=CHANNEL,
                trigger_ids=fake_slack.issue_trigger_id,
            ),
            fake=fake_slack,
            store=the_store,
            settings=settings,
            engine=engine,
            owns_store=owns_store,
        )
        made.append(bot)
        if start:
            rotator.start()
        return bot

    yield make
    for host in hosts:
        host.release_all()
    for bot in reversed(made):
        bot.close()


@pytest.fixture(params=["sqlite", "mysql"])
def any_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, secret_registry: SecretRegistry
) -> Iterator[str]:
    """A fresh store URL of each backend: a SQLite file, a MariaDB database with its own login."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store.db'}"
        return
    from tests.support.mariadb import ALL_TABLES, create_database

    db = create_database(exclude_tables=ALL_TABLES, own_user=True)
    secret_registry.register(db.password, "store DB password")
    try:
        yield f"mysql://{db.user}:{db.password}@{db.host}:{db.port}/{db.name}"
    finally:
        db.drop()
