"""Running an approved request (scripted engine): the thread, the card, the summary, restarts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from bot.errors import EngineCrashedError
from bot.fakes.slack_api import Call, has_buttons
from engine import protocol
from engine.protocol import KEY_STEPS, Request
from handlers.rotation_request import Decision, Person, State
from tests.bot.conftest import ALICE, BOB, CHANNEL, MakeBot, card_request_id, wait_until
from tests.support.fake_engine import NEW_FP, OLD_FP, FakeEngineHost, rolled_back_rotation


def test_a_rotation_reports_each_step_in_the_thread_and_the_summary_on_the_card(
    make_bot: MakeBot,
) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    thread = bot.fake.thread(CHANNEL, ts)
    step_lines = thread[:-1]
    assert [line.split(" · ")[0] for line in step_lines] == [
        "✔ preflight",
        "✔ new key staged",
        "✔ re-encrypted",
        "✔ database verified",
        "✔ config/.env updated",
        "✔ php-fpm restarted",
        "✔ sweep",
        "✔ verified from disk",
        "✔ backup updated",
    ]
    assert all(line.endswith(" · 0.1 s") for line in step_lines)
    assert thread[-1] == final.text
    summary = final.text  # the notification's text: the whole summary, headline first
    for fragment in (
        "requested by <@U0ALICE>",
        "approved by <@U0BOB>",
        "reason “suspected .env disclosure, INC-4412”",
        f"old key {OLD_FP[:8]}… → new key {NEW_FP[:8]}…",
        "re-encrypted 1,204 values: oscam_installs.webif_password 812 · "
        "saved_servers.ssh_credential_encrypted 377",
        "verification: 1,204/1,204 open with the new key · panel check 200 OK",
        f"6.2 s · rotation {request_id}",
    ):
        assert fragment in summary
    # in Slack: a headline, the facts as fields, the columns, the id with its audit anchor
    assert section_texts(final)[0] == ":white_check_mark: *Done.* Verified in 6.2 s."
    assert fields(final) == {
        "Key": f"old {OLD_FP[:8]}… → new {NEW_FP[:8]}…",
        "Re-encrypted": "1,204 values",
        "Verification": "1,204/1,204 open with the new key · panel check 200 OK",
        "Requested by": "<@U0ALICE>",
        "Approved by": "<@U0BOB>",
        "Reason": "“suspected .env disclosure, INC-4412”",
    }
    assert section_texts(final)[1].startswith(
        "*Columns:* oscam_installs.webif_password 812 · saved_servers.ssh_credential_encrypted 377"
    )
    assert re.fullmatch(
        rf"Rotation `{request_id}`, plan `[0-9a-f]{{12}}` · 6\.2 s · audit #\d+ [0-9a-f]{{16}}",
        context_texts(final)[0],
    )
    progress = [
        c.all_text() for c in bot.fake.card_versions(CHANNEL, ts) if "running: step" in c.text
    ]
    assert progress and all(re.search(r"running: step [1-9]/9, \w", p) for p in progress)
    card = bot.fake.latest_card(CHANNEL, ts)
    assert section_texts(card)[0] == "*:white_check_mark: Key rotation done: panel prod-eu*   `[done]`"
    assert card.text.startswith(":white_check_mark: Key rotation done: panel prod-eu")
    assert ":white_check_mark: Verified in 6.2 s" in card.all_text()
    assert fields(card) == {
        "Key": f"old {OLD_FP[:8]}… → new {NEW_FP[:8]}…",
        "Re-encrypted": "1,204 values",
        "Verification": "1,204/1,204 open with the new key · panel check 200 OK",
    }
    assert context_texts(card)[0] == context_texts(final)[0].split(" · ", 1)[1]
    assert not has_buttons(card)
    notice = bot.fake.wait_for("chat.postMessage", lambda c: c.params.get("channel") == ALICE)[0]
    assert (
        notice.text
        == f"Your rotation `{request_id}` on prod-eu ended: :white_check_mark: Verified in 6.2 s"
    )
    assert bot.state(request_id) == "done"


def section_texts(call: Call) -> list[str]:
    return [b["text"]["text"] for b in call.params["blocks"] if b["type"] == "section" and "text" in b]


def context_texts(call: Call) -> list[str]:
    return [e["text"] for b in call.params["blocks"] if b["type"] == "context" for e in b["elements"]]


def fields(call: Call) -> dict[str, str]:
    """A message's section fields as ``{label: value}`` (each field is ``*label*\\nvalue``)."""
    found = [f["text"] for b in call.params["blocks"] for f in b.get("fields", [])]
    return dict(text.removeprefix("*").split("*\n", 1) for text in found)


