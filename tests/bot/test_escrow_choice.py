"""No escrow is a choice the profile states, and people see it (issue 22, item 2).

A profile that says nothing about escrow is refused with the fix named; one that says
``escrow = "none"`` rotates, and the request card and the summary say "no escrow";
one with an escrow command names it on both.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.local_client import LocalEngineClient
from tests.bot.conftest import BOB, CHANNEL, MakeBot
from tests.engine.runner import run_engine
from tests.support.secrets_scan import SecretRegistry

NO_ESCROW = 'no escrow (escrow = "none" in the profile)'


def test_a_profile_that_says_nothing_about_escrow_is_refused_with_the_fix_named(panel_factory) -> None:
    """Before: such a profile rotated, noted only as "no escrow configured" in one step line."""
    panel = panel_factory(rows=2)
    silent = panel.write_profile(escrow=None)
    old_key = panel.env_key()

    run = run_engine(silent, "rotate-key", "--yes", "--json")

    assert run.returncode != 0
    assert 'escrow: say where each new key is escrowed' in run.stderr + run.stdout
    assert 'escrow = "none"' in run.stderr + run.stdout and "deploy/escrow/" in run.stderr + run.stdout
    assert panel.env_key() == old_key


def test_escrow_none_and_an_escrow_command_together_are_refused(panel_factory) -> None:
    panel = panel_factory(rows=2)
    both = panel.write_profile(escrow="none", escrow_command=["true"])

    run = run_engine(both, "plan", "--json")

    assert run.returncode != 0
    assert 'escrow = "none" contradicts escrow_command' in run.stderr + run.stdout


def test_no_escrow_is_stated_on_the_card_and_in_the_summary(
    make_bot: MakeBot, panel_factory: Callable[..., object], secret_registry: SecretRegistry
) -> None:
    sandbox = panel_factory(rows=4)
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path)},
        profiles={"prod-eu": sandbox.profile_path},
    )
    request_id, ts = bot.request_key()
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")

    assert f"new key: {NO_ESCROW}" in card.replace("&quot;", '"')
    assert f"new key {NO_ESCROW}" in final.text.replace("&quot;", '"')
    staged = [line for line in bot.fake.thread(CHANNEL, ts) if line.startswith("✔ new key staged")]
    assert staged and NO_ESCROW in staged[0].replace("&quot;", '"')


def test_an_escrow_command_is_named_on_the_card_and_in_the_summary(
    make_bot: MakeBot, panel_factory: Callable[..., object], secret_registry: SecretRegistry, tmp_path
) -> None:
    sandbox = panel_factory(rows=4)
    kept = tmp_path / "kept"
    profile = sandbox.write_profile(escrow_command=["sh", "-c", f"cat > {kept}"], escrow_label="vault")
    bot = make_bot(engine_clients={"prod-eu": LocalEngineClient(profile)}, profiles={"prod-eu": profile})
    request_id, ts = bot.request_key()
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")

    assert "new key: escrowed (vault)" in card
    assert "new key escrowed (vault)" in final.text
    assert kept.read_text().strip() == sandbox.env_key()
