"""The App Home control room and key-age reminders, over signed HTTP with the strict fake Web API.

The engine's ``status`` (scripted by ``FakeEngineHost.status_result``) says when each
secret was last rotated; a controlled clock ages them.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from bot import socket_mode
from bot.fakes.slack_api import Call
from bot.fakes.slack_signing import SlackSender
from bot.fakes.socket_mode import FakeSocketMode
from bot.settings import load_settings
from handlers import home
from handlers.blocks import APPROVE_ACTION, DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    DAVE,
    ELSEWHERE,
    ERIN,
    ONCALL,
    OSCAR,
    PANEL,
    SPLIT_ROLES,
    MakeBot,
    answers_to,
    wait_until,
    write_config,
)
from tests.support.fake_engine import FakeEngineHost
from tests.support.secrets_scan import SecretRegistry

DAY = 86400.0
NO_REPEAT = {"reminder_check_minutes": 10_000}  # the watcher's own loop stays out of the way


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def ages(key_days: float | None, now: float, **agents: float | None) -> dict[str, Any]:
    return {
        "key_rotated_at": None if key_days is None else now - key_days * DAY,
        "agents": [
            {"agent": name, "rotated_at": None if d is None else now - d * DAY} for name, d in agents.items()
        ],
        "agents_listed": True,
    }


def texts(node: Any) -> list[str]:
    """Every text of a view or message, in order."""
    out: list[str] = []
    if isinstance(node, dict):
        if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
            out.append(node["text"])
        for value in node.values():
            out += texts(value)
    elif isinstance(node, list):
        for item in node:
            out += texts(item)
    return out


def buttons(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (e["action_id"], e.get("value", ""))
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    ]


def home_of(bot: Any, user: str, count: int = 1) -> dict[str, Any]:
    call = bot.fake.wait_for("views.publish", lambda c: c.params.get("user_id") == user, count=count)[-1]
    assert call.response["ok"], call.response
    view = bot.fake.home_view(user)
    assert view is not None
    return view


def open_home(bot: Any, user: str) -> dict[str, Any]:
    before = len([c for c in bot.fake.calls_to("views.publish") if c.params.get("user_id") == user])
    sent = bot.slack.app_home_opened(user)
    assert sent.status == 200, sent.answer
    return home_of(bot, user, count=before + 1)


def test_the_home_tab_shows_each_panels_key_age_agents_and_last_runs(make_bot: MakeBot) -> None:
    """An aged key is flagged against max_key_age_days, a fresh one is not; a never-rotated
    key reads "unknown"; agent tokens carry their own ages; the last runs show their outcome.
    Someone who may neither request nor approve sees no panel."""
    eu, us, lab = FakeEngineHost(), FakeEngineHost(), FakeEngineHost()
    clock = Clock(1_900_000_000.0)
    eu.status_result["secret_ages"] = ages(400, clock.now, **{"agent-7": 12, "agent-9": 500, "agent-11": None})
    eu.status_result["runs"] = [
        {"ts": int((clock.now - 400 * DAY) * 1000), "rotation_id": "r-old", "op": "rotate-key",
         "event": "finished", "ok": True, "requested_by": "U0ALICE"},
        {"ts": int((clock.now - 12 * DAY) * 1000), "rotation_id": "r-agents", "op": "rotate-agent",
         "event": "finished", "ok": False, "code": "agent_unreachable", "rolled_back": False},
    ]  # fmt: skip
    us.status_result["secret_ages"] = {**ages(30, clock.now), "agents_listed": False}
    bot = make_bot(
        engine_clients={"prod-eu": eu.client(), "prod-us": us.client(), "lab": lab.client()},
        panels=("prod-eu", "prod-us", "lab"),
        clock=clock,
        **NO_REPEAT,
    )

    shown = texts(open_home(bot, ALICE))

    assert ["Panel lab", "Panel prod-eu", "Panel prod-us"] == [t for t in shown if t.startswith("Panel ")]
    eu_lines = "\n".join(shown[shown.index("Panel prod-eu") : shown.index("Panel prod-us")])
    assert ":warning: Encryption key: 400 days · older than 365 days: rotate it" in eu_lines
    assert ":key: Agent agent-7's token: 12 days" in eu_lines
    assert ":warning: Agent agent-9's token: 500 days · older than 365 days: rotate it" in eu_lines
    assert ":grey_question: Agent tokens never rotated here, age unknown: agent-11" in eu_lines
    assert "`r-agents` rotate-agent: failed (agent_unreachable)" in eu_lines
    assert "`r-old` rotate-key: ok" in eu_lines
    us_lines = "\n".join(shown[shown.index("Panel prod-us") :])
    assert ":key: Encryption key: 30 days" in us_lines and ":warning:" not in us_lines
    assert "The panel's agents could not be listed: other agent tokens' ages are unknown" in us_lines
    lab_lines = "\n".join(shown[shown.index("Panel lab") : shown.index("Panel prod-eu")])
    assert ":key: Encryption key: unknown (no rotation on record)" in lab_lines
    assert "No runs on record yet." in lab_lines
    assert [["status"]] * 3 == [[r.op for r in host.requests] for host in (eu, us, lab)], (
        "the engines were asked for their read-only status, nothing else"
    )
    assert shown == texts(open_home(bot, ALICE))
    assert [1, 1, 1] == [len(host.requests) for host in (eu, us, lab)], "reopened within 30 s: no new SSH session"

    refused = texts(open_home(bot, DAVE))
    assert not [t for t in refused if t.startswith("Panel ")]


def test_pending_requests_on_the_home_tab_have_buttons_for_approvers_only_and_a_run_refreshes_it(
    make_bot: MakeBot,
) -> None:
    """Bob (approver) sees Alice's pending request with Approve/Deny; Alice, who asked, sees it
    without. Bob approves on his Home tab; once the run ends, his Home tab is published again,
    without the request."""
    bot = make_bot(**NO_REPEAT)
    request_id, _ = bot.request_key()

    bob_view = open_home(bot, BOB)
    alice_view = open_home(bot, ALICE)
    assert (APPROVE_ACTION, request_id) in buttons(bob_view)
    assert any(f"Pending `{request_id}`" in t for t in texts(alice_view))
    assert (APPROVE_ACTION, request_id) not in buttons(alice_view)

    published_before = len(bot.fake.calls_to("views.publish"))
    assert bot.slack.click_in_home(APPROVE_ACTION, request_id, BOB).status == 200  # from the Home tab
    wait_until(lambda: bot.state(request_id) == "done", what="the run ends")
    after = bot.fake.wait_for(
        "views.publish",
        lambda c: c.params.get("user_id") == BOB,
        count=len([c for c in bot.fake.calls_to("views.publish")[:published_before]
                   if c.params.get("user_id") == BOB]) + 1,
    )[-1]  # fmt: skip
    refreshed = json.loads(after.params["view"]) if isinstance(after.params["view"], str) else after.params["view"]
    assert not any(f"Pending `{request_id}`" in t for t in texts(refreshed))
    assert (APPROVE_ACTION, request_id) not in buttons(refreshed)


def test_home_tabs_opened_before_a_restart_are_refreshed_after_a_run_in_the_new_process(
    make_bot: MakeBot, any_store_url: str
) -> None:
    """Bob opened his Home tab; the bot restarts (or another replica runs the rotation): when
    the run ends, Bob's tab is published again, from the store, with both backends."""
    first = make_bot(store_url=any_store_url, **NO_REPEAT)
    open_home(first, BOB)
    first.close()

    restarted = make_bot(store_url=any_store_url, **NO_REPEAT)  # a new process, the same store
    request_id, ts = restarted.request_key()
    published_before = len([c for c in restarted.fake.calls_to("views.publish") if c.params.get("user_id") == BOB])
    restarted.approve(request_id, ts, BOB)
    wait_until(lambda: restarted.state(request_id) == "done", what="the run ends")
    refreshed = home_of(restarted, BOB, count=published_before + 1)
    assert not any(f"Pending `{request_id}`" in t for t in texts(refreshed))
    assert [user for _, user in restarted.rotator.store.home_viewers()] == [BOB]


