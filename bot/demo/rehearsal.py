"""The real bot, served as in production, with Slack played on this machine.

The Bolt app is built by ``bot.app.build_rotator`` from settings loaded by
``bot.settings.load_settings`` and served over HTTP by ``bot.wsgi.HttpServer``;
requests reach it signed exactly as Slack signs them
(``bot.fakes.slack_signing``), and its Web API calls go to a local stand-in
that records them (``bot.fakes.slack_api``). Which engines it reaches is the
caller's ``panels`` table of the bot's TOML: the demo runs a local engine
(``[local_panels.demo]``), the end-to-end benchmark one behind sshd
(``[panels.bench]``). The Slack secrets are random and live only in this process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from bot.app import EngineClients, Rotator, build_rotator, default_engine_clients
from bot.audit_key import AuditKey
from bot.fakes.panel.files import to_toml
from bot.fakes.slack_api import Call, FakeSlack, has_buttons
from bot.fakes.slack_signing import Sent, SlackSender
from bot.settings import Settings, load_settings
from bot.store import Store, open_store
from bot.wsgi import HttpServer
from handlers.blocks import APPROVE_ACTION, DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from handlers.rotation_request import FINAL_STATES, RotationRequest, State

T = TypeVar("T")

CHANNEL = "C0ROTATIONS"
TEAM = "T0DEMO"
ALICE, BOB = "U0ALICE", "U0BOB"
ONCALL, SECOPS = "S0ONCALL", "S0SECOPS"
#: How the rehearsal's Slack ids read in print.
NAMES: dict[str, str] = {
    ALICE: "alice",
    BOB: "bob",
    ONCALL: "oncall",
    SECOPS: "secops",
    CHANNEL: "rotations",
}


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    """``probe()`` until it returns something, or ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.005)
    return found


