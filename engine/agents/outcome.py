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
    resumed_from     the rotation id whose journal this run resumed, else None
    duration_ms

The run's result (the closing ``result`` event, ``op = "rotate-agent"``):
``rotation_id, ok, dry_run, panel, agents, total, rotated, unverified, failed,
message, duration_ms, engine_version``, plus ``code`` when ``ok`` is False:
``agent_failed`` when an agent failed, else ``agent_unverified`` (some could not
be verified; the CLI exits 4 then, 1 for a failure). ``ok`` is False as soon as
one agent is not proven rotated; the others are reported as they ended.
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unknown_agent(name: str, valid: bool = True) -> AgentOutcome:
    error = f"no agent named {name} on this panel" if valid else "not a valid agent name (see agent_name_pattern)"
    return AgentOutcome(name, failed_step="preflight", error=error)


def summary(outcomes: list[AgentOutcome], dry_run: bool) -> str:
    good = sum(1 for o in outcomes if o.ok)
    text = f"{good} of {len(outcomes)} agents {'ready' if dry_run else 'rotated'}"
    unverified = [o for o in outcomes if o.outcome == "unverified"]
    if unverified:
        text += f", {len(unverified)} could not be verified"
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
        "message": summary(outcomes, dry_run),
        "duration_ms": duration_ms,
        "engine_version": __version__,
    }
    if not ok:
        failed = any(not o.ok and o.outcome != "unverified" for o in outcomes)
        data["code"] = AgentError.code if failed else AgentUnverifiedError.code
    return data