def _submit(bot: Any, user: str, *, panel: str, kind: str, reason: str, agents: str = "") -> Any:
    select = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    return bot.slack.submit_view(
        home.REQUEST_MODAL,
        "",
        {
            home.PANEL_BLOCK: {home.PANEL_INPUT: select(panel)},
            home.KIND_BLOCK: {home.KIND_INPUT: select(kind)},
            home.AGENTS_BLOCK: {home.AGENTS_INPUT: agents},
            home.REASON_BLOCK: {home.REASON_INPUT: reason},
        },
        user,
    )


def test_the_request_button_opens_the_modal_and_submitting_it_creates_the_request(
    make_bot: MakeBot,
) -> None:
    """From the Home tab: the modal lists the panels and kinds; a submission without a reason
    is refused in the modal; a good one posts the request's card in the rotations channel,
    planned by the engine, exactly as /rotate-key does."""
    bot = make_bot(**NO_REPEAT)
    view = open_home(bot, ALICE)
    action, value = next(b for b in buttons(view) if b[0] == home.REQUEST_ROTATION_ACTION)
    assert bot.slack.click(action, value, ALICE, "").status == 200
    modal = bot.fake.wait_for("views.open")[-1]
    assert modal.response["ok"], modal.response
    opened = modal.params["view"]
    opened = json.loads(opened) if isinstance(opened, str) else opened
    assert home.REQUEST_MODAL == opened["callback_id"]
    assert [PANEL] == [o["value"] for o in opened["blocks"][0]["element"]["options"]]

    refused = _submit(bot, ALICE, panel=PANEL, kind="rotate-key", reason="")
    assert "errors" == refused.json().get("response_action")
    assert home.REASON_BLOCK in refused.json()["errors"]

    accepted = _submit(bot, ALICE, panel=PANEL, kind="rotate-key", reason="key older than a year")
    assert (200, "") == (accepted.status, accepted.answer)
    card = bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)[-1]
    assert CHANNEL == card.params["channel"]
    assert "key older than a year" in card.all_text()
    (created,) = bot.store.pending_of(ALICE, limit=5)
    assert ("rotate-key", PANEL, "key older than a year", ALICE) == (
        created.op, created.panel, created.reason, created.requester.user_id)  # fmt: skip
    assert ["plan"] == [r.op for r in bot.engine.requests if r.op != "status"]