def test_the_engine_receives_who_asked_who_approved_and_why(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    (sent,) = bot.engine.ops("rotate-key")
    assert (sent.id, sent.requested_by, sent.approved_by, sent.reason, sent.dry_run) == (
        request_id,
        ALICE,
        [BOB],
        "suspected .env disclosure, INC-4412",
        False,
    )
    # one plan for the card; the run itself names it, and the engine re-plans in the same process
    assert len(bot.engine.ops("plan")) == 1
    approved = bot.store.get(request_id).plan
    assert (sent.plan_hash, sent.key_fingerprint, sent.agents) == (
        approved.engine_plan_hash,
        OLD_FP,
        None,
    )
    assert bot.engine.refusals == []


def test_a_failure_that_rolled_back_says_so_and_what_to_do_next(make_bot: MakeBot) -> None:
    engine = FakeEngineHost()
    engine.rotation_script = rolled_back_rotation
    bot = make_bot(engine=engine)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":rotating_light: Rolled back.")
    thread = bot.fake.thread(CHANNEL, ts)
    assert (
        "✖ verification failed: panel check failed after restart: GET /health returned 500 · 0.3 s"
        in thread
    )
    assert (
        "↩ rolled back · 1,204 values re-encrypted under the old key · .env restored · "
        "php8.3-fpm restarted · 0.9 s" in thread
    )
    assert final.text.startswith(
        ":rotating_light: Rolled back. The panel is as it was. "
        "Next: look at the panel's error log, then request again."
    )
    assert "what failed: panel check failed after restart: GET /health returned 500" in final.text
    assert section_texts(final)[0] == (
        ":rotating_light: *Rolled back. The panel is as it was.*\n"
        "*Next:* look at the panel's error log, then request again."
    )
    assert fields(final)["What failed"] == (
        "panel check failed after restart: GET /health returned 500"
    )
    latest = bot.fake.latest_card(CHANNEL, ts)
    assert latest.text.startswith(":rotating_light: Key rotation rolled back: panel prod-eu")
    assert "*Next:* look at the panel's error log, then request again." in section_texts(latest)
    card = latest.all_text()
    assert ":rotating_light: Failed, rolled back, old key verified" in card
    assert bot.state(request_id) == "failed"
    assert bot.store.get(request_id).outcome["rolled_back"] is True


def _undecryptable_at_preflight() -> list[dict[str, Any]]:
    """Two values stopped opening between the plan and the run: preflight refuses."""
    where = ["oscam_installs.webif_password id 7", "saved_servers.ssh_credential_encrypted id 9"]
    message = f"2 stored values do not decrypt with the current key: {', '.join(where)}"
    return [
        protocol.step_event("preflight", "started"),
        protocol.step_event("preflight", "failed", message, elapsed_ms=40),
        protocol.error_event("undecryptable", message, rolled_back=None, locations=where),
    ]


def test_undecryptable_values_are_named_in_the_next_step(make_bot: MakeBot) -> None:
    engine = FakeEngineHost()
    engine.rotation_script = _undecryptable_at_preflight
    bot = make_bot(engine=engine)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", "Failed before any change")
    assert section_texts(final)[0] == (
        ":no_entry_sign: *Failed before any change. Nothing was changed.*\n*Next:* "
        "oscam_installs.webif_password id 7, saved_servers.ssh_credential_encrypted id 9 do not "
        "open with the current key: restore them from a backup, or clear them in the panel so "
        "that their owners enter them again; then request again."
    )
    card = bot.fake.latest_card(CHANNEL, ts)
    assert card.text.startswith(":no_entry_sign: Key rotation failed, nothing changed: panel prod-eu")


