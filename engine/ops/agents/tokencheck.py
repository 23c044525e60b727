"""Is the old agent token dead? Evidence only with a positive control.

A refusal alone proves nothing: a panel that signs heartbeats another way, or
whose URL is not the one configured, refuses every request, old token or new.
So the same question is asked twice, first with the new token, which the panel
must accept, then with the old one, which it must refuse:

==================  ==================  ======================================
new token           old token           outcome
==================  ==================  ======================================
accepted            refused             the old token is dead (proven)
accepted            accepted            failed: the panel still takes the old one
not accepted        (not asked)         could not verify (``AgentUnverifiedError``)
accepted            cannot tell         could not verify
==================  ==================  ======================================

Two ways to ask, chosen by ``old_token_check``: ``heartbeat`` (a heartbeat in
the reference panel's scheme, engine.ops.agents.signing) and ``command`` (the
profile's ``old_token_check_command``, the token on its stdin: exit 0 the panel
accepts it, 1 it refuses it, anything else it cannot tell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.errors import AgentError, AgentUnverifiedError
from engine.ops.agents import commands
from engine.ops.agents.rows import AgentRow
from engine.profile import AgentSettings

Verdict = Literal["accepted", "refused", "unknown"]


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    detail: str


def ask_command(settings: AgentSettings, agent: AgentRow, token: str) -> Answer:
    assert settings.old_token_check_command
    argv = settings.old_token_check_command
    env = {"ROTATOR_AGENT_ID": str(agent.id), "ROTATOR_AGENT_NAME": agent.name, "ROTATOR_PANEL_URL": settings.panel_url}
    try:
        done = commands.run("the old token check command", argv, stdin=token + "\n", env=env,
                            secrets_=[token], timeout_s=settings.check_timeout_s)
    except AgentError as exc:
        return Answer("unknown", exc.message)
    said = f": {done.said}" if done.said else ""
    verdict: Verdict = {0: "accepted", 1: "refused"}.get(done.status, "unknown")  # type: ignore[assignment]
    return Answer(verdict, f"the check command exited {done.status}{said}")


def ask(settings: AgentSettings, agent: AgentRow, token: str) -> Answer:
    from engine.ops.agents import signing

    if settings.old_token_check == "command":
        return ask_command(settings, agent, token)
    return signing.ask(settings.check_url, agent.id, token, settings.check_timeout_s)


def old_token_dead(settings: AgentSettings, agent: AgentRow, old: str, new: str) -> str:
    """The evidence that the panel refuses ``old`` (a detail line), or raise."""
    control = ask(settings, agent, new)
    if control.verdict != "accepted":
        raise AgentUnverifiedError(
            "could not verify: the check with the new token was not accepted either "
            f"({control.detail}), so a refusal of the old one would prove nothing"
        )
    answer = ask(settings, agent, old)
    if answer.verdict == "accepted":
        raise AgentError(f"the panel still accepts the old token ({answer.detail})")
    if answer.verdict == "unknown":
        raise AgentUnverifiedError(f"could not verify: the check with the old token could not tell ({answer.detail})")
    return f"the panel refuses it ({answer.detail}) and accepts the new one"