def test_the_request_form_takes_any_agent_name_the_panel_accepts(make_bot: MakeBot) -> None:
    """The form's agents field reads names as the command does: quoted where a name holds a
    space, a comma or a quote; a malformed list is answered in the form, nothing filed."""
    bot = make_bot(**NO_REPEAT)
    refused = _submit(bot, ALICE, panel=PANEL, kind="rotate-agent", reason="lost laptop", agents='"Büro 1')
    assert "errors" == refused.json().get("response_action")
    assert "in quotes" in refused.json()["errors"][home.AGENTS_BLOCK]
    assert [r.op for r in bot.engine.requests if r.op != "status"] == []

    names = '"Büro 1, Keller", $(id), o\'hare'
    accepted = _submit(bot, ALICE, panel=PANEL, kind="rotate-agent", reason="lost laptop", agents=names)
    assert (200, "") == (accepted.status, accepted.answer)
    bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)
    (plan,) = bot.engine.ops("plan")
    assert plan.agents == ["Büro 1, Keller", "$(id)", "o'hare"]


def _reminders(bot: Any) -> list[Call]:
    return [
        c for c in bot.fake.calls_to("chat.postMessage")
        if c.params.get("channel") == CHANNEL and c.text.startswith(":alarm_clock:")
    ]  # fmt: skip


