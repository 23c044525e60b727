"""/rotate-db-password over signed HTTP and the real engine, on a panel whose DB login
exists twice ('u'@'localhost' for PHP's socket, 'u'@'127.0.0.1' for TCP): the card names
both accounts and their routes before anyone approves, and the closing summary says
both got the new password and on which routes the old one was proven refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.local_client import LocalEngineClient
from tests.bot.conftest import ALICE, BOB, CHANNEL, PANEL, MakeBot, card_request_id, is_card, wait_until
from tests.support.db_accounts import SOCKET, drop_accounts, env_value, login, make_twins
from tests.support.secrets_scan import SecretRegistry


@pytest.fixture
def twins() -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    drop_accounts(made)


def test_the_card_and_the_summary_name_every_account_and_route(
    make_bot: MakeBot, panel_factory: Callable[..., Any], secret_registry: SecretRegistry, twins: list[Any]
) -> None:
    sandbox = make_twins(panel_factory(rows=2, server=True), ("localhost", "127.0.0.1"), "localhost", twins)
    user, old = sandbox.db.user, sandbox.db.password
    bot = make_bot(engine_clients={PANEL: LocalEngineClient(sandbox.profile_path)},
                   profiles={PANEL: sandbox.profile_path})  # fmt: skip
    ack = bot.command("/rotate-db-password", f"{PANEL} the .env was in a public backup", ALICE)
    assert 200 == ack.status
    card = bot.fake.wait_for("chat.postMessage", is_card, timeout=60)[-1]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    text = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert (
        f"every account the current password opens gets the new one: `{user}@localhost (socket {SOCKET})`, "
        f"`{user}@127.0.0.1 (127.0.0.1:3306)`" in text
    ), text

    bot.approve(request_id, ts, BOB)

    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Database password rotated", timeout=120)
    new = env_value(sandbox, "DB_PASSWORD")
    secret_registry.register(new, "DB_PASSWORD (rotated)")
    assert f"2 accounts `{user}@localhost`, `{user}@127.0.0.1`" in final.text, final.text
    assert f"the old one is refused on 127.0.0.1:3306, socket {SOCKET}" in final.text, final.text
    assert login(user, old, route="socket") is None and login(user, old, route="tcp") is None
    assert 200 == sandbox.health()[0]
