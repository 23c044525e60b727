"""A fleet on real parts: 20 panels, each with its own MariaDB database, ``.env`` and profile,
each engine behind the one real OpenSSH sshd (its own key, its own forced command), the
bot over signed HTTP. One approval; PHP is the judge of every panel afterwards.

One panel's restart command fails once (after the switch): its engine rolls back by
itself and the other nineteen finish. The bot is stopped mid-run and started again: it
re-attaches the running panels and starts the queued ones.
"""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import BOB, CHANNEL, MakeBot, card_request_id, is_card, wait_until
from tests.ssh.conftest import PanelFactory
from tests.support.panel import PanelSandbox

pytestmark = pytest.mark.slow

PANELS = 20
ROWS = 5  # per table: 4 tables, 6 columns, NULL and '' among them
FAILING = "fleet-07"


def restart_failing_once(directory: Path) -> list[str]:
    """A restart that fails the first time (the switch to the new key) and then works (the
    rollback's restart with the old key), as a php-fpm that refuses a new config once."""
    marker = directory / "restarted-once"
    script = directory / "restart.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then exit 0; fi\n'
        f'touch "{marker}"\n'
        'echo "php-fpm: configuration test failed" >&2\nexit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_twenty_panels_one_approval_one_rollback_a_restart_and_php_verifies_each(
    make_bot: MakeBot, ssh_panel: PanelFactory, panel_factory: Any
) -> None:
    names = [f"fleet-{n:02d}" for n in range(PANELS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        sandboxes: dict[str, PanelSandbox] = dict(
            zip(names, pool.map(lambda _: panel_factory(rows=ROWS), names), strict=True)
        )
    entries = {}
    for name, sandbox in sandboxes.items():
        overrides: dict[str, Any] = {"name": name}
        if name == FAILING:
            overrides["restart_command"] = restart_failing_once(sandbox.root)
        profile = sandbox.write_profile(**overrides)
        entries[name] = ssh_panel(profile, name=name)
    tags = {name: ("prod" if n % 2 else "staging", "eu") for n, name in enumerate(names)}
    config: dict[str, Any] = {"panels": (), "ssh_panels": entries, "tags": tags, "fleet_concurrency": 4}
    first = make_bot(**config)

    first.command("/rotate-key", "--all-panels quarterly review, OPS-77")
    card = first.fake.wait_for("chat.postMessage", is_card, timeout=60)[-1]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: first.state(request_id, "message_ts") == ts)
    text = first.fake.latest_card(CHANNEL, ts).all_text()
    assert "Fleet key rotation requested: all panels (20 panels)" in text
    assert "*prod* (10)" in text and "*staging* (10)" in text and "cannot plan" not in text
    first.approve(request_id, ts, BOB)

    def running_and_queued() -> bool:
        states = {run.state for run in first.store.fleet_panels(request_id)}
        return "running" in states and "queued" in states

    wait_until(running_and_queued, timeout=30, what="some panels running while others wait")
    first.close()  # the bot goes away mid-run; the engines on the hosts go on

    second = make_bot(**config)
    wait_until(lambda: second.state(request_id) in ("done", "failed"), timeout=120, what="the fleet ended")
    assert second.state(request_id) == "failed"  # one panel rolled back
    runs = {run.panel: run for run in second.store.fleet_panels(request_id)}
    assert {name: run.state for name, run in runs.items()} == {
        name: ("rolled_back" if name == FAILING else "verified") for name in names
    }
    for name, sandbox in sandboxes.items():
        key = sandbox.env_key()
        if name == FAILING:
            assert key == sandbox.initial_key, "the failed panel kept its old key"
            assert runs[name].code and "restart" in runs[name].message.lower()
        else:
            assert key != sandbox.initial_key, f"{name} still has its old key"
        assert sandbox.php_check_all() == [], name
    replies = [t for t in second.fake.thread(CHANNEL, ts) if t.startswith(("✖", ":sos:", "⊘"))]
    assert len(replies) == 1 and replies[0].startswith(f"✖ {FAILING}: ")
    summary = [t for t in second.fake.thread(CHANNEL, ts) if "finished:" in t]
    assert summary and "19/20 panels verified" in summary[-1]
