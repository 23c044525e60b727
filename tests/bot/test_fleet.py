"""Fleets against the scripted engine: one approval rotates many panels, the run's Slack
messages stay within Slack's limits, and an offboarding revokes the person's approvals.

The bot is the real Bolt app over signed HTTP (tests/bot/conftest.py); each panel is its
own ``FakeEngineHost`` (the scripted engine, which checks requests as the engine does).
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import secrets
import time
from dataclasses import dataclass, replace

import pytest

from bot import socket_mode
from bot.errors import SettingsError
from bot.fakes.slack_api import Call, FakeSlack
from bot.fakes.slack_limits import SLACK_LIMITS
from bot.fakes.socket_mode import FakeSocketMode
from bot.store import open_store
from engine import protocol
from handlers import home
from handlers.blocks import APPROVE_ACTION, DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from handlers.rotation_request import RotationRequest
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CAROL,
    CHANNEL,
    OSCAR,
    BotUnderTest,
    MakeBot,
    answers_to,
    card_request_id,
    is_card,
    wait_until,
)
from tests.bot.test_home import ages, buttons, open_home, texts
from tests.bot.test_step_up import approve_with_code, enroll, step_up_bot
from tests.support.fake_engine import (
    NEW_FP,
    OLD_FP,
    FakeEngineHost,
    db_password_plan_result,
    db_password_rotation,
    incident_plan_result,
    incident_rotation,
    plan_result,
    rolled_back_rotation,
    successful_rotation,
)
from tests.support.procs import run_bot
from tests.support.secrets_scan import SecretRegistry

ERIN = "U0ERIN"


@dataclass
class Fleet:
    bot: BotUnderTest
    hosts: dict[str, FakeEngineHost]

    def request(self, command: str, text: str, user: str = ALICE) -> tuple[str, str]:
        before = len(self.bot.cards())
        sent = self.bot.command(command, text, user)
        assert sent.status == 200 and not sent.answer, sent.answer
        card = self.bot.fake.wait_for("chat.postMessage", is_card, count=before + 1, timeout=60)[-1]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        wait_until(lambda: self.bot.state(request_id, "message_ts") == ts)
        return request_id, ts

    def finished(self, request_id: str, timeout: float = 60) -> None:
        wait_until(lambda: self.bot.state(request_id) in ("done", "failed"), timeout=timeout, what="the fleet finished")
        wait_until(lambda: bool(self.uploads(request_id, "panels")), what="the table was uploaded")

    def uploads(self, request_id: str, kind: str) -> list[dict[str, object]]:
        return [u for u in self.bot.fake.uploads() if str(u.get("filename")) == f"{request_id}-{kind}.csv"]

    def table(self, request_id: str) -> list[dict[str, str]]:
        data = self.uploads(request_id, "panels")[-1]["data"]
        assert isinstance(data, bytes)
        return list(csv.DictReader(io.StringIO(data.decode())))


def make_fleet(make_bot: MakeBot, n: int, tags: dict[str, tuple[str, ...]] | None = None, **config: object) -> Fleet:
    names = tuple(f"panel-{i:03d}" for i in range(n))
    hosts = {}
    for name in names:
        host = FakeEngineHost()
        host.plan_result["panel"] = name
        hosts[name] = host
    bot = make_bot(
        panels=names,
        engine_clients={name: hosts[name].client() for name in names},
        tags=tags or {},
        **config,
    )
    return Fleet(bot, hosts)


def thread_calls(bot: BotUnderTest, ts: str) -> list[Call]:
    return [c for c in bot.fake.calls_to("chat.postMessage") if c.params.get("thread_ts") == ts]


def test_one_approval_rotates_every_tagged_panel_and_only_those(make_bot: MakeBot) -> None:
    """``/rotate-key --tag prod``: one card lists every prod panel's plan; Bob's one approval
    runs each panel's own engine run, bound to that panel's plan; the staging panel is untouched."""
    tags = {f"panel-{i:03d}": ("prod",) for i in range(5)} | {"panel-005": ("staging",)}
    fleet = make_fleet(make_bot, 6, tags)
    request_id, ts = fleet.request("/rotate-key", "--tag prod quarterly review")
    card = fleet.bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "Fleet key rotation requested: tag prod (5 panels)" in card
    assert "panel-000 1,204" in card and "panel-005" not in card
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert fleet.bot.state(request_id) == "done"
    for name, host in fleet.hosts.items():
        runs = host.ops("rotate-key")
        assert len(runs) == (1 if name != "panel-005" else 0), name
        assert host.refusals == []
    rows = fleet.table(request_id)
    assert [(r["panel"], r["outcome"]) for r in rows] == [(f"panel-{i:03d}", "verified") for i in range(5)]
    summary = [c.text for c in thread_calls(fleet.bot, ts) if "finished:" in c.text]
    assert summary and "5/5 panels verified" in summary[-1]
    status = fleet.bot.command("/rotate-status", request_id)
    history = fleet.bot.fake.wait_text("chat.postEphemeral", request_id).text
    assert status.status == 200 and history.startswith(
        "*:white_check_mark: Fleet key rotation done: tag prod (5 panels)*"
    )
    records = [e for e in fleet.bot.rotator.audit.store.audit_entries() if e["kind"] == "fleet.panel"]
    assert sorted(json.loads(e["data"])["panel"] for e in records if e["request_id"] == request_id) == sorted(
        f"panel-{i:03d}" for i in range(5)
    )


def test_a_failed_panel_rolls_back_and_the_others_finish(make_bot: MakeBot) -> None:
    """One panel's engine rolls back: it gets the run's only failure reply; the rest verify."""
    fleet = make_fleet(make_bot, 4)
    fleet.hosts["panel-002"].rotation_script = rolled_back_rotation
    request_id, ts = fleet.request("/rotate-key", "--all-panels quarterly review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert fleet.bot.state(request_id) == "failed"
    outcomes = {r["panel"]: r["outcome"] for r in fleet.table(request_id)}
    assert outcomes == {
        "panel-000": "verified",
        "panel-001": "verified",
        "panel-002": "rolled back",
        "panel-003": "verified",
    }
    replies = [c.text for c in thread_calls(fleet.bot, ts) if c.text.startswith(("✖", ":sos:", "⊘"))]
    assert len(replies) == 1 and replies[0].startswith("✖ panel-002: ") and "↩ Rolled back" in replies[0]
    checklist = [c for c in thread_calls(fleet.bot, ts) if c.text.startswith("Fleet run")]
    assert len(checklist) == 1  # one message, updated in place
    final = fleet.bot.fake.latest_card(CHANNEL, str(checklist[0].response["ts"])).all_text()
    assert f"Fleet run* `{request_id}` · ✔ 3 verified · ✖ 1 rolled back (panel-002)" in final
    assert "✖ panel-002 · rolled back · `3a9c41d2…`" in final


def test_audit_export_of_a_fleet_has_one_row_per_panel(make_bot: MakeBot) -> None:
    """``audit export --fleet ID --format markdown`` (the operator's CLI: the store and the
    audit key, no Slack) lists each panel's outcome from its audit record."""
    fleet = make_fleet(make_bot, 3)
    fleet.hosts["panel-001"].rotation_script = rolled_back_rotation
    request_id, ts = fleet.request("/rotate-key", "--panels panel-000,panel-001,panel-002 review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    env |= {"ROTATOR_STORE": fleet.bot.settings.store_url, "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex()}
    exported = run_bot(env, "audit", "export", "--fleet", request_id, "--format", "markdown")
    assert exported.returncode == 0, exported.stderr
    rows = [line.split(" | ")[:4] for line in exported.stdout.splitlines() if line.startswith("| panel-")]
    assert rows == [
        ["| panel-000", "verified", OLD_FP, NEW_FP],
        ["| panel-001", "rolled_back", OLD_FP, NEW_FP],
        ["| panel-002", "verified", OLD_FP, NEW_FP],
    ]
    assert exported.stdout.startswith(f"# Fleet {request_id}: key rotation of panels panel-000, panel-001, panel-002")
    assert "- audit anchor: `" in exported.stdout
    unknown = run_bot(env, "audit", "export", "--fleet", "r-nope", "--format", "markdown")
    assert (unknown.returncode, unknown.stderr.strip()) == (2, "error: --fleet: no fleet request 'r-nope' in the store")


