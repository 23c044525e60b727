"""From a signed ``/rotate-key`` to a verified key, the whole way on real parts.

Slack's side: requests signed as Slack signs them, over HTTP, to the real Bolt
app; its Web API calls go to the recording fake. The bot reaches the engine
through a real OpenSSH ``sshd`` whose only door is the forced
``engine serve``, configured as production configures it: a ``[panels.X]``
entry in the bot's TOML with the host key pinned in ``known_hosts``. The
engine rotates the reference panel (PHP under php-fpm behind nginx) in
MariaDB; PHP is the judge of every stored value. The new key goes to an escrow
command that files it, so the tests know it and can prove it leaked nowhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.fakes.slack_api import has_buttons
from engine import __version__
from engine.protocol import KEY_STEPS, fingerprint
from handlers import messages as m
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    ONCALL,
    PANEL,
    BotUnderTest,
    MakeBot,
    answers_to,
)
from tests.ssh.conftest import PanelFactory
from tests.support.panel import PanelSandbox, failing_once
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import SSHServer

pytestmark = pytest.mark.slow

ROWS = 40  # per table: 4 tables, 6 columns, with NULL, '' and encrypted-empty values among them
STEPS = [f"✔ {m.step_label(step)}" for step in KEY_STEPS]  # every step, finished


@dataclass
class Rotation:
    """One request as Slack saw it: the bot, the card's ts, the panel and the escrowed key."""

    bot: BotUnderTest
    request_id: str
    ts: str
    sandbox: PanelSandbox
    old_key: str
    escrow: Path

    def thread(self) -> list[str]:
        return self.bot.fake.thread(CHANNEL, self.ts)

    def card(self) -> str:
        return self.bot.fake.latest_card(CHANNEL, self.ts).all_text()

    def steps(self) -> list[str]:
        """Each step reply's outcome and name, without its detail and duration."""
        return [line.split(" · ")[0] for line in self.thread() if line[:1] in "✔✖↷↩"]

    def escrowed_key(self) -> str:
        return self.escrow.read_text().strip()


