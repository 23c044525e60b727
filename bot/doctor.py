"""``python -m bot doctor``: is this installation ready to rotate?

Checks, each with what to fix when it fails:

* Slack: the bot token works (``auth.test``) and the bot is in each rotations channel;
* step-up (``step_up = "totp"``): the enrollment key loads and opens every TOTP secret in
  the store (a rotated or wrong ``ROTATOR_ENROLLMENT_KEY`` leaves approvers unable to
  approve: this says so, and whose);
* every panel: the engine answers over SSH (or as a local subprocess) with the pinned
  host key, its version, and its read-only ``probe`` (layout, counts per column, missing
  tables, whether the agent tables match the profile).

It changes nothing anywhere. Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bot.engine_client import EngineClient
from bot.errors import BotError, EngineClientError, ProtocolMismatchError
from engine.protocol import PROTOCOL_VERSION, Request
from engine.protocol.codes import CODES, Code


@dataclass(frozen=True)
class Check:
    subject: str
    ok: bool
    finding: str
    fix: str = ""


def _slack_checks(settings: Any, web_client: Any) -> Iterator[Check]:
    from slack_sdk.errors import SlackApiError

    try:
        auth = web_client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "error") if exc.response is not None else "error"
        yield Check("slack token", False, f"auth.test refused: {error}",
                    "check SLACK_BOT_TOKEN (a bot token, xoxb-…) and that the app is installed")
        return
    except Exception as exc:  # network: URLError, OSError and friends
        yield Check("slack token", False, f"Slack did not answer ({type(exc).__name__})",
                    "check the network path to Slack and SLACK_API_URL")
        return
    yield Check("slack token", True, f"bot {auth.get('user', '?')} in team {auth.get('team', '?')}")
    for channel in settings.config.channels:
        try:
            info = web_client.conversations_info(channel=channel)
        except SlackApiError as exc:
            error = exc.response.get("error", "error") if exc.response is not None else "error"
            yield Check(f"channel {channel}", False, f"conversations.info: {error}",
                        "check the channel id in ROTATOR_CONFIG and the channels:read scope")
            continue
        member = bool(info.get("channel", {}).get("is_member"))
        yield Check(
            f"channel {channel}",
            member,
            "the bot is a member" if member else "the bot is not in this channel",
            "" if member else "invite it: /invite @rotator",
        )


class _EngineStderr(logging.Handler):
    """What the engine (or whatever ran instead) wrote on stderr, already redacted by the client."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # the client logs "<source>: <line>"
        self.lines.append(record.getMessage().split(": ", 1)[-1])


