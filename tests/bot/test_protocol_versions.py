"""The bot and an engine a protocol version apart: it works, or the refusal names the side to
upgrade (issue 22, item 4). The engine answers every version it lists in ``hello``; the bot
speaks one; so engines are upgraded first, then the bot (docs/operations.md, Upgrades)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.errors import ProtocolMismatchError
from bot.local_client import LocalEngineClient
from engine.protocol import PROTOCOL_VERSION, Request
from tests.bot.conftest import BOB, MakeBot

WRAPPER = Path(__file__).with_name("versioned_engine.py")


def engine_speaking(versions: str, profile: Path) -> LocalEngineClient:
    command = [sys.executable, "-u", str(WRAPPER), versions, "--profile", str(profile), "serve"]
    return LocalEngineClient(profile, command=command)


def test_a_newer_engine_that_still_speaks_the_bots_version_works(
    make_bot: MakeBot, panel_factory: Callable[..., object]
) -> None:
    """Engines upgraded first (speaking the bot's version and the next): requests run as before."""
    sandbox = panel_factory(rows=3)
    newer = f"{PROTOCOL_VERSION},{PROTOCOL_VERSION + 1}"
    bot = make_bot(engine_clients={"prod-eu": engine_speaking(newer, sandbox.profile_path)},
                   profiles={"prod-eu": sandbox.profile_path})
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    assert bot.state(request_id) == "done"


def test_an_engine_that_dropped_the_bots_version_is_refused_naming_the_bot_to_upgrade(
    make_bot: MakeBot, panel_factory: Callable[..., object]
) -> None:
    sandbox = panel_factory(rows=3)
    old_key = sandbox.env_key()
    bot = make_bot(engine_clients={"prod-eu": engine_speaking(str(PROTOCOL_VERSION + 1), sandbox.profile_path)},
                   profiles={"prod-eu": sandbox.profile_path})
    bot.command("/rotate-key", "prod-eu suspected .env disclosure, INC-4412")
    said = bot.fake.wait_text("chat.postEphemeral", "Could not plan").text

    assert f"speaks protocol [{PROTOCOL_VERSION + 1}], this bot speaks {PROTOCOL_VERSION}" in said
    assert "upgrade the bot" in said and "Nothing was changed" in said
    assert sandbox.env_key() == old_key
    assert bot.cards() == []  # no request card: nothing to approve


def test_a_bot_newer_than_the_engine_is_refused_naming_the_engine_to_upgrade(
    panel_factory: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot upgraded before its engines: the engine's hello lists only older versions."""
    sandbox = panel_factory(rows=2)
    monkeypatch.setattr("bot.local_client.PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    client = LocalEngineClient(sandbox.profile_path)
    request = Request(v=PROTOCOL_VERSION, id="r-newer-bot", op="plan", requested_by="U1")
    object.__setattr__(request, "v", PROTOCOL_VERSION + 1)  # this engine's Request refuses to build it

    with pytest.raises(ProtocolMismatchError) as caught:
        list(client.run(request))

    assert (f"speaks protocol [{PROTOCOL_VERSION}], this bot speaks {PROTOCOL_VERSION + 1}: "
            "upgrade the engine on this panel host (engines first, then the bot)") in caught.value.message
