"""What ``rotate-agent`` reports: one entry per agent, and the run's closing result.

Per agent (``result["agents"][i]``, in the order asked, or by id for ``--all``)::

    name             the agent's name
    id               its id in the panel (None for a name the panel does not know)
    server           "<server name> (<user>@<host>:<port>)", None if never resolved
    ok               True when rotated (or, in a dry run, ready)
    outcome          "rotated" | "unverified" | "failed" | "ready" (dry run). "unverified":
                     the agent works with its new token, but whether the panel still
                     takes the old one could not be told; ``error`` says why ("could not
                     verify: ...") and ``failed_step`` is the check that could not tell
    state            the last state reached: DONE, or where it stopped
                     (PREFLIGHT, TOKEN_ISSUED, BOOTSTRAPPED, REREGISTERED, OLD_REVOKED)
    failed_step      the AGENT_STEPS name that failed, else None
    error            the failure's message (no secret in it), else None
    old_fingerprint  first 16 hex of SHA-256 of the old token (None: it had none)
    new_fingerprint  the same for the new token, once the agent re-registered
    install_token    "used" | "revoked" | "expired" | "absent" | "not revocable"
                     | "revoke failed" | "not issued"
    old_token_valid  on failure: whether the agent's row still holds its old token; else None
    new_token        what is proven of the new token: "proven by re-registration" (the agent
                     works with it), "issued, not proven" (the panel holds one, the agent was
                     not seen working with it) or "none"
    old_token        what is proven of the old one: "refused", "could not verify", "still
                     valid", or "not checked" (the run stopped before the check)
    resumed_from     the rotation id whose journal this run resumed, else None
    duration_ms

The run's result (the closing ``result`` event, ``op = "rotate-agent"``):
``rotation_id, ok, dry_run, panel, agents, total, rotated, unverified, failed,
new_token_proven, old_token_refused, old_token_unverified, message, duration_ms,
engine_version``, plus ``code`` when ``ok`` is False:
``agent_failed`` when an agent failed, else ``agent_unverified`` (some could not
be verified; the CLI exits 4 then, 1 for a failure). ``ok`` is False as soon as
one agent is not proven rotated; the others are reported as they ended. ``message``
counts in the terms of what is proven ("new token proven by re-registration", "old token
refused / could not verify"): a run whose tokens changed never reads "0 rotated".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engine import __version__
from engine.errors import AgentError, AgentUnverifiedError


@dataclass
class AgentOutcome:
    name: str
    id: int | None = None
    server: str | None = None
    ok: bool = False
    outcome: str = "failed"
    state: str = "PREFLIGHT"
    failed_step: str | None = None
    error: str | None = None
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    install_token: str = "not issued"
    old_token_valid: bool | None = None
    resumed_from: str | None = None
    duration_ms: int = 0

    @property
    def new_token(self) -> str:
        if self.state in _NEW_PROVEN:
            return NEW_PROVEN
        return "issued, not proven" if self.new_fingerprint else "none"

    @property
    def old_token(self) -> str:
        if self.state in _OLD_REFUSED:
            return "refused"
        if self.outcome == "unverified":
            return "could not verify"
        return "still valid" if self.old_token_valid else "not checked"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.outcome != "ready":
            data.update(new_token=self.new_token, old_token=self.old_token)
        return data


NEW_PROVEN = "proven by re-registration"
#: The states reached once the agent was proven working with its new token, and once the
#: old one was proven refused.
_NEW_PROVEN = frozenset({"REREGISTERED", "OLD_REVOKED", "DONE"})
_OLD_REFUSED = frozenset({"OLD_REVOKED", "DONE"})


def unknown_agent(name: str, valid: bool = True) -> AgentOutcome:
    error = f"no agent named {name} on this panel" if valid else "not a name the profile's agent_name_pattern accepts"
    return AgentOutcome(name, failed_step="preflight", error=error)


def summary(outcomes: list[AgentOutcome], dry_run: bool) -> str:
    """``4 of 4 agents rotated: …`` when every one is proven; else the counts of what is proven,
    then each agent not proven rotated."""
    total = len(outcomes)
    if dry_run:
        text = f"{sum(1 for o in outcomes if o.ok)} of {total} agents ready"
    elif all(o.ok for o in outcomes):
        text = f"{total} of {total} agents rotated: new token proven by re-registration, old token refused"
    else:
        proven = sum(1 for o in outcomes if o.new_token == NEW_PROVEN)
        refused = sum(1 for o in outcomes if o.old_token == "refused")
        unverified = sum(1 for o in outcomes if o.old_token == "could not verify")
        text = f"{proven} of {total} agents have a new token proven by re-registration"
        olds = [f"refused for {refused}"] if refused else []
        olds += [f"could not verify for {unverified}"] if unverified else []
        text += f"; old token: {', '.join(olds)}" if olds else ""
        failed = sum(1 for o in outcomes if not o.ok and o.outcome != "unverified")
        text += f"; {failed} failed" if failed else ""
    problems = [
        f"{o.name} {'unverified' if o.outcome == 'unverified' else 'failed'} at {o.failed_step}: {o.error}"
        for o in outcomes
        if not o.ok
    ]
    return text + ("; " + "; ".join(problems) if problems else "")


def run_result(
    rotation_id: str, panel: str, outcomes: list[AgentOutcome], *, dry_run: bool, duration_ms: int
) -> dict[str, Any]:
    ok = all(o.ok for o in outcomes)
    data: dict[str, Any] = {
        "rotation_id": rotation_id,
        "ok": ok,
        "dry_run": dry_run,
        "panel": panel,
        "agents": [o.as_dict() for o in outcomes],
        "total": len(outcomes),
        "rotated": sum(1 for o in outcomes if o.outcome == "rotated"),
        "unverified": sum(1 for o in outcomes if o.outcome == "unverified"),
        "failed": sum(1 for o in outcomes if not o.ok and o.outcome != "unverified"),
        "new_token_proven": sum(1 for o in outcomes if not dry_run and o.new_token == NEW_PROVEN),
        "old_token_refused": sum(1 for o in outcomes if not dry_run and o.old_token == "refused"),
        "old_token_unverified": sum(1 for o in outcomes if not dry_run and o.old_token == "could not verify"),
        "message": summary(outcomes, dry_run),
        "duration_ms": duration_ms,
        "engine_version": __version__,
    }
    if not ok:
        failed = any(not o.ok and o.outcome != "unverified" for o in outcomes)
        data["code"] = AgentError.code if failed else AgentUnverifiedError.code
    return data
