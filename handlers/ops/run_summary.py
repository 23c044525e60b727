"""The closing summary of a key or agent rotation: one engine run and its result's facts.

``handlers.ops.key`` and ``handlers.ops.agents`` share it: a done run's facts (the key's
fingerprints, the values re-encrypted, the verification; or each agent's outcome), a
failed run's headline and the one thing to do next (``messages.next_step``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from handlers import blocks
from handlers import messages as m
from handlers.ending import AgentResult, Ending
from handlers.rotation_request import RotationRequest, State


def summary_blocks(request: RotationRequest, *, on_card: bool = False) -> list[dict[str, Any]]:
    """The closing summary as Block Kit: the outcome and, for a failure, the next step;
    then the facts as fields; then the rotation id and its audit anchor."""
    ending = Ending.of(request.outcome)
    approvers = [a.approver_label for a in request.approvals if a.person]
    head, next_step, facts, details = summary_parts(
        panel=request.panel,
        done=request.state == State.DONE,
        outcome=ending,
    )
    next_line = f"*Next:* {next_step}" if next_step else ""
    if on_card:  # the card's own lines say who, why and how it ended; it adds what to do
        out = blocks._sections(next_line, most=2) if next_line else []
        out += blocks._fields(facts)
    else:
        people = [
            ("Requested by", request.requester.mention),
            ("Approved by", m.people(approvers)),
            ("Reason", m.quote(request.reason)),
        ]
        out = [*blocks._sections("\n".join(filter(None, [head, next_line])), most=2)]
        out += blocks._fields([*facts, *people])
    if details:
        out += blocks._sections(details, most=3)
    took = m.duration(ending.duration_ms)
    parts = [] if on_card else [f"Rotation `{m.esc(request.id)}`, plan `{request.plan.short_hash}`"]
    parts += [took] if took else []
    anchor = m.audit_anchor(ending).removeprefix(" · ")
    parts += [anchor] if anchor else []
    if parts:
        out.append(blocks._context(" · ".join(parts)))
    return out


def summary_text(request: RotationRequest) -> str:
    """The closing summary as text (the card's and the thread reply's fallback)."""
    approvers = [a.approver_label for a in request.approvals if a.person]
    if request.state == State.DONE:
        return final_done(
            request_id=request.id,
            requester=request.requester.mention,
            approvers=approvers,
            reason=request.reason,
            outcome=request.outcome,
        )
    return final_failed(
        request_id=request.id,
        panel=request.panel,
        requester=request.requester.mention,
        approvers=approvers,
        reason=request.reason,
        outcome=request.outcome,
    )


def final_done(
    *,
    request_id: str,
    requester: str,
    approvers: Sequence[str],
    reason: str,
    outcome: Ending | Mapping[str, Any],
) -> str:
    ending = Ending.read(outcome)
    lines = [
        f":white_check_mark: Done · requested by {requester} · approved by {m.people(approvers)}"
        f" · reason {m.quote(reason)}"
    ]
    if ending.agents:
        lines.append(f"   agents: {agent_outcomes(ending.agents)}")
        lines.append(f"   {m.esc(ending.message or '')}".rstrip())
        lines.append(
            f"   {m.duration(ending.duration_ms) or '?'} · rotation {m.esc(request_id)}"
            f"{m.audit_anchor(ending)}"
        )
        return "\n".join(line for line in lines if line.strip())
    lines.append(
        f"   old key {m.short_fp(ending.old_fingerprint)} → new key "
        f"{m.short_fp(ending.new_fingerprint)}"
    )
    columns = ending.columns
    if columns:
        lines.append(
            f"   re-encrypted {m.plural(ending.total or sum(columns.values()), 'value')}: "
            f"{m.column_counts(columns)}"
        )
    if ending.skipped:
        lines.append(f"   tables not present, skipped: {m.esc(', '.join(ending.skipped))}")
    lines.append(f"   verification: {verification(ending)}")
    if ending.escrow:
        lines.append(f"   new key {m.esc(ending.escrow)}")
    lines.append(
        f"   {m.duration(ending.duration_ms) or '?'} · rotation {m.esc(request_id)}"
        f"{m.audit_anchor(ending)}"
    )
    return "\n".join(lines)


def _failure_head(ending: Ending, panel: str) -> tuple[str, str, str]:
    """(icon, what happened, next step) of a failed request's summary."""
    rolled_back = ending.rolled_back
    step = m.next_step(ending.code or "", panel, rolled_back, ending.nothing_changed, ending)
    if ending.partial and ending.code == "agent_unverified":
        return ":grey_question:", "Finished, but could not verify every agent.", m.NEXT_STEPS["agent_unverified"]
    if ending.partial:
        return ":warning:", "Finished with failures.", m.NEXT_STEPS["agent_failed"]
    if rolled_back is True:
        return ":rotating_light:", "Rolled back. The panel is as it was.", step
    if ending.nothing_changed:
        return ":no_entry_sign:", "Failed before any change. Nothing was changed.", step
    if rolled_back is False:
        return ":sos:", "Failed and NOT rolled back.", step
    return ":sos:", "Outcome unknown: the bot lost track of the engine.", step