@contextlib.contextmanager
def _stderr_of_engines() -> Iterator[_EngineStderr]:
    logger = logging.getLogger("bot.engine_stderr")
    handler, level = _EngineStderr(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _probe(client: EngineClient) -> dict[str, Any]:
    request = Request(v=PROTOCOL_VERSION, id="doctor", op="probe")
    closing: dict[str, Any] = {}
    for event in client.run(request):
        if event.get("type") in ("result", "error"):
            closing = event
    return closing


def _panel_checks(name: str, client: EngineClient) -> Iterator[Check]:
    subject = f"panel {name}"
    panel = getattr(client, "panel", None)
    user = getattr(panel, "user", None) or "rotator"
    try:
        with _stderr_of_engines() as stderr:
            result = _probe(client)
    except ProtocolMismatchError as exc:
        yield _not_the_engine(subject, exc, user)
        return
    except EngineClientError as exc:
        said = [line for line in stderr.lines if line.strip()]
        if exc.code == "engine_crashed" and said and said[-1].startswith("sudo:"):
            yield Check(subject, False, f"{exc} · sudo said {said[-1]!r}",
                        f"the sudoers rule letting {user} run engine-serve as root is missing or "
                        "wrong: re-run deploy/setup-panel-host.sh")  # fmt: skip
        elif said:
            yield Check(subject, False, f"{exc} · last stderr line {said[-1][:200]!r}", _fix_for(exc.code))
        else:
            yield Check(subject, False, _with_cause(exc), _fix_for(exc.code))
        return
    version = getattr(client, "engine_version", None) or result.get("engine_version", "?")
    yield Check(f"{subject} ssh", True, f"engine {version} · host key {client.host_key_fingerprint}")
    if result.get("type") == "error":
        yield Check(f"{subject} probe", False, str(result.get("message")),
                    _fix_for(str(result.get("code", "engine_error"))))
        return
    columns = result.get("columns") or {}
    counts = ", ".join(f"{label} {n:,}" for label, n in columns.items())
    missing = result.get("skipped") or []
    problem = result.get("problem")
    layout = result.get("scheme") or "none"
    finding = f"layout {layout} · {counts or 'no columns'}"
    if missing:
        finding += f" · missing tables: {', '.join(missing)}"
    yield Check(f"{subject} probe", True, finding)
    if problem is not None:
        yield Check(f"{subject} probe", False, str(problem),
                    "fix the panel profile (ciphertext, columns) or the stored values")
    agents = result.get("agents") or {}
    # Agents are checked only when the profile has an [agents] section (an older engine
    # does not say, so it is checked as before): a panel without agents is not a failure.
    if agents.get("checked") and agents.get("configured", True):
        for agent_problem in agents.get("problems") or []:  # one problem per line
            yield Check(f"{subject} agents", False, str(agent_problem), "fix [agents] in the panel profile")


LOGIN_SHELL_REFUSAL = "This account is currently not available."


def _not_the_engine(subject: str, exc: ProtocolMismatchError, user: str) -> Check:
    """The SSH login worked but something other than the engine answered first.

    sshd runs the forced command through the user's login shell: ``nologin``
    answers with its refusal; a profile script or a banner prints its own line.
    Neither is the engine's version, so say what did answer.
    """
    line = exc.first_line
    if line is None:
        return Check(subject, False, str(exc), _fix_for(exc.code))
    if line == LOGIN_SHELL_REFUSAL:
        return Check(
            subject,
            False,
            f"the panel host's SSH user has no login shell: it answered {line!r}",
            f"give that user a shell: `usermod --shell /bin/sh {user}` on the panel host (sshd "
            "runs the forced command through it), or re-run deploy/setup-panel-host.sh",
        )
    return Check(
        subject,
        False,
        f"something other than the engine answered first: {line!r}",
        f"the forced command in ~{user}/.ssh/authorized_keys must start engine-serve and "
        "nothing may print before it (login shell profile, ForceCommand, a banner on stdout); "
        "re-run deploy/setup-panel-host.sh",
    )


def _fix(code: Code) -> str:
    """A code's advice from the protocol's table; its last step, for doctor, is doctor again."""
    return f"{code.advice}, then run doctor again" if code.then else code.advice


#: The fix for each code doctor may meet: the engine's refusals and the transport's failures.
_FIXES = {name: _fix(code) for name, code in CODES.items()}


def _fix_for(code: str) -> str:
    return _FIXES.get(
        code,
        f"the engine refused with code {code}: run `sudo myosicam-rotator probe` on the "
        "panel host to read its error in full",
    )


def _with_cause(exc: BaseException) -> str:
    """The error and, when another error caused it, that cause (``cannot start the engine
    (FileNotFoundError: …)``), rather than leaving it to the log."""
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def enrollment_checks(settings: Any, environ: Mapping[str, str] | None = None) -> Iterator[Check]:
    """Step-up: does the enrollment key load, and does it open every stored TOTP secret?"""
    if not settings.step_up_anywhere:
        return
    from bot.enrollment_key import load_enrollment_key
    from bot.store import Store, open_backend
    from bot.store.migrations import latest

    try:
        key = load_enrollment_key(environ)
    except BotError as exc:
        yield Check("enrollment key", False, str(exc), "set ROTATOR_ENROLLMENT_KEY_FILE")
        return
    url = settings.store_url
    if url.startswith("sqlite://") and not Path("/" + url[len("sqlite://"):].lstrip("/")).exists():
        yield Check("enrollment key", True, f"key {key.fingerprint}; no store yet, so no enrollment")
        return
    try:
        # read-only: doctor never migrates the store (the bot does, when it starts)
        store = Store(open_backend(url))
        try:
            version = _schema_version(store)
            if version < latest():
                yield Check("enrollment key", True,
                            f"key {key.fingerprint}; the store is at schema version {version} of "
                            f"{latest()}, so its enrollments are checked once the bot has started "
                            "(it migrates the store)")
                return
            enrollments = store.enrollments()
        finally:
            store.close()
    except BotError as exc:
        yield Check("enrollment key", False, f"could not read the enrollments: {exc}",
                    "check `store` in ROTATOR_CONFIG")
        return
    closed = []
    for enrollment in enrollments:
        try:
            key.open(enrollment.sealed_secret, enrollment.user_id)
        except BotError:
            closed.append(enrollment.user_id)
    if not closed:
        yield Check("enrollment key", True,
                    f"key {key.fingerprint} opens all {len(enrollments)} stored TOTP secret(s)")
        return
    yield Check(
        "enrollment key",
        False,
        f"key {key.fingerprint} does not open the TOTP secrets of {', '.join(closed)} "
        f"({len(closed)} of {len(enrollments)}): ROTATOR_ENROLLMENT_KEY (or _FILE) was changed "
        "or is wrong, so these approvers can't approve with step-up",
        "restore the key they were sealed with, or have an enroll admin reset each "
        "(`/rotate-enroll reset @user`) so they enroll again",
    )


def _schema_version(store: Any) -> int:
    """The store's schema version, 0 for a store from before versioned migrations."""
    try:
        return int(store.schema_version())
    except BotError:  # no schema_migrations table yet
        return 0


def run_checks(
    settings: Any, web_client: Any, clients: Callable[[str], EngineClient], panels: list[str]
) -> list[Check]:
    checks = list(_slack_checks(settings, web_client))
    for name in panels:
        try:
            client = clients(name)
        except BotError as exc:
            checks.append(Check(f"panel {name}", False, _with_cause(exc), "fix [panels] in ROTATOR_CONFIG"))
            continue
        checks.extend(_panel_checks(name, client))
    return checks


def render(checks: list[Check], out: TextIO) -> None:
    width = max((len(c.subject) for c in checks), default=10)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        out.write(f"{mark}  {check.subject.ljust(width)}  {check.finding}\n")
        if not check.ok and check.fix:
            out.write(f"      {' ' * width}  → {check.fix}\n")
    failed = sum(not c.ok for c in checks)
    out.write(f"\n{len(checks) - failed} passed, {failed} failed\n" if checks else "nothing to check\n")


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panel", action="append", help="check only this panel (repeatable)")
    args = parser.parse_args(argv)
    from slack_sdk import WebClient

    from bot.app import default_engine_clients
    from bot.settings import load_settings

    try:
        settings = load_settings()
    except BotError as exc:
        out.write(f"FAIL  settings  {exc}\n")
        return 1
    web_client = WebClient(token=settings.bot_token, base_url=settings.api_url, timeout=10)
    known = list(settings.config.panels.panels) + list(settings.config.local_panels)
    panels = args.panel or known
    checks = run_checks(settings, web_client, default_engine_clients(settings), panels)
    checks.extend(enrollment_checks(settings))
    render(checks, out)
    return 0 if all(c.ok for c in checks) else 1