def test_bad_input_gets_a_clear_answer(make_bot: MakeBot) -> None:
    fleet = make_fleet(make_bot, 3, {"panel-000": ("prod",)})
    answers = {
        "--panels panel-000,panel-09 why not": "Unknown panel `panel-09`",
        "--tag nope review": "Unknown tag `nope`. Known tags: `prod`",
        "--tag prod --all-panels review": "Choose panels one way",
        "--all-panels --with keys review": "`--with` takes `db-password`, `agents` or both",
        "--all-panels": "Say why",
        "--panels": "--panels needs a value",
    }
    for text, expected in answers.items():
        sent = fleet.bot.command("/rotate-key", text)
        assert expected in sent.answer, (text, sent.answer)
    assert "Name the person with an @-mention" in fleet.bot.command("/rotate-offboard", "@erin left").answer
    assert "cannot offboard yourself" in fleet.bot.command("/rotate-offboard", f"<@{ALICE}|alice> left").answer
    assert fleet.bot.cards() == []


def test_offboarding_voids_the_departing_persons_requests_and_approvals(make_bot: MakeBot) -> None:
    """Erin's pending request, and a request Erin approved (of two needed), are voided when
    her offboarding is filed; her later approval does not count; the card says what was done."""
    fleet = make_fleet(make_bot, 3, approvals_required=2, approvers=("S0ONCALL",))
    fleet.bot.fake.groups["S0ONCALL"] = [BOB, CAROL, ALICE, ERIN]
    fleet.bot.fake.groups["S0SECOPS"] = [ALICE, BOB, CAROL, ERIN]
    fleet.bot.fake.users = (fleet.bot.fake.users or set()) | {ERIN}
    assert fleet.bot.store.enroll(ERIN, "sealed-totp-secret", actor="T0TEAM/U0ERIN")
    hers, _ = fleet.bot.request_key("panel-000 routine", user=ERIN)
    approved, approved_ts = fleet.bot.request_key("panel-001 routine", user=ALICE)
    fleet.bot.approve(approved, approved_ts, ERIN)
    wait_until(lambda: len(fleet.bot.store.get(approved).approvals) == 1)  # type: ignore[union-attr]
    request_id, ts = fleet.request("/rotate-offboard", f"<@{ERIN}|erin> left the ops team, HR-2211")
    assert fleet.bot.state(hers) == "voided" and fleet.bot.state(approved) == "voided"
    voided_card = fleet.bot.fake.latest_card(CHANNEL, approved_ts).all_text()
    assert (
        f":warning: Voided: <@{ERIN}> was offboarded by request `{request_id}`: their approval no longer counts"
        in voided_card
    )
    card = fleet.bot.fake.latest_card(CHANNEL, ts).all_text()
    assert f"Offboarding <@{ERIN}> requested: rotate every panel they could reach (3 panels)" in card
    assert "Reach: every panel" in card
    assert f"Done at request time: <@{ERIN}>'s approvals and TOTP enrollment revoked; 2 pending requests voided" in card
    assert fleet.bot.store.enrollment(ERIN) is None
    kinds = [(e["kind"], e["request_id"]) for e in fleet.bot.store.audit_entries()]
    assert ("person.offboarded", request_id) in kinds and ("step_up.reset", "") in kinds
    assert "A person must still: remove" in card
    fleet.bot.approve(request_id, ts, ERIN)
    answer = answers_to(fleet.bot.fake, ERIN, count=2)[-1].text
    assert "You were offboarded" in answer
    assert fleet.bot.state(request_id) == "pending"


