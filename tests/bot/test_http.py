"""The HTTP edge: Slack's signature, its clock, replays, retries, and the health check."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from bot.fakes.slack_signing import signature, signed_headers
from bot.wsgi import HttpLimits
from handlers.blocks import APPROVE_ACTION, DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from handlers.rotation_request import State
from tests.bot.conftest import ALICE, BOB, DAVE, PANEL, BotUnderTest, MakeBot


def test_a_bad_signature_is_refused_and_does_nothing(make_bot: MakeBot) -> None:
    bot = make_bot()
    sent = bot.command("/rotate-key", f"{PANEL} disclosure", secret="not-the-signing-secret")
    assert sent.status == 401
    assert bot.engine.ops("plan") == [] and bot.fake.calls_to("chat.postMessage") == []


def test_a_tampered_body_is_refused_and_does_nothing(make_bot: MakeBot) -> None:
    """Alice's signed command with the user changed to Bob: 401, and no plan, no message."""
    bot = make_bot()
    body = bot.slack.command_body("/rotate-key", f"{PANEL} disclosure", ALICE)
    headers = signed_headers(bot.slack.signing_secret, body)
    sent = bot.slack.post(body.replace("U0ALICE", "U0BOB"), headers=headers)
    assert sent.status == 401
    bot.command("/rotate-help", "")  # a valid request after it, answered: the bot is up
    assert _nothing_done(bot)


def test_forged_clicks_and_modal_submissions_are_refused_and_do_nothing(
    make_bot: MakeBot,
) -> None:
    """An Approve click, a Deny click and a deny-modal submission in Bob's name, signed with
    the wrong secret or signed for Dave and then edited to Bob: each is a 401, the request
    is untouched and Slack's API is not called for them."""
    bot = make_bot()
    request_id, ts = bot.request_key()
    version, calls = bot.store.get(request_id).version, len(bot.fake.calls)
    wrong = "not-the-signing-secret-at-all"
    refused = [
        bot.approve(request_id, ts, BOB, secret=wrong),
        bot.click(DENY_ACTION, request_id, ts, BOB, secret=wrong),
        bot.slack.submit_view(
            DENY_MODAL,
            request_id,
            {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "forged"}},
            BOB,
            secret=wrong,
        ),
    ]
    dave = bot.slack.click_body(APPROVE_ACTION, request_id, DAVE, ts)
    refused.append(
        bot.slack.post(
            dave.replace(DAVE, BOB), headers=signed_headers(bot.slack.signing_secret, dave)
        )
    )
    assert [r.status for r in refused] == [401] * 4
    # a genuine click after the forged ones; once it is answered, theirs would have been too
    bot.approve(request_id, ts, DAVE)
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == DAVE)
    request = bot.store.get(request_id)
    assert (request.version, request.state, request.approvals) == (version, State.PENDING, ())
    after = [c.method for c in bot.fake.calls[calls:] if c.method != "usergroups.users.list"]
    assert after == ["chat.postEphemeral"]
    assert bot.engine.ops("rotate-key") == []


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


def _http_status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_healthz_answers_and_other_paths_do_not(make_bot: MakeBot) -> None:
    bot = make_bot()
    with urllib.request.urlopen(f"{bot.url}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b'{"ok": true}')
    statuses = [
        _http_status(f"{bot.url}/admin"),
        _http_status(f"{bot.url}/admin", "POST"),
        _http_status(f"{bot.url}/"),
        _http_status(f"{bot.url}/slack/events/../admin"),
    ]
    assert statuses == [404, 404, 404, 404]


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


# --- attacks on the HTTP server itself, before any signature is checked ------------------
# Each sends only to the bot's loopback address, in loops bounded in count and time.


def _connect(bot: BotUnderTest) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", bot.server.port), timeout=5)
    sock.settimeout(5)
    return sock


def _status(sock: socket.socket) -> int:
    """The status code of the answer on ``sock`` (waits at most the socket's timeout)."""
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before a status line: {head!r}")
        head += chunk
    return int(head.split(b" ", 2)[1])


def _nothing_done(bot: BotUnderTest) -> bool:
    called = {c.method for c in bot.fake.calls} - {"auth.test"}
    return bot.engine.ops("plan") == [] and not called and bot.store.list_in_states(State) == []


def _answers_within(sock: socket.socket, seconds: float) -> bool:
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)


def test_a_negative_content_length_is_refused_without_reading_the_body(make_bot: MakeBot) -> None:
    """``Content-Length: -1`` once made the server read until the client hung up (300 MB):
    now it is a 400 while the client is still sending, and the app never runs."""
    bot = make_bot()
    with _connect(bot) as sock:
        sock.sendall(
            b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Length: -1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + b"a" * 65536
        )
        assert _status(sock) == 400
    assert _nothing_done(bot)