def test_a_failure_before_any_step_does_not_point_at_a_step_above(make_bot: MakeBot) -> None:
    engine = FakeEngineHost()
    engine.rotation_script = lambda: [
        protocol.error_event("internal", "the engine failed unexpectedly (OSError); see its log")
    ]
    bot = make_bot(engine=engine)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", "Failed before any change")
    assert bot.fake.thread(CHANNEL, ts) == [final.text]  # the summary is the only reply
    assert "above" not in final.all_text()
    assert section_texts(final)[0].endswith(
        "*Next:* fix what the engine reports under what failed, then request again."
    )
    assert fields(final)["What failed"] == "the engine failed unexpectedly (OSError); see its log"


def test_restart_during_a_run_reattaches_and_reports_to_the_end(make_bot: MakeBot) -> None:
    """The bot stops while the engine re-encrypts; the engine carries on; the next bot re-attaches
    after the last event it saved, and every step appears in the thread exactly once."""
    engine = FakeEngineHost()
    gate = engine.pause_before("write_env")
    first = make_bot(engine=engine)
    request_id, ts = first.request_key()
    first.approve(request_id, ts, BOB)
    engine.wait_reached("write_env")
    first.fake.wait_text("chat.postMessage", "✔ database verified")
    wait_until(lambda: first.state(request_id, "last_seq") == 8)
    first.close()  # the bot goes away mid-run; the engine goes on

    second = make_bot(engine=engine)
    assert second.state(request_id) == "running"
    second.fake.wait_text(
        "chat.postMessage", "The bot restarted; it is following the engine again from event 8"
    )
    gate.set()
    second.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    steps = [
        line.split(" · ")[0] for line in second.fake.thread(CHANNEL, ts) if line.startswith("✔")
    ]
    assert steps == [
        "✔ preflight",
        "✔ new key staged",
        "✔ re-encrypted",
        "✔ database verified",
        "✔ config/.env updated",
        "✔ php-fpm restarted",
        "✔ sweep",
        "✔ verified from disk",
        "✔ backup updated",
    ]
    (attach,) = engine.ops("attach")
    assert (attach.rotation_id, attach.after_seq) == (request_id, 8)
    assert len(engine.ops("rotate-key")) == 1
    assert second.state(request_id) == "done"


def test_restart_after_approval_but_before_the_run_runs_it(make_bot: MakeBot) -> None:
    """A request left "approved" (the bot stopped between click and run) runs at the next start."""
    first = make_bot(start=False)
    request_id, _ = first.request_key()
    request = first.store.get(request_id)

    approved = request.evolve(
        state=State.APPROVED, approvals=(Decision(Person("T0TEAM", BOB), at=request.created_at),)
    )
    assert first.store.update(
        approved, expected_version=request.version, event="approved", actor="T0TEAM/U0BOB"
    )
    first.close()
    second = make_bot(engine=first.engine)
    second.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    assert len(first.engine.ops("rotate-key")) == 1


class _DroppingClient:
    """An engine client whose connection dies after the third step and never comes back."""

    def __init__(self, host: FakeEngineHost) -> None:
        self.inner = host.client()

    @property
    def host_key_fingerprint(self) -> str:
        return self.inner.host_key_fingerprint

    def run(self, request: Request) -> Iterator[dict[str, Any]]:
        for event in self.inner.run(request):
            yield event
            if (
                request.op == "rotate-key"
                and event.get("name") == KEY_STEPS[2]
                and event.get("state") == "ok"
            ):
                raise EngineCrashedError(
                    "panel prod-eu: connection lost after 5 reconnect attempts"
                )