def test_an_offboarded_person_is_refused_on_every_surface_even_after_a_denial(make_bot: MakeBot) -> None:
    """From the moment Erin's offboarding is filed she can neither file nor decide: every slash
    command (one panel, ``--panels``, ``--all-panels``, ``/rotate-offboard``), the Home tab's
    request button and a signed submission of its form, Approve and Deny (click and form) are
    refused with a clear answer, each refusal audited, nothing filed or counted. Denying the
    offboarding request does not restore her (docs/operations.md)."""
    fleet = make_fleet(make_bot, 2, approvals_required=1, approvers=("S0ONCALL",))
    fleet.bot.fake.groups["S0ONCALL"] = [BOB, CAROL, ALICE, ERIN]
    fleet.bot.fake.groups["S0SECOPS"] = [ALICE, BOB, CAROL, ERIN]
    fleet.bot.fake.users = (fleet.bot.fake.users or set()) | {ERIN}
    other, other_ts = fleet.bot.request_key("panel-000 routine", user=ALICE)
    offboard_id, offboard_ts = fleet.request("/rotate-offboard", f"<@{ERIN}|erin> left the ops team, HR-2211")
    assert fleet.bot.state(other) == "pending"  # neither hers nor approved by her

    def refused_to_erin(before: int) -> str:
        answers = answers_to(fleet.bot.fake, ERIN, count=before + 1)
        return answers[-1].text

    told = 0
    for command, text in [
        ("/rotate-key", "panel-001 I still have access"),
        ("/rotate-key", "--panels panel-000,panel-001 tidy up"),
        ("/rotate-key", "--all-panels tidy up"),
        ("/rotate-offboard", f"<@{BOB}|bob> revenge"),
        ("/rotate-db-password", "panel-001 tidy up"),
    ]:
        sent = fleet.bot.command(command, text, ERIN)
        assert sent.status == 200 and not sent.answer, (command, sent.answer)
        answer = refused_to_erin(told)
        told += 1
        assert "You were offboarded: you can no longer request rotations" in answer, (command, answer)
    assert fleet.bot.store.pending_of(ERIN, limit=5) == []

    assert fleet.bot.slack.click_in_home(home.REQUEST_ROTATION_ACTION, "", ERIN).status == 200
    opened = fleet.bot.fake.wait_for("views.open")[-1].params["view"]
    opened = json.loads(opened) if isinstance(opened, str) else opened
    assert opened["callback_id"] == home.REQUEST_REFUSED_MODAL and "submit" not in opened
    assert "You were offboarded" in json.dumps(opened)
    select = lambda v: {"type": "static_select", "selected_option": {"value": v}}  # noqa: E731
    submitted = fleet.bot.slack.submit_view(
        home.REQUEST_MODAL, "",
        {home.PANEL_BLOCK: {home.PANEL_INPUT: select("panel-001")},
         home.KIND_BLOCK: {home.KIND_INPUT: select("rotate-key")}, home.AGENTS_BLOCK: {home.AGENTS_INPUT: ""},
         home.REASON_BLOCK: {home.REASON_INPUT: "forged form"}},
        ERIN,
    )  # fmt: skip
    assert submitted.json().get("response_action") == "errors"
    assert "You were offboarded" in submitted.json()["errors"][home.PANEL_BLOCK]

    fleet.bot.approve(other, other_ts, ERIN)
    assert "You were offboarded: your approvals no longer count" in refused_to_erin(told)
    told += 1
    fleet.bot.click(DENY_ACTION, offboard_id, offboard_ts, ERIN)
    assert "You were offboarded: you can no longer deny requests" in refused_to_erin(told)
    told += 1
    fleet.bot.slack.submit_view(DENY_MODAL, offboard_id, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "I stay"}}, ERIN)
    assert "You were offboarded: you can no longer deny requests" in refused_to_erin(told)
    told += 1
    assert fleet.bot.state(offboard_id) == "pending" and fleet.bot.store.get(other).approvals == ()  # type: ignore[union-attr]
    assert [c for c in fleet.bot.cards() if c.params.get("user") == ERIN] == []
    refusals = [json.loads(e["data"])["act"] for e in fleet.bot.store.audit_entries() if e["kind"] == "person.refused"]
    assert refusals.count("request") >= 7 and refusals.count("approve") == 1 and refusals.count("deny") >= 2

    # the team chooses not to rotate: Erin still left, and stays refused
    fleet.bot.click(DENY_ACTION, offboard_id, offboard_ts, BOB)
    denial = {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "rotated by hand"}}
    fleet.bot.slack.submit_view(DENY_MODAL, offboard_id, denial, BOB)
    wait_until(lambda: fleet.bot.state(offboard_id) == "denied", what="the offboarding denied")
    assert fleet.bot.store.is_offboarded(ERIN)
    fleet.bot.command("/rotate-key", "panel-001 now that it was denied", ERIN)
    assert "You were offboarded: you can no longer request rotations" in refused_to_erin(told)
    assert fleet.bot.store.pending_of(ERIN, limit=5) == []