def test_a_key_past_its_age_gets_one_reminder_per_interval_even_across_a_restart(
    make_bot: MakeBot,
) -> None:
    """Driven by a controlled clock: a key 300 days old gets nothing; at 366 days one reminder
    with a prefilled "Request rotation" button (and one for an agent token past its age, none
    for a token of unknown age); checking again within the interval posts nothing; after the
    interval, one more each. A new bot on the same store does not repeat them. Nothing is
    ever rotated."""
    engine = FakeEngineHost()
    clock = Clock(1_900_000_000.0)
    engine.status_result["secret_ages"] = ages(300, clock.now, **{"agent-9": 340, "agent-11": None})
    bot = make_bot(engine=engine, clock=clock, reminder_interval_days=7, **NO_REPEAT)

    assert [] == bot.rotator.reminders.check()
    clock.advance(66 * DAY)
    bot.rotator.reminders.check()
    wait_until(lambda: len(_reminders(bot)) == 2, what="two reminders")
    reminder, agent_reminder = _reminders(bot)
    assert "Encryption key of panel prod-eu was last rotated 366 days ago" in reminder.text
    assert "Agent agent-9's token of panel prod-eu was last rotated 406 days ago" in agent_reminder.text
    ((_, agent_value),) = buttons({"blocks": agent_reminder.params["blocks"]})
    assert ("rotate-agent", ("agent-9",)) == (
        home.Prefill.from_value(agent_value).op, home.Prefill.from_value(agent_value).agents)  # fmt: skip
    ((action, value),) = buttons({"blocks": reminder.params["blocks"]})
    assert action == home.REQUEST_ROTATION_ACTION
    assert home.Prefill(panel=PANEL, op="rotate-key", reason="encryption key older than 365 days (reminder)") == (
        home.Prefill.from_value(value)
    )

    clock.advance(6 * DAY)
    assert [] == bot.rotator.reminders.check()
    clock.advance(1 * DAY + 60)
    assert [(PANEL, "key"), (PANEL, "agent:agent-9")] == bot.rotator.reminders.check()
    assert 4 == len(_reminders(bot))

    bot.close()
    restarted = make_bot(engine=engine, clock=clock, **NO_REPEAT)  # a new process, the same store file
    assert [] == restarted.rotator.reminders.check()
    assert 4 == len(_reminders(bot))
    assert {"status"} == {r.op for r in engine.requests}, "a reminder never starts a rotation"

    # the button opens the request modal, prefilled
    assert restarted.slack.click(action, value, ALICE, str(reminder.response["ts"])).status == 200
    opened = restarted.fake.wait_for("views.open")[-1]
    view = json.loads(opened.params["view"]) if isinstance(opened.params["view"], str) else opened.params["view"]
    elements = {b["block_id"]: b["element"] for b in view["blocks"]}
    assert PANEL == elements[home.PANEL_BLOCK]["initial_option"]["value"]
    assert "rotate-key" == elements[home.KIND_BLOCK]["initial_option"]["value"]
    assert "encryption key older than 365 days (reminder)" == elements[home.REASON_BLOCK]["initial_value"]


def test_max_key_age_days_is_set_per_panel(tmp_path: Path) -> None:
    """``max_key_age_days`` is the default (365); ``[max_key_age_days_by_panel]`` overrides it."""
    path = write_config(tmp_path / "r.toml", store_url="sqlite://r.db", panels=("prod-eu", "prod-us"))
    path.write_text(path.read_text() + "\n[max_key_age_days_by_panel]\nprod-us = 90\n")
    env = {
        "SLACK_BOT_TOKEN": "xoxb-1-abc",
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123",
        "ROTATOR_CONFIG": str(path),
    }
    settings = load_settings(env)
    assert (365 * DAY, 90 * DAY) == (settings.max_key_age_s("prod-eu"), settings.max_key_age_s("prod-us"))