def test_losing_the_engine_for_good_is_reported_as_unknown_with_the_next_step(
    make_bot: MakeBot,
) -> None:
    engine = FakeEngineHost()
    bot = make_bot(engine=engine, engine_clients={"prod-eu": _DroppingClient(engine)})
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":sos:")
    assert final.text.startswith(
        ":sos: Outcome unknown: the bot lost track of the engine. Next: run "
    )
    assert "recover` on prod-eu's host" in final.text
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert (
        ":sos: Outcome unknown: lost track of the engine. Check status on prod-eu (see thread)"
        in card
    )


def test_every_engine_event_is_in_the_audit_log(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    wait_until(lambda: bot.store.get(request_id).outcome.get("reported") is True)
    kinds = [e["kind"] for e in bot.store.audit_entries() if e["request_id"] == request_id]
    assert kinds[:3] == ["request.created", "request.card_posted", "request.approved"]
    assert kinds.count("engine.step") == 2 * len(KEY_STEPS)
    assert kinds[-2:] == ["engine.result", "request.finished"]
    assert bot.rotator.audit.verify().ok


def test_the_whole_flow_on_each_store(make_bot: MakeBot, any_store_url: str) -> None:
    """Request, approve, run and report with the store on SQLite and on MariaDB."""
    bot = make_bot(store_url=any_store_url)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    wait_until(lambda: bot.store.get(request_id).outcome.get("reported") is True)
    assert [t.event for t in bot.store.history(request_id)] == [
        "created",
        "card_posted",
        "approved",
        "started",
        "finished",
    ]
    assert bot.rotator.audit.verify().ok


def agent_rotation_with_one_failure() -> list[dict[str, Any]]:
    from engine import protocol

    events: list[dict[str, Any]] = []
    for name in ("preflight", "issue_token", "bootstrap", "reregistered", "old_revoked"):
        events.append(protocol.step_event(name, "ok", "", elapsed_ms=200, agent="agent-7", index=1))
    events.append(
        protocol.step_event(
            "bootstrap", "failed", "agent server did not answer over SSH", agent="agent-9", index=3
        )
    )
    events.append(
        protocol.result_event(
            "rotate-agent",
            ok=False,
            agents=[
                {"name": "agent-7", "ok": True, "outcome": "rotated", "old_token_valid": False},
                {
                    "name": "agent-9",
                    "ok": False,
                    "outcome": "failed",
                    "failed_step": "bootstrap",
                    "error": "agent server did not answer over SSH",
                    "old_token_valid": True,
                },
            ],
            total=2,
            rotated=1,
            failed=1,
            message="1 of 2 agents rotated; agent-9 failed at bootstrap: agent server did not answer",
            duration_ms=4100,
        )
    )
    return events


def test_an_agent_rotation_reports_each_agent_and_the_ones_that_failed(make_bot: MakeBot) -> None:
    """/rotate-agent: one agent rotates, one fails; the thread names both, the card says
    "finished with failures", and the next step is to request again for the failed one."""
    engine = FakeEngineHost()
    engine.plan_result = {
        **engine.plan_result,
        "agents": [
            {"name": "agent-7", "server": "oscam-7", "last_seen": "2026-11-26T03:10:00Z"},
            {"name": "agent-9", "server": "oscam-9", "last_seen": "2026-11-26T03:11:00Z"},
        ],
        "problems": [],
    }
    engine.rotation_script = agent_rotation_with_one_failure
    bot = make_bot(engine=engine)
    bot.command("/rotate-agent", "agent-7,agent-9 lost laptop")
    card = bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)[0]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", "Finished with failures")
    thread = bot.fake.thread(CHANNEL, ts)
    assert "✔ agent-7: bootstrap ran · 0.2 s" in thread
    assert "✖ agent-9: bootstrap failed: agent server did not answer over SSH" in thread
    assert "agent-7 rotated (old token refused)" in final.text
    assert (
        "agent-9 failed at bootstrap: agent server did not answer over SSH (old token still valid)"
        in final.text
    )
    assert "request again for the agents that failed" in final.text
    (sent,) = engine.ops("rotate-agent")
    assert (sent.agents, sent.all_agents) == (["agent-7", "agent-9"], False)
    assert bot.state(request_id) == "failed"