def test_a_restart_mid_run_resumes_queued_and_reattaches_running_panels(make_bot: MakeBot) -> None:
    """The bot stops while two panels run and two wait; the next bot re-attaches the running
    ones, starts the queued ones, and each panel ran exactly once."""
    fleet = make_fleet(make_bot, 4, fleet_concurrency=2)
    gates = [host.pause_before("restart") for host in fleet.hosts.values()]
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.hosts["panel-000"].wait_reached("restart")
    fleet.hosts["panel-001"].wait_reached("restart")
    states = {r.panel: r.state for r in fleet.bot.store.fleet_panels(request_id)}
    assert states == {"panel-000": "running", "panel-001": "running", "panel-002": "queued", "panel-003": "queued"}
    fleet.bot.close()  # the bot goes away mid-run; the engines go on
    for gate in gates:
        gate.set()
    second = make_bot(
        panels=tuple(fleet.hosts),
        engine_clients={name: host.client() for name, host in fleet.hosts.items()},
        fleet_concurrency=2,
    )
    fleet.bot = second
    fleet.finished(request_id)
    assert second.state(request_id) == "done"
    for name, host in fleet.hosts.items():
        assert len(host.ops("rotate-key")) == 1, name
        assert [r.rotation_id for r in host.ops("attach")] == (
            [r.id for r in host.ops("rotate-key")] if name in ("panel-000", "panel-001") else []
        )