def test_a_refusal_for_a_click_on_the_home_tab_reaches_the_person(make_bot: MakeBot) -> None:
    """A Home-tab click has no channel: the requester's own Approve and a non-approver's Deny
    are still answered, privately, in the request's channel, and change nothing."""
    bot = make_bot()
    request_id, _ = bot.request_key()

    bot.slack.click_in_home(APPROVE_ACTION, request_id, ALICE)
    bot.slack.click_in_home(DENY_ACTION, request_id, DAVE)

    to_alice = bot.fake.wait_for(
        "chat.postEphemeral", lambda c: c.params.get("user") == ALICE and "someone else" in c.text
    )[0]
    to_dave = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == DAVE)[0]
    assert (to_alice.params["channel"], to_dave.params["channel"]) == (CHANNEL, CHANNEL)
    assert "can deny rotations" in to_dave.text
    assert bot.state(request_id) == "pending" and bot.fake.calls_to("views.open") == []


# --- one access rule: the Home tab shows and accepts exactly what the commands would ---------

TEMPLATE_SCOPE = {"requesters": ()}  # what the template ships: channels set, requesters empty


def _all_text(view: dict[str, Any]) -> str:
    return "\n".join(texts(view))


def _submissions(bot: Any) -> list[Call]:
    return [c for c in bot.fake.calls_to("chat.postMessage") if "requested:" in c.text]


def _opened_view(call: Call) -> dict[str, Any]:
    view = call.params["view"]
    return dict(json.loads(view) if isinstance(view, str) else view)


def test_an_outsider_is_refused_by_every_surface_the_commands_refuse_them(make_bot: MakeBot) -> None:
    """Template scope (channels set, requesters empty). Oscar is not in the rotations channel.
    The commands refuse him (he can only type them elsewhere); so do his Home tab (no pending
    id or reason, no request button), the "Request a rotation" button (a refusal modal, not the
    form), a signed submission of the request form (refused in the modal: no card, no plan),
    /rotate-status, and Approve/Deny clicked from a Home tab (Oscar listed as an approver: the
    channel rule still holds). Members of the channel keep every surface."""
    bot = make_bot(approvers=(ONCALL, OSCAR), **TEMPLATE_SCOPE, **NO_REPEAT)
    request_id, _ = bot.request_key(f"{PANEL} secret reason INC-77")  # Alice, from the channel

    for command, text in [("/rotate-key", f"{PANEL} my own reason"), ("/rotate-agent", f"--all {PANEL} mine"),
                          ("/rotate-incident", f"{PANEL} mine"), ("/rotate-db-password", f"{PANEL} mine")]:  # fmt: skip
        assert "Rotations are requested in <#C0ROTATE>" in bot.command(command, text, OSCAR, channel=ELSEWHERE).answer
    assert "shown in <#C0ROTATE> only" in bot.command("/rotate-status", "", OSCAR, channel=ELSEWHERE).answer

    oscar_home = open_home(bot, OSCAR)
    shown = _all_text(oscar_home)
    assert request_id not in shown and "secret reason" not in shown and "Panel " not in shown
    assert "Only members of <#C0ROTATE> request, approve and follow rotations" in shown
    assert [] == buttons(oscar_home)

    # a request button he should never have had (a tab published before he left the channel)
    assert bot.slack.click_in_home(home.REQUEST_ROTATION_ACTION, "", OSCAR).status == 200
    opened = _opened_view(bot.fake.wait_for("views.open")[-1])
    assert home.REQUEST_REFUSED_MODAL == opened["callback_id"] and "submit" not in opened
    assert "Only members of <#C0ROTATE>" in _all_text(opened)

    plans_before = [r.op for r in bot.engine.requests].count("plan")
    refused = _submit(bot, OSCAR, panel=PANEL, kind="rotate-key", reason="let me in")
    assert "errors" == refused.json().get("response_action")
    assert "Only members of <#C0ROTATE>" in refused.json()["errors"][home.PANEL_BLOCK]

    assert bot.slack.click_in_home(APPROVE_ACTION, request_id, OSCAR).status == 200
    assert bot.slack.click_in_home(DENY_ACTION, request_id, OSCAR).status == 200
    answers = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == OSCAR, count=2)
    assert {"user_not_in_channel"} == {c.response.get("error") for c in answers}, "Slack refuses to tell him"
    denied = bot.slack.submit_view(  # the deny form, submitted without a click before it
        DENY_MODAL, request_id, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "not on my watch"}}, OSCAR
    )
    assert denied.status == 200
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == OSCAR, count=3)
    assert bot.state(request_id) == "pending" and bot.store.get(request_id).approvals == ()
    assert 1 == len(bot.fake.calls_to("views.open")), "no deny modal opened for him"
    assert 1 == len(_submissions(bot)) and plans_before == [r.op for r in bot.engine.requests].count("plan")
    assert bot.store.pending_of(OSCAR) == []

    # a member of the channel, listed nowhere (requesters empty): the Home tab and its form work
    dave_home = open_home(bot, DAVE)
    assert any(f"Pending `{request_id}`" in t for t in texts(dave_home))
    assert (home.REQUEST_ROTATION_ACTION, home.Prefill().to_value()) in buttons(dave_home)
    assert (APPROVE_ACTION, request_id) not in buttons(dave_home)
    accepted = _submit(bot, DAVE, panel=PANEL, kind="rotate-key", reason="Dave's own request")
    assert (200, "") == (accepted.status, accepted.answer)
    wait_until(lambda: len(_submissions(bot)) == 2, what="Dave's card")