def test_a_huge_content_length_is_refused_before_the_body_is_sent(make_bot: MakeBot) -> None:
    """300 MB announced, 64 KB sent: the 413 comes back without waiting for the rest."""
    bot = make_bot()
    with _connect(bot) as sock:
        sock.sendall(
            b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Length: 300000000\r\n\r\n"
            + b"a" * 65536
        )
        assert _status(sock) == 413
    assert _nothing_done(bot)


def test_a_chunked_body_over_the_cap_is_refused_at_the_cap(make_bot: MakeBot) -> None:
    """No length announced: the cap applies to what arrives, and stops reading there."""
    bot = make_bot(limits=HttpLimits(max_body_bytes=16 * 1024))
    chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
    with _connect(bot) as sock:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(chunk * 2)
        assert _status(sock) == 413
    assert _nothing_done(bot)


def test_slow_clients_hold_no_thread_and_are_cut_off_at_the_request_deadline(
    make_bot: MakeBot,
) -> None:
    """Forty clients dribble header bytes (a slowloris): the bot starts no thread for them,
    a signed command is still answered, and each slow client is disconnected once its
    request is older than the deadline, although it never stopped sending."""
    bot = make_bot(limits=HttpLimits(request_timeout_s=1.0, max_connections=100))
    threads_before = threading.active_count()
    slow = [_connect(bot) for _ in range(40)]
    for sock in slow:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: bot\r\n")
    closed: set[int] = set()
    deadline = time.monotonic() + 8
    answered = None
    for n in range(200):  # at most 200 dribbles of one header line each
        if len(closed) == len(slow) or time.monotonic() > deadline:
            break
        for i, sock in enumerate(slow):
            if i in closed:
                continue
            try:
                sock.sendall(f"X-Slow-{n}: a\r\n".encode())
                if _answers_within(sock, 0) and not sock.recv(4096):
                    closed.add(i)
            except OSError:
                closed.add(i)
        if answered is None:
            assert threading.active_count() <= threads_before + 2
            answered = bot.command("/rotate-help", "")
        time.sleep(0.05)  # the dribble's pace
    for sock in slow:
        sock.close()
    assert answered is not None and answered.status == 200
    assert "rotate-key" in answered.text
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow clients still connected"


def test_connections_beyond_the_cap_wait_until_one_closes(make_bot: MakeBot) -> None:
    """With a cap of 4, four open keep-alive connections leave a fifth unanswered; when one
    of the four closes, the fifth is served."""
    bot = make_bot(limits=HttpLimits(max_connections=4, busy_timeout_s=30))
    health = b"GET /healthz HTTP/1.1\r\nHost: bot\r\n\r\n"
    held = [_connect(bot) for _ in range(4)]
    for sock in held:
        sock.sendall(health)
        assert _status(sock) == 200
    extra = _connect(bot)  # the kernel completes the handshake; the server does not accept
    try:
        extra.sendall(health)
        assert not _answers_within(extra, 0.5)
        held.pop().close()
        assert _status(extra) == 200
    finally:
        extra.close()
        for sock in held:
            sock.close()


def _no_traceback(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.exc_info] and "Traceback" not in caplog.text


def test_a_timestamp_that_is_not_a_number_is_a_401_without_a_traceback(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed over the bogus timestamp itself, so only the timestamp is wrong."""
    bot = make_bot()
    body = bot.slack.command_body("/rotate-key", f"{PANEL} disclosure", ALICE)
    for stamp in ("abc", "1e9", "", "-5", "0x10", "²"):
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature(bot.slack.signing_secret, stamp, body),
        }
        assert bot.slack.post(body, headers=headers).status == 401, stamp
    assert _nothing_done(bot)
    assert _no_traceback(caplog)


def test_a_malformed_interaction_payload_is_a_400_without_a_traceback(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture
) -> None:
    bot = make_bot()
    for body in ("payload=%7Bnot-json", "payload=%5B1%5D", "payload=null"):
        assert bot.slack.post(body).status == 400, body
    assert _nothing_done(bot)
    assert _no_traceback(caplog)


def test_when_half_the_slots_are_taken_slow_clients_get_the_short_deadline(
    make_bot: MakeBot,
) -> None:
    """Six slow clients take six of ten slots: although a request may normally take 30 s,
    under this pressure they are cut off after the busy deadline (0.5 s), freeing the slots."""
    bot = make_bot(
        limits=HttpLimits(max_connections=10, request_timeout_s=30, busy_timeout_s=0.5)
    )
    slow = [_connect(bot) for _ in range(6)]
    try:
        for sock in slow:
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: bot\r\n")
        for sock in slow:  # each recv waits at most the socket's 5 s timeout
            assert sock.recv(4096) == b""
        assert bot.command("/rotate-help", "").status == 200
    finally:
        for sock in slow:
            sock.close()