@pytest.mark.slow
def test_a_running_fleet_keeps_each_panels_plan_in_the_store_not_in_memory(make_bot: MakeBot) -> None:
    """While a fleet runs, no copy of the request in the bot's memory holds every panel's
    plan (that was ~4 KB per panel, bench/fleet.py): each panel's bound plan is in its
    ``fleet_panels`` row, read when a worker takes the panel; the card keeps its plan hash."""
    fleet = make_fleet(make_bot, 6, fleet_concurrency=2)
    gates = [fleet.hosts[name].pause_before("restart") for name in ("panel-000", "panel-001")]
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    approved = fleet.bot.store.get(request_id)
    assert approved is not None
    planned = {mem["panel"]: mem["legs"] for mem in approved.plan.fleet["members"]}
    plan_hash = approved.plan_hash
    del approved
    fleet.bot.approve(request_id, ts, BOB)
    fleet.hosts["panel-000"].wait_reached("restart")
    fleet.hosts["panel-001"].wait_reached("restart")

    def held() -> list[RotationRequest]:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, RotationRequest) and o.id == request_id]

    # the click's own listener threads may still hold the request they loaded for a moment;
    # once they are done, only the runner's copy stays, without the panels' plans
    wait_until(lambda: held() and not [o for o in held() if "members" in o.plan.fleet],
               what="no copy of the request holding every panel's plan")
    assert {o.plan_hash for o in held()} == {plan_hash}
    assert {name: fleet.bot.store.panel_plan(request_id, name) for name in planned} == planned
    for gate in gates:
        gate.set()
    fleet.finished(request_id)
    assert fleet.bot.state(request_id) == "done"
    assert fleet.bot.fake.latest_card(CHANNEL, ts).all_text().count(plan_hash[:12]) >= 1


def test_rows_from_before_plans_were_kept_in_them_run_from_the_requests_plan(make_bot: MakeBot) -> None:
    """A fleet resumed from rows an older bot wrote (no plan in them) runs each panel from the
    approved request's plan; a panel whose plan is found nowhere is refused, nothing changed."""
    fleet = make_fleet(make_bot, 4, fleet_concurrency=1)
    gate = fleet.hosts["panel-000"].pause_before("restart")
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.hosts["panel-000"].wait_reached("restart")
    with fleet.bot.store.transaction() as tx:  # as an older bot left them
        tx.execute("UPDATE fleet_panels SET plan = NULL WHERE fleet_id = ? AND panel <> 'panel-003'", (request_id,))
        tx.execute("UPDATE fleet_panels SET plan = '[]' WHERE fleet_id = ? AND panel = 'panel-003'", (request_id,))
    gate.set()
    fleet.finished(request_id)
    outcome = {r.panel: (r.state, r.code) for r in fleet.bot.store.fleet_panels(request_id)}
    assert outcome == {"panel-000": ("verified", ""), "panel-001": ("verified", ""), "panel-002": ("verified", ""),
                       "panel-003": ("refused", "plan_missing")}  # fmt: skip
    assert [r.op for r in fleet.hosts["panel-003"].requests if r.op != "plan"] == []