def escrow_to(directory: Path) -> tuple[list[str], Path]:
    """An escrow command that files the new key it gets on stdin (0600), as a vault CLI would."""
    vault = directory / "vault" / "new-key"
    vault.parent.mkdir(mode=0o700)
    script = directory / "escrow.sh"
    script.write_text(f'#!/bin/sh\numask 077\ncat > "{vault}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], vault


@pytest.fixture
def request_rotation(
    make_bot: MakeBot,
    ssh_panel: PanelFactory,
    panel_factory: Callable[..., PanelSandbox],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> Callable[..., Rotation]:
    """``request_rotation(**profile overrides)``: a panel, its engine behind sshd, the bot
    configured with it as ``[panels.prod-eu]``, and Alice's signed ``/rotate-key`` with its
    card posted."""
    caplog.set_level(logging.INFO)

    def request(**profile: object) -> Rotation:
        sandbox = panel_factory(rows=ROWS, server=True, fpm=True)
        escrow, vault = escrow_to(tmp_path)
        profile_path = sandbox.write_profile(
            escrow_command=escrow, escrow_label="vault", backup_command=["true"], **profile
        )
        entry = ssh_panel(profile_path, name=PANEL)
        bot = make_bot(panels=(), ssh_panels={PANEL: entry})
        request_id, ts = bot.request_key()
        return Rotation(bot, request_id, ts, sandbox, sandbox.env_key(), vault)

    return request


def host_key_fingerprint(sshd: SSHServer) -> str:
    """``SHA256:…`` of the sshd's host key, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(sshd.host_key.public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def approve_as_alice_then_bob(rotation: Rotation) -> str:
    """Alice's own click is refused (she hears why); Bob's starts the run. Alice's answer."""
    bot = rotation.bot
    assert 200 == bot.approve(rotation.request_id, rotation.ts, ALICE).status
    refusal = answers_to(bot.fake, ALICE)
    assert 200 == bot.approve(rotation.request_id, rotation.ts, BOB).status
    return refusal[0].text


def leaks(rotation: Rotation, sshd: SSHServer, caplog: pytest.LogCaptureFixture,
          registry: SecretRegistry) -> dict[str, list[str]]:  # fmt: skip
    """Registered secrets (keys, DB password, plaintexts, Slack secrets) found in what Slack
    received, in the logs, in sshd's log and in the engine's event journal, by place."""
    events = Path(rotation.sandbox.profile_base["journal_dir"]) / "events"
    places = {
        f"slack {call.method} #{n}": call.raw_body + json.dumps(call.params, ensure_ascii=False)
        for n, call in enumerate(rotation.bot.fake.calls)
    }
    places["bot log"] = caplog.text
    places["sshd log"] = sshd.log_text()
    journal = {f"journal {p.name}": p.read_text() for p in events.glob("*.jsonl")}
    assert journal, f"no event journal in {events}"
    places |= journal
    found = {place: registry.scan(text) for place, text in places.items()}
    return {place: names for place, names in found.items() if names}


def test_a_second_operator_approves_and_the_key_is_rotated_through_ssh(
    request_rotation: Callable[..., Rotation],
    sshd: SSHServer,
    caplog: pytest.LogCaptureFixture,
    secret_registry: SecretRegistry,
) -> None:
    """Signed /rotate-key -> plan card (counts, layout, pinned host key) -> Alice's own Approve
    refused -> Bob approves -> the engine rotates through sshd -> every step in the thread, the
    card shows the verified summary -> PHP decrypts every value with the key now in .env."""
    rotation = request_rotation()
    sandbox, old_fp = rotation.sandbox, fingerprint(rotation.old_key)
    plan_card = rotation.card()
    assert f"current key {old_fp[:8]}…" in plan_card
    assert f"host key {host_key_fingerprint(sshd)} · engine {__version__}" in plan_card

    refusal = approve_as_alice_then_bob(rotation)
    final = rotation.bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=180)

    new_key = sandbox.env_key()
    secret_registry.register_key(new_key, "rotated PANEL_ENCRYPTION_KEY")
    new_fp = fingerprint(new_key)
    total = sum(1 for p in sandbox.plaintexts.values() if p is not None)
    assert m.self_approval(f"<!subteam^{ONCALL}>") == refusal
    assert STEPS == rotation.steps()
    assert (new_key, "done") == (rotation.escrowed_key(), rotation.bot.state(rotation.request_id))
    summary = [
        f"old key {old_fp[:8]}… → new key {new_fp[:8]}…",
        f"re-encrypted {total} values",
        f"verification: {total}/{total} open with the new key · panel check 200 OK",
        f"rotation {rotation.request_id}",
    ]
    card = rotation.bot.fake.latest_card(CHANNEL, rotation.ts)
    assert [] == [line for line in summary if line not in final.text]
    on_card = [  # the card carries the same facts as Block Kit fields
        f"*Key*\nold {old_fp[:8]}… → new {new_fp[:8]}…",
        f"*Re-encrypted*\n{total} values",
        f"*Verification*\n{total}/{total} open with the new key · panel check 200 OK",
        f"Request `{rotation.request_id}`",
    ]
    assert [] == [line for line in on_card if line not in card.all_text()]
    assert ":white_check_mark: Verified in " in card.all_text() and not has_buttons(card)
    assert [] == sandbox.php_check_all()
    assert (200, new_fp) == (sandbox.health()[0], sandbox.health()[1]["key_fingerprint"])
    assert {} == leaks(rotation, sshd, caplog, secret_registry)


def test_a_failed_panel_check_after_the_switch_rolls_back_to_the_old_key(
    request_rotation: Callable[..., Rotation],
    sshd: SSHServer,
    caplog: pytest.LogCaptureFixture,
    secret_registry: SecretRegistry,
    tmp_path: Path,
) -> None:
    """The panel check fails once, after the new key is in place: the engine rolls back by
    itself; the thread shows the failed check and the rollback, the card says "rolled back",
    .env holds the old key again and PHP decrypts every value under it."""
    rotation = request_rotation(verify_command=failing_once(tmp_path))

    approve_as_alice_then_bob(rotation)
    final = rotation.bot.fake.wait_text("chat.postMessage", "Rolled back.", timeout=180)
    secret_registry.register_key(rotation.escrowed_key(), "discarded PANEL_ENCRYPTION_KEY")

    sandbox = rotation.sandbox
    assert [
        *STEPS[:7],
        "✖ verification failed: panel check failed (exit 1): panel shows blank credentials",
        "↩ rolled back",
        "✔ old key verified",
    ] == rotation.steps()
    assert final.text.startswith(
        ":rotating_light: Rolled back. The panel is as it was. Next: look at the panel's error log"
    )
    assert ":rotating_light: Failed, rolled back, old key verified" in rotation.card()
    assert (rotation.old_key, "failed") == (sandbox.env_key(), rotation.bot.state(rotation.request_id))
    assert rotation.escrowed_key() != rotation.old_key
    assert [] == sandbox.php_check_all(rotation.old_key)
    assert (200, fingerprint(rotation.old_key)) == (
        sandbox.health()[0],
        sandbox.health()[1]["key_fingerprint"],
    )
    assert {} == leaks(rotation, sshd, caplog, secret_registry)
