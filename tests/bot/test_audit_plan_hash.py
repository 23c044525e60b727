"""One plan hash: the card, the audit log, the thread's summary and the engine's runs.jsonl
show the same value, the engine's, and approving still binds it.

The bot drives the real engine (``python -m engine serve``) on a real panel in MariaDB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.local_client import LocalEngineClient
from tests.bot.conftest import BOB, CHANNEL, MakeBot, wait_until
from tests.support.secrets_scan import SecretRegistry

#: the card shows a prefix of the hash (a bare 64-hex value in Slack would look like a key)
CARD_HASH = re.compile(r"plan hash `([0-9a-f]{16})`")


def runs(sandbox: Any) -> list[dict[str, Any]]:
    path = Path(sandbox.profile_base["journal_dir"]) / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def card_hash(bot: Any, ts: str) -> str:
    match = CARD_HASH.search(bot.fake.latest_card(CHANNEL, ts).all_text())
    assert match, bot.fake.latest_card(CHANNEL, ts).all_text()
    return match.group(1)


def audited_hash(bot: Any, request_id: str) -> str:
    (created,) = [
        e for e in bot.store.audit_entries() if e["request_id"] == request_id and e["kind"] == "request.created"
    ]
    return str(json.loads(created["data"])["plan_hash"])


def test_the_card_audit_summary_and_runs_jsonl_show_the_engines_plan_hash(
    make_bot: MakeBot, panel_factory: Callable[..., Any], secret_registry: SecretRegistry
) -> None:
    """After a real rotation: the hash on the card (16 digits at its foot, 12 at its top and in
    the summary, as ``engine status`` lists a run) is the ``plan_hash`` the engine wrote to
    runs.jsonl (its start and its outcome), and the one in the audit log, in full."""
    sandbox = panel_factory(rows=8)
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path)},
        profiles={"prod-eu": sandbox.profile_path},
    )
    request_id, ts = bot.request_key()
    shown = card_hash(bot, ts)
    assert f"*Plan* `{shown[:12]}`" in bot.fake.latest_card(CHANNEL, ts).all_text()

    bot.approve(request_id, ts, BOB)
    summary = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")

    recorded = [r for r in runs(sandbox) if r.get("rotation_id") == request_id or r.get("id") == request_id]
    assert ["started", "finished"] == [r["event"] for r in recorded], runs(sandbox)
    (engine_hash,) = {r.get("plan_hash") for r in recorded}
    assert engine_hash.startswith(shown), "runs.jsonl names the card's plan hash"
    assert engine_hash == audited_hash(bot, request_id) == bot.store.get(request_id).plan_hash
    assert f"Rotation `{request_id}`, plan `{shown[:12]}`" in summary.all_text()
    assert shown == card_hash(bot, ts), "the final card still shows the same hash"


def test_a_plan_that_changed_since_approval_voids_it_with_the_real_engine(
    make_bot: MakeBot, panel_factory: Callable[..., Any], secret_registry: SecretRegistry
) -> None:
    """Two requests planned on the same key; the first runs and changes the key. Approving the
    second names its (now stale) engine plan hash and key: the engine refuses before it changes
    anything, the approvals are void, and runs.jsonl records the refusal under that same hash."""
    sandbox = panel_factory(rows=5)
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path)},
        profiles={"prod-eu": sandbox.profile_path},
    )
    first, first_ts = bot.request_key()
    second, second_ts = bot.request_key("prod-eu second request, same plan")
    assert card_hash(bot, first_ts) == card_hash(bot, second_ts), "one plan, one hash"
    stale = card_hash(bot, second_ts)

    bot.approve(first, first_ts, BOB)
    wait_until(lambda: bot.state(first) == "done", timeout=120, what="the first run")
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")
    key_after_first = sandbox.env_key()

    bot.approve(second, second_ts, BOB)
    wait_until(lambda: bot.state(second) == "voided", timeout=120, what="the second request voided")
    assert sandbox.env_key() == key_after_first, "nothing changed"
    refused = [r for r in runs(sandbox) if second in (r.get("rotation_id"), r.get("id"))]
    assert refused and {stale} == {r.get("plan_hash")[:16] for r in refused}
    bot.fake.wait_for(  # the store says voided first, then the card is repainted
        "chat.update",
        lambda c: c.params.get("ts") == second_ts and ":warning: Plan changed before running" in c.all_text(),
    )