def test_500_panels_stay_within_slacks_limits_and_429s_are_retried(make_bot: MakeBot) -> None:
    """500 panels under Slack's own rate limits: every message is one Slack accepts (the fake
    checks the block limits), the checklist is one message updated in place, coalesced, and
    the calls Slack refused with 429 went through after their ``Retry-After``."""
    fleet = make_fleet(make_bot, 500, fleet_concurrency=16)
    fleet.bot.fake.enforce_limits(SLACK_LIMITS)
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id, timeout=120)
    assert fleet.bot.state(request_id) == "done"
    calls = fleet.bot.fake.calls
    assert [c.response for c in calls if c.status == 200 and not c.ok] == []
    limited = [c for c in calls if c.status == 429]
    assert limited, "the run never met Slack's rate limits: the test proves nothing"
    checklists = [c for c in thread_calls(fleet.bot, ts) if c.text.startswith("Fleet run")]
    assert len(checklists) == 1
    checklist_ts = checklists[0].response["ts"]
    updates = [c for c in fleet.bot.fake.calls_to("chat.update") if c.params.get("ts") == checklist_ts]
    assert updates[-1].ok and "✔ 500 verified" in updates[-1].text
    assert len(updates) < 100  # coalesced: far fewer updates than panel events
    card = fleet.bot.fake.latest_card(CHANNEL, ts)
    assert card.ok and "500/500" not in card.text and "✔ 500 verified" in card.all_text()
    assert len(fleet.table(request_id)) == 500


def test_fleet_rows_and_offboarded_people_on_both_backends(any_store_url: str) -> None:
    """The fleet's per-panel rows survive a reopen (a restart) on SQLite and MariaDB; a
    panel's end is written with its audit record; an offboarded person is remembered."""
    store = open_store(any_store_url, audit_key=AUDIT_KEY)
    store.add_fleet_panels("r-1", [("b", 1, 10, [{"op": "rotate-key"}]), ("a", 0, 20, [])])
    store.add_fleet_panels("r-1", [("a", 0, 20, [{"op": "x"}])])  # again after a restart: kept as it is
    first = store.fleet_panels("r-1")[0]
    assert store.claim_panel_run("r-1", "a") and not store.claim_panel_run("r-1", "a")  # one runner wins
    store.save_panel_run(replace(first, state="running", run_id="r-1.p0000.0", last_seq=7, started_at=1.5))
    assert store.mark_offboarded(ERIN, request_id="r-1", actor="T0TEAM/U0ALICE")
    assert not store.mark_offboarded(ERIN, request_id="r-1", actor="T0TEAM/U0ALICE")
    store.close()
    again = open_store(any_store_url, audit_key=AUDIT_KEY)
    try:
        runs = again.fleet_panels("r-1")
        assert [(r.panel, r.position, r.state, r.run_id, r.last_seq, r.values) for r in runs] == [
            ("a", 0, "running", "r-1.p0000.0", 7, 20),
            ("b", 1, "queued", "", 0, 10),
        ]
        again.save_panel_run(
            replace(runs[0], state="verified", finished_at=3.0), audit={"panel": "a", "outcome": "verified"}
        )
        assert again.fleet_panels("r-1")[0].state == "verified"
        records = [json.loads(e["data"]) for e in again.audit_entries() if e["kind"] == "fleet.panel"]
        assert records == [{"panel": "a", "outcome": "verified"}]
        assert again.is_offboarded(ERIN) and not again.is_offboarded(BOB)
    finally:
        again.close()


def test_the_home_tab_lists_panels_by_key_age_oldest_first(make_bot: MakeBot) -> None:
    """Before an offboarding, the team looks for the oldest keys: a key of unknown age (never
    rotated here) comes first, then the oldest known, whatever the names."""
    now = time.time()
    hosts = {name: FakeEngineHost() for name in ("alpha", "beta", "gamma", "delta")}
    for name, days in {"alpha": 10, "beta": None, "gamma": 300, "delta": 40}.items():
        hosts[name].status_result["secret_ages"] = ages(days, now)
    bot = make_bot(panels=tuple(hosts), engine_clients={n: h.client() for n, h in hosts.items()})
    shown = texts(open_home(bot, ALICE))
    assert [t for t in shown if t.startswith("Panel ")] == ["Panel beta", "Panel gamma", "Panel delta", "Panel alpha"]


