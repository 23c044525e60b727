"""The demo's script: a request, a refused self-approval, an approval, a rotation, a check.

Everything it starts is undone by ``Cleanup``, whatever happens: the bot and
the local Slack stop, any engine it ran is ended, the panel stops, the
database and its login are dropped and the sandbox folder goes. A second
Ctrl-C (or a SIGTERM) during the clean-up does not cut it short.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pymysql

from bot.demo import render
from bot.demo.rehearsal import ALICE, BOB, NAMES, Rehearsal
from bot.demo.sandbox import DemoPanel
from bot.errors import DemoUnavailableError
from bot.fakes.panel.database import admin_connect
from handlers.rotation_request import RotationRequest, State

WIDTH = 78
PANEL = "demo"


class Narrator:
    """Prints the story: headings, people's actions, Slack messages as Slack shows them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def heading(self, text: str) -> None:
        self.say()
        self.say(f"── {text} " + "─" * max(3, WIDTH - len(text) - 4))

    def slack(self, text: str, indent: str = "   ") -> None:
        for line in render.plain(text, NAMES).splitlines():
            self.say(indent + line)

    def message(self, lines: list[str]) -> None:
        """A Slack message in a box, as it sits in the channel."""
        self.say("   ┌" + "─" * (WIDTH - 4))
        for line in lines:
            self.say("   │ " + line)
        self.say("   └" + "─" * (WIDTH - 4))


class Cleanup:
    """Undo steps, run last-in first-out; each is reported, none stops the others."""

    def __init__(self, narrator: Narrator) -> None:
        self.narrator = narrator
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, done: str, step: Callable[[], None]) -> None:
        self._steps.append((done, step))

    def run(self) -> bool:
        if not self._steps:
            return True
        self.narrator.heading("Cleaning up")
        ok = True
        with signals_handled(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM), _quiet_logs():
            while self._steps:
                done, step = self._steps.pop()
                try:
                    step()
                except Exception as exc:  # report, then go on with the rest
                    ok = False
                    self.narrator.say(f"   ✖ {done}: failed ({type(exc).__name__}: {exc})")
                else:
                    self.narrator.say(f"   ✔ {done}")
        return ok