class Rehearsal:
    """Alice requests (@secops, @oncall), Bob approves (@oncall), in #rotations.

    ``start()``; play people with ``command``/``approve``; read what Slack got;
    ``close()`` at the end. ``engine_clients`` builds the bot's engine clients
    from its settings (default: as production does).
    """

    def __init__(
        self,
        workdir: Path,
        panels: Mapping[str, Any],
        *,
        engine_clients: Callable[[Settings], EngineClients] = default_engine_clients,
    ) -> None:
        self.workdir = workdir
        self.panels = dict(panels)
        self.engine_clients = engine_clients
        self.fake = FakeSlack(
            token=f"xoxb-demo-{secrets.token_hex(12)}",
            team_id=TEAM,
            groups={ONCALL: [ALICE, BOB], SECOPS: [ALICE]},
            channels=[CHANNEL],
            users=[ALICE, BOB],
        )
        self.signing_secret = secrets.token_hex(16)
        self.store: Store | None = None
        self.rotator: Rotator | None = None
        self.server: HttpServer | None = None
        self.sender: SlackSender | None = None

    def start(self) -> Rehearsal:
        self.fake.start()
        config = self.workdir / "rotator.toml"
        settings_toml = {
            "channels": [CHANNEL],
            "requesters": [SECOPS],
            "approvers": [ONCALL],
            "store": f"sqlite://{self.workdir / 'rotator.db'}",
            **self.panels,
        }
        config.write_text(to_toml(settings_toml), encoding="utf-8")
        settings = load_settings(
            {
                "SLACK_BOT_TOKEN": self.fake.token,
                "SLACK_SIGNING_SECRET": self.signing_secret,
                "SLACK_API_URL": self.fake.url,
                "ROTATOR_CONFIG": str(config),
            }
        )
        self.audit_key = AuditKey.generate()  # a rehearsal signs its audit log with its own key
        self.store = open_store(settings.store_url, audit_key=self.audit_key)
        self.rotator = build_rotator(settings, self.store, self.engine_clients(settings))
        self.server = HttpServer(
            self.rotator.app, self.rotator.healthy, acknowledging=self.rotator.gate.acknowledging
        ).start()
        self.rotator.start()
        self.sender = SlackSender(
            url=self.events_url,
            signing_secret=self.signing_secret,
            team_id=TEAM,
            channel_id=CHANNEL,
            trigger_ids=self.fake.issue_trigger_id,
        )
        return self

    @property
    def events_url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/slack/events"

    # --- people ------------------------------------------------------------------------

    def command(self, user: str, command: str, text: str) -> Sent:
        assert self.sender is not None
        return self.sender.command(command, text, user)

    def approve(self, user: str, request: RotationRequest) -> Sent:
        assert self.sender is not None and request.message_ts
        return self.sender.click(APPROVE_ACTION, request.id, user, request.message_ts)

    def deny(self, user: str, request: RotationRequest, reason: str, timeout_s: float = 30.0) -> Sent:
        """Click Deny, wait for the modal Slack opens, and submit it with ``reason``."""
        assert self.sender is not None and request.message_ts
        opened = len(self.fake.calls_to("views.open"))
        self.sender.click(DENY_ACTION, request.id, user, request.message_ts)
        modal = self.fake.wait_for("views.open", count=opened + 1, timeout=timeout_s)[-1]
        view = modal.params["view"]
        assert view["callback_id"] == DENY_MODAL
        return self.sender.submit_view(
            DENY_MODAL, view["private_metadata"], {DENY_REASON_BLOCK: {DENY_REASON_INPUT: reason}}, user
        )

    # --- what happened -----------------------------------------------------------------

    def posted_request(self, timeout_s: float = 60.0) -> RotationRequest:
        """The pending request once its card is in the channel (the store knows its ts)."""

        def posted() -> RotationRequest | None:
            assert self.store is not None
            pending = self.store.list_in_states([State.PENDING])
            return next((r for r in pending if r.message_ts), None)

        return wait_for("the request card", posted, timeout_s)

    def finished(self, request_id: str, timeout_s: float = 300.0) -> RotationRequest:
        """The request once it ended and its end was reported in Slack.

        A run's end is reported by the runner (``outcome.reported``); a request that
        never ran (denied) is reported once its card no longer offers buttons and its
        thread says why.
        """

        def reported() -> RotationRequest | None:
            assert self.store is not None
            request = self.store.get(request_id)
            if request is None or request.state not in FINAL_STATES:
                return None
            if request.outcome.get("reported"):
                return request
            ran = "reported" in request.outcome
            if ran or not request.message_ts:
                return None
            card = self.fake.latest_card(CHANNEL, request.message_ts)
            return request if not has_buttons(card) and self.thread_calls(request) else None

        return wait_for("the end of the rotation", reported, timeout_s)

    def ephemeral(self, user: str, fragment: str, timeout_s: float = 30.0) -> Call:
        return self.fake.wait_text("chat.postEphemeral", fragment, user=user, timeout=timeout_s)

    def card(self, request: RotationRequest) -> dict[str, Any]:
        assert request.message_ts
        return self.fake.latest_card(CHANNEL, request.message_ts).params

    def first_card(self, request: RotationRequest) -> dict[str, Any]:
        assert request.message_ts
        return self.fake.card_versions(CHANNEL, request.message_ts)[0].params

    def thread_calls(self, request: RotationRequest) -> list[Call]:
        """The replies under the card, in the order Slack received them."""
        return [
            c
            for c in self.fake.calls_to("chat.postMessage")
            if c.params.get("channel") == CHANNEL and c.params.get("thread_ts") == request.message_ts
        ]

    def thread(self, request: RotationRequest) -> list[str]:
        return [c.text for c in self.thread_calls(request)]

    def direct_messages(self, user: str) -> list[str]:
        return [c.text for c in self.fake.calls_to("chat.postMessage") if c.params.get("channel") == user]

    def close(self) -> None:
        """Stop serving; stop following, and end, any engine still running; then the rest."""
        if self.server is not None:
            self.server.stop()
        if self.rotator is not None:
            self.rotator.close(wait=False)  # no new work; runs stop at their engine's next word
            end_child_processes()  # the engine of an interrupted rotation: it has no one to tell
            self.rotator.close(wait=True)
        if self.store is not None:
            self.store.close()
        self.fake.stop()


def end_child_processes(timeout_s: float = 10.0) -> None:
    """SIGTERM this process's children (local engines the bot started) and reap them."""
    me = os.getpid()
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    children.append(int(entry.name))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