def test_a_pending_fleet_request_shows_on_the_home_tab_under_each_of_its_panels(make_bot: MakeBot) -> None:
    """A pending ``--tag prod`` fleet is on the Home tab under each panel it touches (with its
    panel count and, for an approver, Approve/Deny), not under the panel it leaves out, and
    not at all for someone the access rule does not let see pending requests."""
    fleet = make_fleet(make_bot, 3, tags={"panel-000": ("prod",), "panel-002": ("prod",)})
    request_id, _ = fleet.request("/rotate-key", "--tag prod quarterly review")
    bob = open_home(fleet.bot, BOB)
    shown = texts(bob)
    panels = [t for t in shown if t.startswith("Panel ") or f"Pending `{request_id}`" in t]
    line = f"Pending `{request_id}` rotate-fleet · 2 panels by <@{ALICE}>"
    assert [p if p.startswith("Panel ") else "pending" for p in panels] == [
        "Panel panel-000", "pending", "Panel panel-001", "Panel panel-002", "pending"]  # fmt: skip
    assert all(line in p for p in panels if not p.startswith("Panel "))
    assert [b for b in buttons(bob) if b == (APPROVE_ACTION, request_id)] == [(APPROVE_ACTION, request_id)] * 2
    oscar = _all(open_home(fleet.bot, OSCAR))
    assert request_id not in oscar and "quarterly review" not in oscar


def _all(view: dict[str, object]) -> str:
    return "\n".join(texts(view))


def test_with_db_password_and_agents_runs_each_panels_incident_rotation(make_bot: MakeBot) -> None:
    """``--with db-password,agents``: each panel is one engine ``rotate-incident`` (database
    password, key, agents, in that order), bound to that panel's incident plan."""
    fleet = make_fleet(make_bot, 2)
    for name, host in fleet.hosts.items():
        host.plan_result = {**incident_plan_result(), "panel": name}
        host.rotation_script = incident_rotation
    request_id, ts = fleet.request("/rotate-key", "--all-panels --with db-password,agents leaked .env, INC-9")
    card = fleet.bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "key on all; DB password on 2; agents: 4 agents" in card
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert fleet.bot.state(request_id) == "done"
    for host in fleet.hosts.values():
        assert [r.op for r in host.requests if r.op != "plan"] == ["rotate-incident"]
        assert host.refusals == []
    assert {(r["panel"], r["outcome"], r["new_key"]) for r in fleet.table(request_id)} == {
        ("panel-000", "verified", NEW_FP),
        ("panel-001", "verified", NEW_FP),
    }


