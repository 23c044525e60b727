"""The two-person rule, decisions and expiry, clicked over real HTTP."""

from __future__ import annotations

import threading
import time

from bot.fakes.slack_api import has_buttons
from handlers.blocks import DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from tests.bot.conftest import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    PANEL,
    MakeBot,
    answers_to,
    wait_until,
)


def ephemeral_to(bot, user: str, count: int = 1) -> str:  # type: ignore[no-untyped-def]
    return answers_to(bot.fake, user, count)[count - 1].text


def test_the_requester_cannot_approve_their_own_request(make_bot: MakeBot) -> None:
    """Alice is in the approvers' group, but she asked: her click changes nothing."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    assert bot.approve(request_id, ts, ALICE).status == 200
    assert ephemeral_to(bot, ALICE) == (
        "You asked for this rotation, so someone else from <!subteam^S0ONCALL> must approve it."
    )
    assert (bot.state(request_id), bot.store.get(request_id).approvals) == ("pending", ())
    assert bot.engine.ops("rotate-key") == []


# Under Enterprise Grid a slash command carries the workspace's team id and a click the
# user's home team id: one person, two team ids. The commands below come from T0TEAM.
HOME_TEAM = "T0HOME"


def test_the_requester_clicking_from_their_home_team_is_still_the_requester(
    make_bot: MakeBot,
) -> None:
    """Alice asks in the workspace, then clicks Approve with her home team's id: refused."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    assert bot.approve(request_id, ts, ALICE, team_id=HOME_TEAM).status == 200
    assert ephemeral_to(bot, ALICE) == (
        "You asked for this rotation, so someone else from <!subteam^S0ONCALL> must approve it."
    )
    assert (bot.state(request_id), bot.store.get(request_id).approvals) == ("pending", ())
    assert bot.engine.ops("rotate-key") == []


def test_one_person_clicking_under_two_team_ids_approves_once(make_bot: MakeBot) -> None:
    """With two approvals required, Bob's clicks from two team ids are one approval."""
    bot = make_bot(approvals_required=2)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB, team_id="T0TEAM")
    ephemeral_to(bot, BOB)
    bot.approve(request_id, ts, BOB, team_id=HOME_TEAM)
    assert ephemeral_to(bot, BOB, count=2) == "You already approved this request."
    request = bot.store.get(request_id)
    assert (request.state.value, [a.person.user_id for a in request.approvals]) == (
        "pending",
        [BOB],
    )
    assert bot.engine.ops("rotate-key") == []


def test_an_approver_clicking_from_their_home_team_counts(make_bot: MakeBot) -> None:
    """Group members are user ids: Bob's click with his home team's id approves."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB, team_id=HOME_TEAM)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    assert bot.engine.ops("rotate-key")[0].approved_by == [BOB]


def test_the_requester_cannot_deny_their_own_request(make_bot: MakeBot) -> None:
    """Alice's own Deny (from either team id) opens no modal; a forged submission of the
    modal in her name changes nothing."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    for team in ("T0TEAM", HOME_TEAM):
        bot.click(DENY_ACTION, request_id, ts, ALICE, team_id=team)
    assert ephemeral_to(bot, ALICE, count=2) == (
        f"To withdraw your own request, use `/rotate-cancel {request_id}`."
    )
    assert bot.fake.calls_to("views.open") == []
    sent = bot.slack.submit_view(
        DENY_MODAL, request_id, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "changed my mind"}}, ALICE
    )
    assert sent.status == 200
    assert ephemeral_to(bot, ALICE, count=3) == (
        f"To withdraw your own request, use `/rotate-cancel {request_id}`."
    )
    assert bot.state(request_id) == "pending"


def test_a_requester_named_directly_as_approver_still_cannot_approve(make_bot: MakeBot) -> None:
    """Approvers named as people: the card lists those who may approve, without the requester."""
    bot = make_bot(approvers=("U0ALICE", "T0TEAM/U0BOB"))
    request_id, ts = bot.request_key()
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "Needs 1 approval from <@U0BOB> · expires " in card
    assert "U0ALICE> or" not in card and "(not <@U0ALICE>)" not in card
    bot.approve(request_id, ts, ALICE)
    assert ephemeral_to(bot, ALICE) == (
        "You asked for this rotation, so someone else from <@U0BOB> must approve it."
    )
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")


def test_someone_who_is_not_an_approver_is_told_who_can(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, DAVE)
    assert ephemeral_to(bot, DAVE) == "Only members of <!subteam^S0ONCALL> can approve rotations."
    assert bot.state(request_id) == "pending"