def summary_parts(
    *, panel: str, done: bool, outcome: Ending | Mapping[str, Any]
) -> tuple[str, str, list[tuple[str, str]], str]:
    """The closing summary in four parts for Block Kit: the headline, the next step (after
    a failure), the facts as (label, value) fields, and longer details (columns, agents)."""
    ending = Ending.read(outcome)
    next_text = ""
    facts: list[tuple[str, str]] = []
    details: list[str] = []
    agents = ending.agents
    if done:
        took = m.duration(ending.duration_ms)
        head = ":white_check_mark: *Done.* " + (f"Verified in {took}." if took else "Verified.")
        if agents:
            head += f" {m.esc(ending.message or '')}".rstrip()
    else:
        icon, what, step = _failure_head(ending, panel)
        head = f"{icon} *{what}*"
        next_text = step
        facts.append(("What failed", m.esc(_what_failed(ending))))
    if agents:
        details.append(f"*Agents:* {agent_outcomes(agents)}")
    elif done:
        facts.append(
            (
                "Key",
                f"old {m.short_fp(ending.old_fingerprint)} → "
                f"new {m.short_fp(ending.new_fingerprint)}",
            )
        )
        columns = ending.columns
        total = ending.total or sum(columns.values())
        if columns or total:
            facts.append(("Re-encrypted", m.plural(int(total), "value")))
        facts.append(("Verification", verification(ending)))
        if columns:
            details.append(f"*Columns:* {m.column_counts(columns)}")
        if ending.skipped:
            details.append(f"*Tables not present, skipped:* {m.esc(', '.join(ending.skipped))}")
    if not done and (ending.old_fingerprint or ending.new_fingerprint):
        facts.append(
            (
                "Key in use",
                f"{m.short_fp(ending.old_fingerprint)} (old)"
                + (" · new key discarded" if ending.rolled_back else ""),
            )
        )
    return head, next_text, facts, "\n".join(details)


def _what_failed(ending: Ending) -> str:
    return "unknown error" if ending.message is None else ending.message


def final_failed(
    *,
    request_id: str,
    panel: str,
    requester: str,
    approvers: Sequence[str],
    reason: str,
    outcome: Ending | Mapping[str, Any],
) -> str:
    ending = Ending.read(outcome)
    icon, what, step = _failure_head(ending, panel)
    lines = [f"{icon} {what} Next: {step}", f"   what failed: {m.esc(_what_failed(ending))}"]
    if ending.agents:
        lines.append(f"   agents: {agent_outcomes(ending.agents)}")
    if ending.old_fingerprint or ending.new_fingerprint:
        lines.append(
            f"   key in use: {m.short_fp(ending.old_fingerprint)} (old)"
            + (" · new key discarded" if ending.rolled_back else "")
        )
    lines.append(
        f"   requested by {requester} · approved by {m.people(approvers)} · reason {m.quote(reason)}"
    )
    took = m.duration(ending.duration_ms)
    lines.append(
        f"   {took + ' · ' if took else ''}rotation {m.esc(request_id)}{m.audit_anchor(ending)}"
    )
    return "\n".join(lines)


def verification(outcome: Ending | Mapping[str, Any]) -> str:
    ending = Ending.read(outcome)
    verified, total = ending.verified, ending.total
    parts = []
    if verified is True:
        parts.append(f"{m.count(total)}/{m.count(total)} open with the new key" if total else "passed")
    elif isinstance(verified, int | float):
        parts.append(f"{m.count(verified)}/{m.count(total or verified)} open with the new key")
    elif verified in (False, None):
        parts.append("NOT verified" if verified is False else "not reported")
    else:
        parts.append(m.esc(verified))
    if ending.panel_check:
        parts.append(f"panel check {m.esc(ending.panel_check)}")
    return " · ".join(parts)


def agent_outcomes(agents: Sequence[Any]) -> str:
    """``agent-7 rotated (new token proven by re-registration, old token refused); agent-9
    failed at bootstrap: …``."""
    out = []
    for item in agents:
        if not isinstance(item, dict):
            out.append(m.esc(item))
            continue
        agent = AgentResult(item)
        text = f"{m.esc(agent.name)} {m.esc(agent.outcome)}"
        if not agent.ok and (agent.failed_step or agent.error):
            text += f" at {m.esc(agent.failed_step or '?')}: {m.esc(agent.error or 'error')}"
        new, old = agent.new_token, agent.old_token
        if new and new != "none":  # the engine says what it proved of each token
            text += f" (new token {m.esc(new)}" + (f", old token {m.esc(old)})" if old != "not checked" else ")")
        elif agent.old_token_valid is False:
            text += " (old token refused)"
        elif agent.old_token_valid is True:
            text += " (old token still valid)"
        out.append(text)
    return "; ".join(out)