def test_the_request_form_rechecks_the_rule_when_it_is_submitted(make_bot: MakeBot) -> None:
    """Erin, in the channel, opens the form; she leaves the channel before she submits (past the
    membership cache's minute). The submission is refused in the modal, and nothing is filed."""
    bot = make_bot(**TEMPLATE_SCOPE, **NO_REPEAT)
    view = open_home(bot, ERIN)
    action, value = next(b for b in buttons(view) if b[0] == home.REQUEST_ROTATION_ACTION)
    assert bot.slack.click_in_home(action, value, ERIN).status == 200
    assert home.REQUEST_MODAL == _opened_view(bot.fake.wait_for("views.open")[-1])["callback_id"]

    bot.fake.members[CHANNEL].discard(ERIN)
    bot.rotator.deps.directory.ttl_s = 0  # type: ignore[attr-defined]  # a minute later
    refused = _submit(bot, ERIN, panel=PANEL, kind="rotate-key", reason="opened while a member")
    assert "errors" == refused.json().get("response_action")
    assert "Only members of <#C0ROTATE>" in refused.json()["errors"][home.PANEL_BLOCK]
    assert [] == _submissions(bot) and [] == bot.store.pending_of(ERIN)
    assert "plan" not in [r.op for r in bot.engine.requests]
    refreshed = _all_text(open_home(bot, ERIN))
    assert "Panel " not in refreshed and "you are not one" in refreshed