def test_a_slow_slack_never_holds_up_reading_the_engine(make_bot: MakeBot) -> None:
    """Each thread reply takes 0.2 s: the engine's events are all read (and audited) long before
    the replies are all posted, and the replies still arrive complete and in order."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.fake.delays["chat.postMessage"] = 0.2
    bot.approve(request_id, ts, BOB)
    wait_until(
        lambda: any(
            e["kind"] == "engine.result" and e["request_id"] == request_id
            for e in bot.store.audit_entries()
        )
    )
    assert len(bot.fake.thread(CHANNEL, ts)) < len(KEY_STEPS)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=30)
    steps = [line.split(" · ")[0] for line in bot.fake.thread(CHANNEL, ts)][:-1]
    assert (
        len(steps) == len(KEY_STEPS)
        and steps[0] == "✔ preflight"
        and steps[-1] == "✔ backup updated"
    )


# --- one session per run: the run names its plan, the engine refuses a changed one --------


def test_a_key_changed_after_approval_is_refused_by_the_engine_and_voids_the_approvals(
    make_bot: MakeBot,
) -> None:
    """Someone rotated the key by hand between card and click: the run request still names
    the approved key, the engine refuses it (key_mismatch) and nothing runs; the card says
    which key changed."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.engine.plan_result = {**bot.engine.plan_result, "key_fingerprint": NEW_FP}
    bot.approve(request_id, ts, BOB)
    update = bot.fake.wait_for(
        "chat.update", lambda c: "Plan changed before running" in c.all_text()
    )[0]
    assert "Plan changed before running (current key" in update.all_text()
    assert NEW_FP in update.all_text()
    wait_until(lambda: bot.state(request_id) == "voided")
    assert [(request_id, "key_mismatch")] == bot.engine.refusals
    assert [] == bot.engine.ops("rotate-key")
    assert 1 == len(bot.engine.ops("plan")), "the run re-planned in the engine, not in a 2nd session"


def test_an_agent_added_after_an_all_agents_approval_voids_it(make_bot: MakeBot) -> None:
    """/rotate-agent --all approved for two agents; a third registers before the run. The run
    sends the exact approved list, the engine's --all now means three: agents_mismatch."""
    engine = FakeEngineHost()
    rows = [{"name": "agent-7", "server": "oscam-7"}, {"name": "agent-9", "server": "oscam-9"}]
    engine.plan_result = {**engine.plan_result, "agents": rows, "problems": []}
    bot = make_bot(engine=engine)
    bot.command("/rotate-agent", "--all yearly rotation")
    card = bot.fake.wait_for("chat.postMessage", lambda c: "requested:" in c.text)[0]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    engine.plan_result = {**engine.plan_result, "agents": [*rows, {"name": "agent-11"}]}

    bot.approve(request_id, ts, BOB)

    update = bot.fake.wait_for(
        "chat.update", lambda c: "Plan changed before running" in c.all_text()
    )[0]
    assert "agent-11" in update.all_text()
    wait_until(lambda: bot.state(request_id) == "voided")
    assert [(request_id, "agents_mismatch")] == engine.refusals
    assert [] == engine.ops("rotate-agent")


def test_the_fake_engine_refuses_a_run_that_names_no_plan() -> None:
    """The fake checks requests as the engine does: a rotate-key without the approved plan's
    hash and key fingerprint is refused (plan_required), so a bot that forgets them fails."""
    host = FakeEngineHost()
    bare = Request(v=1, id="r-bare", op="rotate-key", requested_by=ALICE, approved_by=[BOB])

    events = list(host.client().run(bare))

    assert ["hello", "error"] == [e["type"] for e in events]
    assert ("plan_required", [("r-bare", "plan_required")]) == (events[-1]["code"], host.refusals)
    assert [] == host.requests
