"""The HTTP edge: Slack's signature, its clock, replays, retries, and the health check."""

from __future__ import annotations

import time
import urllib.request

from tests.bot.conftest import ALICE, BOB, PANEL, MakeBot


def test_a_bad_signature_is_refused_and_does_nothing(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-key", f"{PANEL} disclosure", secret="not-the-signing-secret")
    assert sent.status == 401
    assert bot.engine.ops("plan") == [] and bot.fake.calls_to("chat.postMessage") == []


def test_a_tampered_body_is_refused(make_bot: MakeBot) -> None:
    bot = make_bot()
    body = bot.slack.command_body("/rotate-key", f"{PANEL} disclosure", ALICE)
    from bot.fakes.slack_signing import signed_headers

    headers = signed_headers(bot.slack.signing_secret, body)
    sent = bot.slack.post(body.replace("U0ALICE", "U0BOB"), headers=headers)
    assert sent.status == 401


def test_a_stale_timestamp_is_refused(make_bot: MakeBot) -> None:
    """Signed correctly, but six minutes old: Slack's replay window is five."""
    bot = make_bot()
    sent = bot.command("/rotate-key", f"{PANEL} disclosure", timestamp=int(time.time()) - 6 * 60)
    assert sent.status == 401
    assert bot.engine.ops("plan") == []


def test_a_replayed_request_is_refused_even_within_five_minutes(make_bot: MakeBot) -> None:
    """The very same signed bytes sent again (an eavesdropper's replay) do not approve twice."""
    bot = make_bot(approvals_required=2)
    request_id, ts = bot.request_key()
    first = bot.approve(request_id, ts, BOB)
    replayed = bot.slack.replay(first)
    assert (first.status, replayed.status) == (200, 401)
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == BOB)
    assert len(bot.store.get(request_id).approvals) == 1


def test_a_slack_retry_is_acknowledged_but_not_run_again(make_bot: MakeBot) -> None:
    """Slack re-sends the same command (same trigger id, new signature, X-Slack-Retry-Num):
    one plan, one card."""
    bot = make_bot()
    body = bot.slack.command_body("/rotate-key", f"{PANEL} disclosure", ALICE, trigger_id="123.abc")
    first = bot.slack.post(body)
    retry = bot.slack.post(body, retry_num=1, timestamp=int(time.time()) + 1)
    assert (first.status, retry.status, retry.answer) == (200, 200, "")
    bot.fake.wait_for("chat.postMessage")
    assert len(bot.cards()) == 1
    assert len(bot.engine.ops("plan")) == 1


def test_a_retried_click_approves_once(make_bot: MakeBot) -> None:
    bot = make_bot(approvals_required=2)
    request_id, ts = bot.request_key()
    body = bot.slack.click_body("approve_rotation", request_id, BOB, ts)
    bot.slack.post(body)
    again = bot.slack.post(body, retry_num=1, timestamp=int(time.time()) + 1)
    assert again.status == 200
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == BOB)
    assert len(bot.store.get(request_id).approvals) == 1
    assert bot.fake.ephemerals(BOB) == [
        "Your approval is recorded. It still needs 1 approval from <!subteam^S0ONCALL>."
    ]


def test_healthz_answers_and_other_paths_do_not(make_bot: MakeBot) -> None:
    bot = make_bot()
    with urllib.request.urlopen(f"{bot.url}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b'{"ok": true}')
    try:
        urllib.request.urlopen(f"{bot.url}/admin", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_acknowledgement_is_fast_even_while_the_engine_is_slow(make_bot: MakeBot) -> None:
    """The ack never waits for the engine: a plan that takes 2 s still gets a 200 at once."""
    bot = make_bot()
    gate = __import__("threading").Event()
    original = bot.engine.client().run

    class SlowClient:
        host_key_fingerprint = bot.engine.host_key

        def run(self, request):  # type: ignore[no-untyped-def]
            gate.wait(2)
            yield from original(request)

    bot.rotator.deps.planner.engine_clients = lambda name: SlowClient()  # type: ignore[attr-defined]
    sent = bot.command("/rotate-key", f"{PANEL} disclosure")
    gate.set()
    assert sent.status == 200 and sent.elapsed_s < 0.5