def test_an_outsider_over_socket_mode_gets_the_same_answers(
    make_bot: MakeBot, fake_slack: Any, secret_registry: SecretRegistry
) -> None:
    """The same rule over Socket Mode: Oscar's Home tab (an events_api envelope) shows no request,
    and his request form (an interactive envelope) is refused in the modal; Alice, in the
    channel, files one the same way."""
    app_token = f"xapp-1-A0ROTATOR-{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"
    secret_registry.register(app_token, "SLACK_APP_TOKEN")
    stand_in = FakeSocketMode(app_token).start().attach(fake_slack)
    bot = make_bot(**TEMPLATE_SCOPE, **NO_REPEAT)
    request_id, _ = bot.request_key(f"{PANEL} secret reason INC-78")
    handler = socket_mode.connect(bot.rotator.app, app_token, bot.rotator.gate.acknowledging)
    try:
        stand_in.app_home_opened(OSCAR)
        oscar_home = home_of(bot, OSCAR)
        assert request_id not in _all_text(oscar_home) and [] == buttons(oscar_home)

        refused = stand_in.deliver("interactive", _submission_payload(stand_in, OSCAR, "over the socket"))
        assert refused.payload is not None and "errors" == refused.payload.get("response_action")
        assert "Only members of <#C0ROTATE>" in refused.payload["errors"][home.PANEL_BLOCK]

        accepted = stand_in.deliver("interactive", _submission_payload(stand_in, ALICE, "over the socket"))
        assert not (accepted.payload or {}).get("errors")
        wait_until(lambda: len(_submissions(bot)) == 2, what="Alice's second card")
        assert [] == bot.store.pending_of(OSCAR)
    finally:
        handler.close()  # type: ignore[no-untyped-call]
        stand_in.stop()


def _submission_payload(stand_in: Any, user: str, reason: str) -> dict[str, Any]:
    """The request form's ``view_submission`` payload, as Slack puts it in an envelope."""

    class Capture(SlackSender):
        def post(self, body: str, **options: Any) -> Any:
            return body

    sender = Capture(**{f.name: getattr(stand_in.payloads, f.name) for f in dataclasses.fields(SlackSender)})
    select = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    body = sender.submit_view(
        home.REQUEST_MODAL,
        "",
        {
            home.PANEL_BLOCK: {home.PANEL_INPUT: select(PANEL)},
            home.KIND_BLOCK: {home.KIND_INPUT: select("rotate-key")},
            home.AGENTS_BLOCK: {home.AGENTS_INPUT: ""},
            home.REASON_BLOCK: {home.REASON_INPUT: reason},
        },
        user,
    )
    return dict(json.loads(parse_qs(str(body))["payload"][0]))


def test_approve_and_deny_on_the_home_tab_only_for_approvers_when_roles_differ(make_bot: MakeBot) -> None:
    """Requesters (@desk: Alice, Erin) and approvers (@oncall: Alice, Bob, Carol) differ. On
    Alice's pending request, Erin (may request, not approve) sees no Approve or Deny, and her
    forged Approve from the Home tab is refused; Bob (may approve, not request) sees both, and
    no request button."""
    bot = make_bot(**SPLIT_ROLES, **NO_REPEAT)
    request_id, _ = bot.request_key()

    erin = open_home(bot, ERIN)
    assert any(f"Pending `{request_id}`" in t for t in texts(erin))
    assert (APPROVE_ACTION, request_id) not in buttons(erin) and (DENY_ACTION, request_id) not in buttons(erin)
    assert home.REQUEST_ROTATION_ACTION in [action for action, _ in buttons(erin)]
    bob = open_home(bot, BOB)
    assert {(APPROVE_ACTION, request_id), (DENY_ACTION, request_id)} <= set(buttons(bob))
    assert home.REQUEST_ROTATION_ACTION not in [action for action, _ in buttons(bob)]

    assert bot.slack.click_in_home(APPROVE_ACTION, request_id, ERIN).status == 200
    refusal = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == ERIN)[0]
    assert "Only members of <!subteam^S0ONCALL> can approve rotations." == refusal.text
    assert bot.state(request_id) == "pending" and bot.store.get(request_id).approvals == ()
    assert bot.command("/rotate-key", f"{PANEL} Bob tries to ask", BOB).status == 200
    assert "Only members of <!subteam^S0DESK> can request rotations." == answers_to(bot.fake, BOB)[0].text
