"""The bot driving the real engine (``python -m engine serve``) on a real panel in MariaDB."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bot.fakes.slack_api import has_buttons
from bot.local_client import LocalEngineClient
from engine.faults import FAULT_ENV
from engine.protocol import fingerprint
from tests.bot.conftest import BOB, CHANNEL, MakeBot
from tests.support.panel import failing_once
from tests.support.secrets_scan import SecretRegistry


def test_happy_path_to_a_verified_rotation(
    make_bot: MakeBot, panel_factory: Callable[..., object], secret_registry: SecretRegistry
) -> None:
    """/rotate-key -> plan card -> the requester's own click refused -> Bob approves -> the engine
    re-encrypts every value in MariaDB, verifies -> every step in the thread, the summary on the
    card;
    PHP decrypts every value with the new key in .env."""
    sandbox = panel_factory(rows=20, server=True)
    old_key = sandbox.env_key()
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path)},
        profiles={"prod-eu": sandbox.profile_path},
    )
    request_id, ts = bot.request_key()
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert f"current key {fingerprint(old_key)[:8]}…" in card
    assert "engine " in card and "host key local" in card

    bot.approve(request_id, ts, "U0ALICE")
    bot.fake.wait_for("chat.postEphemeral", lambda c: "someone else" in c.text)
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)

    new_key = sandbox.env_key()
    secret_registry.register_key(new_key, "rotated PANEL_ENCRYPTION_KEY")
    assert new_key != old_key
    assert sandbox.php_check_all() == []
    thread = bot.fake.thread(CHANNEL, ts)
    steps = [line.split(" · ")[0] for line in thread if line.startswith(("✔", "✖"))]
    assert steps[:4] == ["✔ preflight", "✔ new key staged", "✔ re-encrypted", "✔ database verified"]
    assert "✔ verified from disk" in steps
    assert "verification:" in final.text and "rotation " + request_id in final.text
    latest = bot.fake.latest_card(CHANNEL, ts)
    assert ":white_check_mark: Verified in " in latest.all_text() and not has_buttons(latest)
    assert bot.state(request_id) == "done"
    assert bot.rotator.audit.verify().ok


def test_an_engine_failure_rolls_back_and_the_thread_says_so(
    make_bot: MakeBot, panel_factory: Callable[..., object], tmp_path: Path
) -> None:
    """The panel check fails after the switch: the engine rolls back by itself; the thread shows the
    failed step and the rollback, the card says "rolled back", and every value still opens under
    the old key."""
    sandbox = panel_factory(rows=10)
    old_key = sandbox.env_key()
    profile = sandbox.write_profile(verify_command=failing_once(tmp_path))
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(profile)}, profiles={"prod-eu": profile}
    )
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    final = bot.fake.wait_text("chat.postMessage", "Rolled back.", timeout=120)
    assert sandbox.env_key() == old_key
    assert sandbox.php_check_all() == []
    thread = bot.fake.thread(CHANNEL, ts)
    assert any(line.startswith("✖ ") for line in thread), thread
    assert final.text.startswith(":rotating_light: Rolled back. The panel is as it was. Next: ")
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert ":rotating_light: Failed, rolled back" in card
    outcome = bot.store.get(request_id).outcome
    assert (outcome["rolled_back"], bot.state(request_id)) == (True, "failed")


def _stopped_engine(journal_dir: Path, request_id: str, timeout: float = 60.0) -> int:
    """The pid of the engine running ``request_id`` once it has stopped itself at its fault point."""
    marker = journal_dir / "events" / f"{request_id}.running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().strip():
            pid = int(marker.read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "T":
                return pid
        time.sleep(0.02)
    raise AssertionError(f"the engine of {request_id} did not reach its fault point")


def test_restart_with_a_running_rotation_reattaches_to_the_real_engine(
    make_bot: MakeBot, panel_factory: Callable[..., object], secret_registry: SecretRegistry
) -> None:
    """The engine pauses right after re-encrypting; the bot goes away; the engine goes on; the
    next bot re-attaches from the last event it saved and reports to a verified end."""
    sandbox = panel_factory(rows=10)
    paused = LocalEngineClient(
        sandbox.profile_path, env={**os.environ, FAULT_ENV: "stop@state:REENCRYPTED"}
    )
    first = make_bot(engine_clients={"prod-eu": paused}, profiles={"prod-eu": sandbox.profile_path})
    request_id, ts = first.request_key()
    first.approve(request_id, ts, BOB)
    pid = _stopped_engine(Path(sandbox.profile_base["journal_dir"]), request_id)
    saved_seq = first.state(request_id, "last_seq")
    first.close()

    second = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path)},
        profiles={"prod-eu": sandbox.profile_path},
    )
    second.fake.wait_text("chat.postMessage", "following the engine again")
    os.kill(pid, signal.SIGCONT)
    final = second.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated PANEL_ENCRYPTION_KEY")
    assert sandbox.php_check_all() == []
    assert f"rotation {request_id}" in final.text
    assert second.state(request_id) == "done" and saved_seq > 0
    steps = [line.split(" · ")[0] for line in second.fake.thread(CHANNEL, ts) if line[0] in "✔✖↷"]
    assert len(steps) == len(set(steps)), steps  # every step reported once