def test_an_approval_removes_the_buttons_and_starts_the_rotation(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    versions = bot.fake.card_versions(CHANNEL, ts)
    first_update = versions[1]
    assert ":white_check_mark: Approved by <@U0BOB> at " in first_update.all_text()  # no second factor claimed
    assert [has_buttons(v) for v in versions] == [True] + [False] * (len(versions) - 1)
    assert len(bot.engine.ops("rotate-key")) == 1


def test_a_double_click_counts_once(make_bot: MakeBot) -> None:
    """Bob clicks twice: one approval, one run, and the second click is told so."""
    bot = make_bot(approvals_required=2)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    first = ephemeral_to(bot, BOB)
    bot.approve(request_id, ts, BOB)
    second = ephemeral_to(bot, BOB, count=2)
    assert first == "Your approval is recorded. It still needs 1 approval from <!subteam^S0ONCALL>."
    assert second == "You already approved this request."
    request = bot.store.get(request_id)
    assert (request.state.value, [a.person.user_id for a in request.approvals]) == (
        "pending",
        [BOB],
    )
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "Approved by <@U0BOB> (1 of 2)" in card and "Needs 1 approval" in card


def test_a_double_click_after_the_approval_is_complete_starts_nothing_more(
    make_bot: MakeBot,
) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.approve(request_id, ts, BOB)
    assert ephemeral_to(bot, BOB) == "You already approved this request."
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    assert len(bot.engine.ops("rotate-key")) == 1


def test_concurrent_clicks_by_two_approvers_approve_and_run_once(make_bot: MakeBot) -> None:
    """Bob and Carol click at the same moment; exactly one approval wins, the rotation runs once,
    and the other is told who approved."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    barrier = threading.Barrier(2)

    def click(user: str) -> None:
        barrier.wait()
        bot.approve(request_id, ts, user)

    threads = [threading.Thread(target=click, args=(u,)) for u in (BOB, CAROL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loser_answer = bot.fake.wait_for(
        "chat.postEphemeral", lambda c: c.params.get("user") in (BOB, CAROL)
    )[0]
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    request = bot.store.get(request_id)
    (winner,) = [a.person.user_id for a in request.approvals]
    loser = CAROL if winner == BOB else BOB
    assert loser_answer.params["user"] == loser
    assert loser_answer.text.startswith(
        f"This request is no longer pending: it was approved by <@{winner}> at "
    )
    assert len(bot.engine.ops("rotate-key")) == 1
    approvals = [t for t in bot.store.history(request_id) if t.event == "approved"]
    assert len(approvals) == 1


def test_two_required_approvals_need_two_different_approvers(make_bot: MakeBot) -> None:
    bot = make_bot(approvals_required=2)
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    ephemeral_to(bot, BOB)
    bot.approve(request_id, ts, CAROL)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    request = bot.store.get(request_id)
    assert [a.person.user_id for a in request.approvals] == [BOB, CAROL]
    assert bot.engine.ops("rotate-key")[0].approved_by == [BOB, CAROL]


def test_deny_asks_why_and_the_card_shows_who_and_why(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    assert bot.click(DENY_ACTION, request_id, ts, BOB).status == 200
    modal = bot.fake.wait_for("views.open")[0]
    assert (modal.params["view"]["callback_id"], modal.params["view"]["private_metadata"]) == (
        DENY_MODAL,
        request_id,
    )

    sent = bot.slack.submit_view(
        DENY_MODAL,
        request_id,
        {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "wrong panel, use prod-us"}},
        BOB,
    )
    assert (sent.status, sent.answer) == (200, "")
    thread = bot.fake.wait_text("chat.postMessage", "Denied by <@U0BOB>")
    assert thread.params["thread_ts"] == ts and thread.text.startswith("<@U0ALICE> ")
    card = bot.fake.latest_card(CHANNEL, ts)
    assert card.text.startswith(":no_entry: Key rotation denied: panel prod-eu")
    assert ":no_entry: Denied by <@U0BOB> at " in card.all_text()
    assert "“wrong panel, use prod-us”" in card.all_text()
    assert not has_buttons(card)
    assert bot.state(request_id) == "denied"
    bot.approve(request_id, ts, CAROL)
    assert ephemeral_to(bot, CAROL).startswith(
        "This request is no longer pending: it was denied by <@U0BOB> at "
    )


def test_a_denial_without_a_reason_is_refused_in_the_modal(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, _ = bot.request_key()
    sent = bot.slack.submit_view(
        DENY_MODAL, request_id, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "  "}}, BOB
    )
    assert sent.json() == {
        "response_action": "errors",
        "errors": {DENY_REASON_BLOCK: "Say why, so that the requester can act on it."},
    }
    assert bot.state(request_id) == "pending"


def test_a_non_approver_cannot_open_the_deny_modal(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.click(DENY_ACTION, request_id, ts, DAVE)
    assert ephemeral_to(bot, DAVE) == "Only members of <!subteam^S0ONCALL> can deny rotations."
    assert bot.fake.calls_to("views.open") == []


def test_the_requester_can_cancel_a_pending_request(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.command("/rotate-cancel", request_id, user=ALICE)
    assert ephemeral_to(bot, ALICE) == f"Cancelled `{request_id}`."
    card = bot.fake.latest_card(CHANNEL, ts)
    assert card.text.startswith(":x: Key rotation cancelled: panel prod-eu")
    assert ":x: Cancelled by <@U0ALICE> at " in card.all_text() and not has_buttons(card)
    bot.approve(request_id, ts, BOB)
    assert ephemeral_to(bot, BOB).startswith(
        "This request is no longer pending: it was cancelled by <@U0ALICE> at "
    )


def test_only_the_requester_can_cancel(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, _ = bot.request_key()
    bot.command("/rotate-cancel", request_id, user=BOB)
    assert ephemeral_to(bot, BOB) == "Only the requester (<@U0ALICE>) can cancel this request."
    assert bot.state(request_id) == "pending"


def test_cancel_needs_an_id(make_bot: MakeBot) -> None:
    bot = make_bot()
    assert bot.command("/rotate-cancel", "").text.startswith("`/rotate-cancel` needs a request id")


def test_a_pending_request_expires_on_time(make_bot: MakeBot) -> None:
    """With a 1.2 s expiry the watcher expires the request by itself; the card loses its buttons."""
    bot = make_bot(expiry_minutes=0.02)
    request_id, ts = bot.request_key()
    bot.fake.wait_for(
        "chat.update", lambda c: ":hourglass: Expired at " in c.all_text(), timeout=10
    )
    card = bot.fake.latest_card(CHANNEL, ts)
    assert (bot.state(request_id), has_buttons(card)) == ("expired", False)
    assert card.text.startswith(":hourglass: Key rotation expired: panel prod-eu")
    assert "without approval" in card.all_text()
    bot.approve(request_id, ts, BOB)
    assert ephemeral_to(bot, BOB).startswith("This request is no longer pending: it expired at ")


def test_a_request_that_expired_while_the_bot_was_down_expires_at_start(make_bot: MakeBot) -> None:
    """The clock moves 31 minutes while no bot runs; the next bot expires the request at once."""
    now = [time.time()]
    first = make_bot(clock=lambda: now[0])
    request_id, ts = first.request_key()
    first.close()
    now[0] += 31 * 60
    second = make_bot(clock=lambda: now[0])
    second.fake.wait_for("chat.update", lambda c: ":hourglass: Expired at " in c.all_text())
    assert second.state(request_id) == "expired"
    assert not has_buttons(second.fake.latest_card(CHANNEL, ts))


def test_a_click_after_the_deadline_expires_the_request_instead_of_approving(
    make_bot: MakeBot,
) -> None:
    now = [time.time()]
    bot = make_bot(clock=lambda: now[0], expiry_max_wait_s=3600)
    request_id, ts = bot.request_key()
    now[0] += 31 * 60
    bot.approve(request_id, ts, BOB)
    assert ephemeral_to(bot, BOB).startswith("This request is no longer pending: it expired at ")
    assert bot.state(request_id) == "expired"
    assert bot.engine.ops("rotate-key") == []


def test_a_pending_request_can_still_be_approved_after_a_restart(make_bot: MakeBot) -> None:
    first = make_bot()
    request_id, ts = first.request_key()
    first.close()
    second = make_bot(engine=first.engine)
    second.approve(request_id, ts, BOB)
    second.fake.wait_text("chat.postMessage", ":white_check_mark: Done")
    assert second.state(request_id) == "done"
    assert len(first.engine.ops("rotate-key")) == 1


def test_a_plan_change_after_approval_voids_the_approvals(make_bot: MakeBot) -> None:
    """The engine was upgraded between the card and the run: nothing runs, the card says why."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.engine.plan_result = {**bot.engine.plan_result, "engine_version": "0.4.1"}
    bot.approve(request_id, ts, BOB)
    update = bot.fake.wait_for(
        "chat.update", lambda c: "Plan changed before running" in c.all_text()
    )[0]
    assert (
        ":warning: Plan changed before running (engine 0.4.0 -&gt; 0.4.1); approvals void, request again"
        in update.all_text()
    )
    reply = bot.fake.wait_text("chat.postMessage", "The plan changed between approval and run")
    assert reply.params["thread_ts"] == ts
    wait_until(lambda: bot.state(request_id) == "voided")
    assert bot.engine.ops("rotate-key") == []


def test_a_changed_host_key_voids_the_approvals(make_bot: MakeBot) -> None:
    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.engine.host_key = "SHA256:SomethingElse"
    bot.approve(request_id, ts, BOB)
    update = bot.fake.wait_for(
        "chat.update", lambda c: "Plan changed before running" in c.all_text()
    )[0]
    assert "host key SHA256:Yx0fakehostkeyQ -&gt; SHA256:SomethingElse" in update.all_text()
    assert bot.engine.ops("rotate-key") == []


def test_stale_group_members_are_trusted_only_up_to_their_maximum_age(make_bot: MakeBot) -> None:
    """While Slack cannot list user groups, the members seen last still count for
    ``group_cache_max_age_minutes``; after that an approval is refused with a clear message."""
    bot = make_bot(group_cache_max_age_minutes=15)
    now = [1000.0]
    bot.rotator.deps.directory.clock = lambda: now[0]  # type: ignore[attr-defined]
    first, first_ts = bot.request_key()
    second, second_ts = bot.request_key()
    bot.approve(first, first_ts, DAVE)  # the approvers' group is listed once, while Slack answers
    ephemeral_to(bot, DAVE)
    bot.fake.fail("usergroups.users.list", "service_unavailable", times=1000)

    now[0] += 2 * 60  # past the one-minute cache, within the fifteen-minute trust
    bot.approve(first, first_ts, BOB)
    wait_until(lambda: bot.state(first) == "done")

    now[0] += 20 * 60
    bot.approve(second, second_ts, CAROL)
    answer = ephemeral_to(bot, CAROL)
    assert answer.startswith(
        "Slack has not been able to list the members of <!subteam^S0ONCALL> for over 15 min, "
        "so no one can be confirmed as a member: nothing was changed."
    )
    assert (bot.state(second), bot.store.get(second).approvals) == ("pending", ())
    assert len(bot.engine.ops("rotate-key")) == 1


def hold_plans(bot) -> tuple[threading.Event, list[str]]:  # type: ignore[no-untyped-def]
    """Make every plan wait for the returned event; the list names the plans holding."""
    planner = bot.rotator.deps.planner
    clients = planner.engine_clients
    release, holding = threading.Event(), []

    class HeldClient:
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.inner = inner
            self.host_key_fingerprint = inner.host_key_fingerprint

        def run(self, request):  # type: ignore[no-untyped-def]
            if request.op == "plan":
                holding.append(request.id)
                assert release.wait(30)
            yield from self.inner.run(request)

    planner.engine_clients = lambda name: HeldClient(clients(name))
    return release, holding


def test_clicks_and_the_deny_modal_do_not_wait_behind_queued_plans(make_bot: MakeBot) -> None:
    """Twelve plans are stuck on a slow engine (four running, eight queued). Carol's
    approval is still recorded, and Bob's Deny opens its modal with a trigger id Slack
    still accepts (the fake API refuses one older than 3 s), then his denial lands."""
    bot = make_bot(approvals_required=2, max_pending_per_user=20)
    to_approve, approve_ts = bot.request_key()
    to_deny, deny_ts = bot.request_key()
    release, holding = hold_plans(bot)
    try:
        for n in range(12):
            bot.command("/rotate-key", f"{PANEL} queued plan {n}", user=(BOB, CAROL)[n % 2])
        wait_until(lambda: len(holding) >= 4, what="four plans holding the engine")

        bot.approve(to_approve, approve_ts, CAROL)
        assert ephemeral_to(bot, CAROL) == (
            "Your approval is recorded. It still needs 1 approval from <!subteam^S0ONCALL>."
        )
        bot.click(DENY_ACTION, to_deny, deny_ts, BOB)
        (modal,) = bot.fake.wait_for("views.open")
        assert modal.response["ok"] is True, modal.response
        bot.slack.submit_view(
            DENY_MODAL, to_deny, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "not now"}}, BOB
        )
        wait_until(lambda: bot.state(to_deny) == "denied")
        assert not release.is_set() and len(bot.cards()) == 2  # the plans were still stuck
    finally:
        release.set()
