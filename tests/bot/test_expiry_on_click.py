"""A click after the deadline expires the request itself, with no expiry watcher to help.

The watcher usually expires a request first; the click path must hold on its
own (a watcher behind, a bot just restarted). Found by bench/mutation_check.py:
removing the click's own deadline check passed every test, because the watcher
won the race in each of them.
"""

from __future__ import annotations

import time

from handlers.blocks import DENY_ACTION, DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT
from tests.bot.conftest import BOB, MakeBot, wait_until


def test_approve_and_deny_after_the_deadline_expire_the_request(make_bot: MakeBot) -> None:
    now = [time.time()]
    bot = make_bot(clock=lambda: now[0], start=False)  # no expiry watcher
    approved_late, ts = bot.request_key()
    denied_late, other_ts = bot.request_key()
    now[0] += 31 * 60
    bot.approve(approved_late, ts, BOB)
    bot.fake.wait_text("chat.postEphemeral", "no longer pending: it expired", user=BOB)
    bot.click(DENY_ACTION, denied_late, other_ts, BOB)
    bot.fake.wait_for("views.open")
    bot.slack.submit_view(
        DENY_MODAL, denied_late, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "too late"}}, BOB
    )
    wait_until(lambda: bot.state(denied_late) != "pending")
    assert (bot.state(approved_late), bot.state(denied_late)) == ("expired", "expired")
    assert bot.engine.ops("rotate-key") == []