def test_with_db_password_alone_runs_the_password_then_the_key(make_bot: MakeBot) -> None:
    fleet = make_fleet(make_bot, 1)
    host = fleet.hosts["panel-000"]
    host.plan_result = {**plan_result(), **db_password_plan_result(), "panel": "panel-000"}
    scripts = iter([db_password_rotation, successful_rotation])
    host.rotation_script = lambda: next(scripts)()
    request_id, ts = fleet.request("/rotate-key", "--panels panel-000 --with db-password yearly review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert [r.op for r in host.requests if r.op != "plan"] == ["rotate-db-password", "rotate-key"]
    assert host.refusals == []
    assert [(r["outcome"], r["old_key"], r["new_key"]) for r in fleet.table(request_id)] == [
        ("verified", OLD_FP, NEW_FP)
    ]


def test_stop_on_failure_leaves_the_panels_not_yet_started(make_bot: MakeBot) -> None:
    fleet = make_fleet(make_bot, 3, fleet_concurrency=1, stop_on_failure=True)
    fleet.hosts["panel-000"].rotation_script = rolled_back_rotation
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert [(r["panel"], r["outcome"]) for r in fleet.table(request_id)] == [
        ("panel-000", "rolled back"),
        ("panel-001", "not started"),
        ("panel-002", "not started"),
    ]
    assert fleet.hosts["panel-001"].ops("rotate-key") == [] and fleet.hosts["panel-002"].ops("rotate-key") == []


def test_help_names_the_fleet_commands(make_bot: MakeBot) -> None:
    fleet = make_fleet(make_bot, 2)
    answer = fleet.bot.command("/rotate-help", "").answer
    assert "/rotate-offboard @person [--with db-password,agents] &lt;reason&gt;" in answer
    assert "/rotate-key --panels a,b | --tag prod | --all-panels" in answer


def test_a_fleet_with_one_step_up_panel_asks_the_approver_for_a_code(
    step_up_bot: MakeBot, secret_registry: SecretRegistry
) -> None:
    """Step-up is on for one panel only: approving a fleet that holds it needs a TOTP code,
    and the fleet runs once the code is right."""
    names = ("panel-000", "panel-001")
    hosts = {name: FakeEngineHost() for name in names}
    bot = step_up_bot(
        step_up="none",
        panels=names,
        engine_clients={n: h.client() for n, h in hosts.items()},
        panel_step_up={"panel-001": "totp"},
    )
    fleet = Fleet(bot, hosts)
    totp = enroll(bot, BOB, secret_registry)
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    assert approve_with_code(bot, request_id, ts, BOB, totp.now()) is None  # the modal closed: accepted
    fleet.finished(request_id)
    assert bot.state(request_id) == "done"
    assert bot.store.get(request_id).approvals[0].factor == "TOTP"  # type: ignore[union-attr]


def test_a_panel_that_cannot_be_planned_is_named_and_left_out(make_bot: MakeBot) -> None:
    fleet = make_fleet(make_bot, 3)
    fleet.hosts["panel-001"].plan_error = protocol.error_event(
        "host_unreachable", "the panel host did not answer over SSH (timeout after 10 s)"
    )
    request_id, ts = fleet.request("/rotate-key", "--all-panels review")
    card = fleet.bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "Fleet key rotation requested: all panels (2 panels)" in card
    assert (
        "cannot plan: panel-001 (the panel host did not answer over SSH (timeout after 10 s)): "
        "it is left out of this request" in card
    )
    fleet.bot.approve(request_id, ts, BOB)
    fleet.finished(request_id)
    assert fleet.bot.state(request_id) == "done"
    assert fleet.hosts["panel-001"].ops("rotate-key") == []
    assert [r["panel"] for r in fleet.table(request_id) if r["outcome"] == "verified"] == ["panel-000", "panel-002"]


__all__ = ["step_up_bot"]  # the fixture, used above


def test_offboarding_over_socket_mode(
    make_bot: MakeBot, fake_slack: FakeSlack, secret_registry: SecretRegistry
) -> None:
    """The same commands over Socket Mode: a bad mention is answered in the acknowledgement;
    ``/rotate-offboard`` with an escaped mention files the fleet; a click approves and runs it."""
    app_token = f"xapp-1-A0ROTATOR-{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"
    secret_registry.register(app_token, "SLACK_APP_TOKEN")
    stand_in = FakeSocketMode(app_token).start().attach(fake_slack)
    fleet = make_fleet(make_bot, 2, offboard_reach={ERIN: ["panel-001"]})
    handler = socket_mode.connect(fleet.bot.rotator.app, app_token, fleet.bot.rotator.gate.acknowledging)
    try:
        refused = stand_in.command("/rotate-offboard", "erin left", ALICE)
        assert "Name the person with an @-mention" in str((refused.payload or {}).get("text"))
        stand_in.command("/rotate-offboard", f"<@{ERIN}|erin> left the ops team, HR-2211", ALICE)
        card = fake_slack.wait_for("chat.postMessage", is_card, timeout=30)[-1]
        request_id, ts = card_request_id(card), str(card.response["ts"])
        assert "Reach: the panels the settings list for this person" in card.all_text()
        wait_until(lambda: fleet.bot.state(request_id, "message_ts") == ts)
        stand_in.click(APPROVE_ACTION, request_id, BOB, ts)
        fleet.finished(request_id)
        assert fleet.bot.state(request_id) == "done"
        assert [len(h.ops("rotate-key")) for h in fleet.hosts.values()] == [0, 1]
    finally:
        handler.close()  # type: ignore[no-untyped-call]
        stand_in.stop()


def test_fleet_settings_are_checked_with_a_clear_error(make_bot: MakeBot) -> None:
    with pytest.raises(
        SettingsError, match=r"offboard_reach.U0ERIN names 'tag:nope', which is not a configured panel or tag:NAME"
    ):
        make_bot(panels=("prod-eu",), offboard_reach={ERIN: ["tag:nope"]})
    with pytest.raises(SettingsError, match=r"tags are lower-case letters"):
        make_bot(panels=("prod-eu",), tags={"prod-eu": ("Prod EU",)})
    with pytest.raises(SettingsError, match=r"fleet_concurrency: Input should be greater than or equal to 1"):
        make_bot(panels=("prod-eu",), fleet_concurrency=0)