@contextlib.contextmanager
def signals_handled(handler: Any, *signums: int) -> Iterator[None]:
    """``handler`` for ``signums`` meanwhile, where signals can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, former in previous.items():
            signal.signal(signum, former)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Threads stopped halfway say so in warnings; while cleaning up, only errors count."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def check_prerequisites() -> None:
    """PHP with pdo_mysql and the MariaDB server on 127.0.0.1:3306, or say how to get them."""
    php = shutil.which("php")
    if php is None:
        raise DemoUnavailableError(
            "php is not installed: `./run.sh` installs it (apt-get install php-cli php-mysql)"
        )
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, check=False).stdout
    if "pdo_mysql" not in modules.lower():
        raise DemoUnavailableError(
            "PHP lacks pdo_mysql: `./run.sh` installs it (apt-get install php-mysql)"
        )
    try:
        admin_connect().close()
    except pymysql.Error as exc:
        raise DemoUnavailableError(
            "MariaDB does not answer on 127.0.0.1:3306 as root without a password "
            f"({exc.args[-1] if exc.args else exc}); `./run.sh` starts it"
        ) from exc


def _health_line(answer: tuple[int, dict[str, Any]]) -> str:
    status, body = answer
    if status != 200:
        return f"{status or 'no answer'} · {body.get('error') or body.get('failed', '?')} failing"
    return (
        f"200 OK · {body.get('decrypted')}/{body.get('total')} credentials decrypt · "
        f"key {str(body.get('key_fingerprint'))[:8]}…"
    )


#: What each scenario shows, for ``--help`` and the opening line.
SCENARIOS: dict[str, str] = {
    "rotate": "a key rotation from request to verified end",
    "deny": "a request that a second operator denies: nothing runs, the card says who and why",
    "rollback": "a rotation whose panel check fails after the switch: the engine rolls back by itself",
}
DENIAL = "wrong panel: this is the rehearsal of a denial"


def play(reason: str, narrator: Narrator, cleanup: Cleanup, scenario: str = "rotate") -> bool:
    """The whole rehearsal of ``scenario``; True when it ended as that scenario promises."""
    say = narrator.say
    say(f"MyOsicam Rotator · local rehearsal: {SCENARIOS[scenario]},")
    say("with the real bot and engine, a sandbox panel, and Slack played on this machine.")
    check_prerequisites()

    narrator.heading("A sandbox panel")
    root = Path(tempfile.mkdtemp(prefix="myosicam-demo-"))
    cleanup.add("sandbox folder removed", lambda: shutil.rmtree(root, ignore_errors=True))
    panel = DemoPanel.build(root / "sandbox", check_fails_under_new_key=scenario == "rollback")
    cleanup.add(
        f"panel stopped, database {panel.db.name} and its login dropped", panel.close
    )
    before = panel.server.health()
    fingerprint_before = panel.key_fingerprint()
    say(f"   database  {panel.db.name} on 127.0.0.1:3306, with its own login")
    say(f"   panel     PHP reference panel at {panel.server.url} (php -S)")
    say(f"   .env      {panel.env_path} · key {fingerprint_before[:8]}…")
    say(f"   saved     {panel.credentials} credentials, each encrypted by the panel as a user saved it")
    say(f"   /health   {_health_line(before)}")
    if scenario == "rollback":
        say("   check     the panel's own check fails under any key but this one (simulated breakage)")

    narrator.heading("The bot")
    local = {"profile": str(panel.profile_path), "host": f"localhost (panel {PANEL})"}
    bot = Rehearsal(root, {"local_panels": {PANEL: local}})
    cleanup.add("bot and local Slack stopped", bot.close)
    bot.start()
    say(f"   the real Slack app at {bot.events_url}, requests signed as Slack signs them")
    say("   Slack's Web API played locally: every message below is what Slack received")
    say("   people: @alice (requests; @secops, @oncall) and @bob (@oncall approves)")

    narrator.heading("The request")
    text = f"{PANEL} {reason}"
    say(f"@alice in #rotations › /rotate-key {text}")
    bot.command(ALICE, "/rotate-key", text)
    narrator.slack("(only @alice sees) " + bot.ephemeral(ALICE, "Asking the engine").text)
    request = bot.posted_request()
    say("The bot posts the request card in #rotations:")
    narrator.message(render.card(bot.first_card(request), NAMES))

    narrator.heading("The decision" if scenario == "deny" else "The approvals")
    say("@alice clicks [ Approve ] on her own request")
    bot.approve(ALICE, request)
    narrator.slack("(only @alice sees) " + bot.ephemeral(ALICE, "someone else").text)
    if scenario == "deny":
        say(f"@bob clicks [ Deny ], and answers the modal's question why: “{DENIAL}”")
        bot.deny(BOB, request, DENIAL)
    else:
        say("@bob clicks [ Approve ]: the engine starts; the thread follows it step by step")
        bot.approve(BOB, request)
    final = bot.finished(request.id)

    narrator.heading("The card in #rotations, at the end")
    narrator.message(render.card(bot.card(final), NAMES))
    narrator.heading("The thread under the card (a line per step, then the summary)")
    for reply in bot.thread_calls(final):
        if render.has_fields(reply.params):  # the closing summary: Block Kit with fields
            narrator.message(render.card(reply.params, NAMES))
        else:
            say("   " + render.one_line(reply.text, NAMES))
    for notice in bot.direct_messages(ALICE):
        narrator.slack("(direct message to @alice) " + notice)

    if scenario == "rotate":
        return _verify(narrator, panel, final, before, fingerprint_before)
    return _verify_unchanged(narrator, panel, final, before, fingerprint_before, scenario)


def _before_and_after(
    narrator: Narrator, panel: DemoPanel, before: tuple[int, dict[str, Any]], fingerprint_before: str
) -> tuple[int, dict[str, Any], str]:
    """Print the panel's /health before and after and the key's fingerprints; (status, body, key now)."""
    narrator.heading("Verification")
    after = panel.server.health()
    fingerprint_after = panel.key_fingerprint()
    narrator.say(f"   panel /health before  {_health_line(before)}")
    narrator.say(f"   panel /health after   {_health_line(after)}")
    narrator.say(f"   .env key              {fingerprint_before[:8]}… → {fingerprint_after[:8]}…")
    status, body = after
    return status, body, fingerprint_after


def _verify_unchanged(
    narrator: Narrator,
    panel: DemoPanel,
    final: RotationRequest,
    before: tuple[int, dict[str, Any]],
    fingerprint_before: str,
    scenario: str,
) -> bool:
    """After a denial or a rollback: the panel is as it was, and the request says why."""
    status, body, fingerprint_after = _before_and_after(narrator, panel, before, fingerprint_before)
    expected = State.DENIED if scenario == "deny" else State.FAILED
    checks = {
        f"the request ended {expected.value}": final.state == expected,
        "the key in .env is the one it had": fingerprint_after == fingerprint_before,
        "the panel runs with the key in .env": body.get("key_fingerprint") == fingerprint_after,
        f"the panel decrypts all {panel.credentials} credentials": status == 200
        and body.get("decrypted") == body.get("total") == panel.credentials,
    }
    if scenario == "rollback":
        checks["the engine says it rolled back"] = final.outcome.get("rolled_back") is True
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        narrator.say("   ✖ NOT verified: " + "; ".join(f"not {name}" for name in failed))
        return False
    what = "nothing ran" if scenario == "deny" else "the engine rolled back by itself"
    narrator.say(
        f"   ✔ verified: {what}; the panel decrypts {panel.credentials}/{panel.credentials} "
        "credentials under the key it had, as the thread says"
    )
    return True


def _verify(
    narrator: Narrator,
    panel: DemoPanel,
    final: RotationRequest,
    before: tuple[int, dict[str, Any]],
    fingerprint_before: str,
) -> bool:
    """The panel's own word, before and after, and the key on disk."""
    status, body, fingerprint_after = _before_and_after(narrator, panel, before, fingerprint_before)
    checks = {
        "the rotation ended done": final.state == State.DONE,
        "the key in .env changed": fingerprint_after != fingerprint_before,
        "the panel runs with the key in .env": body.get("key_fingerprint") == fingerprint_after,
        f"the panel decrypts all {panel.credentials} credentials": status == 200
        and body.get("decrypted") == body.get("total") == panel.credentials,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        narrator.say("   ✖ NOT verified: " + "; ".join(f"not {name}" for name in failed))
        return False
    narrator.say(
        f"   ✔ verified: the panel decrypts {panel.credentials}/{panel.credentials} credentials "
        "under the new key, as the thread says"
    )
    return True
