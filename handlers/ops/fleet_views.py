"""The fleet in Slack: its card, the one checklist message while it runs, a failed panel's
reply, the closing summary, the per-panel table (CSV) and the checklist for a person.

Builders are pure (data in, dict or text out) and stay within Slack's limits whatever the
number of panels: they summarise, and the whole table goes as a file.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from handlers import blocks
from handlers import messages as m
from handlers.ops.fleet_model import (
    PANEL_ICONS,
    PANEL_WORDS,
    PanelRun,
    count_runs,
    fleet_label,
    members,
    runnable,
)
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest, State

log = logging.getLogger(__name__)

#: lines of panels the checklist and the card show before "… and N more (see the file)"
MAX_PANEL_LINES = 120
MAX_SECTIONS_OF_LINES = 6


# --- the card ----------------------------------------------------------------------------


def headline(request: RotationRequest) -> str:
    fleet = request.plan.fleet
    card = fleet.get("card")
    n = int(card["panels"]) if isinstance(card, dict) else len(runnable(request.plan))
    icon, word = _title(request)
    if fleet.get("kind") == "offboard":
        who = f"<@{m.esc(fleet.get('person'))}>"
        return f"{icon} Offboarding {who} {word}: rotate every panel they could reach ({fleet_label(n)})"
    return f"{icon} Fleet key rotation {word}: {m.esc(fleet.get('selector'))} ({fleet_label(n)})"


def _title(request: RotationRequest) -> tuple[str, str]:
    state, outcome = request.state, request.outcome
    if state == State.PENDING:
        return (":busts_in_silhouette:" if request.plan.fleet.get("kind") == "offboard" else ":key:"), "requested"
    if state == State.FAILED:
        return ":warning:", "finished with failures" if outcome.get("verified") else "failed"
    return {
        State.APPROVED: (":arrow_forward:", "approved"),
        State.RUNNING: (":arrows_counterclockwise:", "running"),
        State.DONE: (":white_check_mark:", "done"),
        State.DENIED: (":no_entry:", "denied"),
        State.EXPIRED: (":hourglass:", "expired"),
        State.CANCELLED: (":x:", "cancelled"),
        State.VOIDED: (":warning:", "voided"),
    }.get(state, (":key:", state.value))


def _parts_line(plan: PlanView) -> str:
    ok = runnable(plan)
    parts = plan.fleet.get("parts") or ["key"]
    db = sum(1 for mem in ok if mem.get("db_password"))
    agents = sum(len(mem.get("agents") or ()) for mem in ok)
    return (
        "key on all"
        + (f"; DB password on {db}" if "db-password" in parts else "; DB password: no")
        + (f"; agents: {m.plural(agents, 'agent')}" if "agents" in parts else "; agents: no")
    )


def plan_lines(plan: PlanView, most: int = MAX_PANEL_LINES) -> str:
    """The fleet's plan: totals, the panels by their first tag, those that cannot be planned."""
    card = plan.fleet.get("card")
    if isinstance(card, dict) and "members" not in plan.fleet:  # a running fleet's (``running_copy``)
        return str(card["lines"])
    ok = runnable(plan)
    values = sum(int(mem.get("values") or 0) for mem in ok)
    lines = [
        f"*Plan* `{plan.short_hash}` · {fleet_label(len(ok))} · "
        f"{m.plural(values, 'stored credential')} · {_parts_line(plan)}"
    ]
    fleet = plan.fleet
    if fleet.get("kind") == "offboard":
        if fleet.get("reach_default"):
            lines.append(
                f"Reach: every panel (the settings do not list what <@{m.esc(fleet.get('person'))}> could reach)"
            )
        else:
            lines.append("Reach: the panels the settings list for this person (`offboard_reach`)")
    groups: dict[str, list[dict[str, Any]]] = {}
    for mem in ok:
        groups.setdefault((mem.get("tags") or ["untagged"])[0], []).append(mem)
    shown = 0
    for tag, items in sorted(groups.items()):
        entries = []
        for mem in items:
            if shown >= most:
                break
            shown += 1
            entries.append(
                f"{m.esc(mem['panel'])} {int(mem.get('values') or 0):,} `{m.short_fp(mem.get('key_fingerprint'))}`"
            )
        if entries:
            rest = len(items) - len(entries)
            lines.append(
                f"  *{m.esc(tag)}* ({len(items)})  " + " · ".join(entries) + (f" · … {rest} more" if rest else "")
            )
    if shown < len(ok):
        lines.append(f"  … {len(ok) - shown} more panels: the whole plan is in the thread as a file")
    bad = [mem for mem in members(plan) if mem.get("error")]
    for mem in bad[:20]:
        lines.append(
            f"  :no_entry_sign: cannot plan: {m.esc(mem['panel'])} ({m.esc(m.fit(str(mem['error']), 200))}): "
            "it is left out of this request"
        )
    if len(bad) > 20:
        lines.append(f"  :no_entry_sign: … and {len(bad) - 20} more cannot be planned (see the file)")
    return "\n".join(lines)


def running_copy(request: RotationRequest) -> RotationRequest:
    """The request as a running fleet holds it in memory (``bot.fleet_runner``): its card's
    plan lines and panel count, worked out once, in place of every panel's plan (each stays
    in its ``fleet_panels`` row, read when a worker takes the panel). The plan hash is the
    approved one. Only for showing: the runner never stores this copy."""
    plan = request.plan
    fleet = {k: v for k, v in plan.fleet.items() if k != "members"}
    fleet["card"] = {"lines": plan_lines(plan), "panels": len(runnable(plan))}
    return request.evolve(plan=replace(plan, fleet=fleet, engine_plan_hash=plan.hash))


def _offboard_lines(request: RotationRequest) -> list[str]:
    fleet = request.plan.fleet
    if fleet.get("kind") != "offboard":
        return []
    person = f"<@{m.esc(fleet.get('person'))}>"
    done = request.outcome.get("offboarded") or request.progress.get("offboarded")
    lines = []
    if isinstance(done, dict):
        voided = [str(v) for v in done.get("voided") or ()]
        what = f"{person}'s approvals" + (" and TOTP enrollment" if done.get("enrollment_revoked") else "") + " revoked"
        if voided:
            what += f"; {m.plural(len(voided), 'pending request')} voided ({m.esc(m.some_names(voided, 5))})"
        lines.append(f"Done at request time: {what}")
    lines.append(
        f"A person must still: remove {person}'s SSH keys and panel accounts on each host (checklist in the thread)"
    )
    return lines


def request_card(
    request: RotationRequest,
    *,
    approvers: str,
    approvals_required: int,
    now: float,
    name_requester: bool = True,
    runs: Sequence[PanelRun] | None = None,
) -> blocks.Message:
    """The fleet's card, within Slack's limits whatever the number of panels."""
    status = blocks.status_lines(
        request, approvers=approvers, approvals_required=approvals_required, now=now, name_requester=name_requester
    )
    if request.state == State.RUNNING and request.progress.get("counts"):
        status[-1] = f"{status[-1].split(' · ')[0]} · running: {counts_line(request.progress['counts'])}"
    if request.state in (State.DONE, State.FAILED):
        status = [status[0], counts_line(request.outcome.get("counts") or {})]
    title = headline(request)
    out: list[dict[str, Any]] = [
        blocks._section(f"*{title}*   `[{request.state.value}]`"),
        blocks._section(f"Requested by {request.requester.mention} · {m.quote(request.reason)}"),
        *blocks._sections(plan_lines(request.plan), most=MAX_SECTIONS_OF_LINES),
        *blocks._sections("\n".join([*_offboard_lines(request), *status]), most=3),
    ]
    if request.state == State.PENDING:
        out.append(blocks._buttons(request))
    out.append(blocks._context(f"Request `{m.esc(request.id)}` · plan hash `{m.esc(request.plan_hash[:16])}`"))
    text = f"{title} by {request.requester.mention} · {status[-1]} · plan {request.plan.short_hash}"
    return {"text": m.fit(text, blocks.PREVIEW_LIMIT), "blocks": out}


# --- while it runs: one checklist message --------------------------------------------------


def counts_line(counts: Mapping[str, int], failed_names: Sequence[str] = ()) -> str:
    """``✔ 12 verified · ▶ 4 running · ⏳ 1 queued · ↩ 1 rolled back (prod-us-4)``."""
    parts = []
    for state in ("verified", "running", "queued", "rolled_back", "failed", "refused", "skipped"):
        n = int(counts.get(state, 0))
        if n:
            parts.append(f"{PANEL_ICONS[state]} {n} {PANEL_WORDS[state]}")
    line = " · ".join(parts) or "no panels"
    if failed_names:
        line += f" ({m.esc(m.some_names(failed_names, 5))})"
    return line


def _panel_line(run: PanelRun) -> str:
    fp = ""
    if run.new_fingerprint and run.state == "verified":
        fp = f" · `{m.short_fp(run.new_fingerprint)}`"
    elif run.old_fingerprint:
        fp = f" · `{m.short_fp(run.old_fingerprint)}`"
    took = f" · {run.seconds:.1f} s" if run.seconds is not None and run.state != "queued" else ""
    step = f" · {m.esc(m.step_label(run.step))}" if run.state == "running" and run.step else ""
    word = PANEL_WORDS.get(run.state, run.state)
    return f"{PANEL_ICONS.get(run.state, '?')} {m.esc(run.panel)} · {word}{step}{fp}{took}"


def checklist_message(request: RotationRequest, runs: Sequence[PanelRun]) -> blocks.Message:
    """The run's one checklist message (updated in place): the counts, then a line per
    panel, failures and running ones first, as many as fit."""
    failed = [r.panel for r in runs if r.state in ("rolled_back", "failed")]
    head = f"*Fleet run* `{m.esc(request.id)}` · {counts_line(count_runs(runs), failed)}"
    order = {"failed": 0, "rolled_back": 1, "running": 2, "refused": 3, "queued": 4, "skipped": 5, "verified": 6}
    ranked = sorted(runs, key=lambda r: (order.get(r.state, 9), r.position))
    lines = [_panel_line(r) for r in ranked[:MAX_PANEL_LINES]]
    if len(runs) > MAX_PANEL_LINES:
        lines.append(f"… {len(runs) - MAX_PANEL_LINES} more; the whole table comes as a file at the end")
    out = [blocks._section(head), *blocks._sections("\n".join(lines) or "…", most=MAX_SECTIONS_OF_LINES)]
    return {"text": m.fit(head.replace("*", ""), blocks.PREVIEW_LIMIT), "blocks": out}


def failure_reply(request: RotationRequest, run: PanelRun) -> str:
    """The one thread reply a failed panel gets: what happened, what the engine did, next."""
    what = m.esc(m.fit(run.message or run.code or "failed", 500))
    if run.state == "rolled_back":
        return (
            f"✖ {m.esc(run.panel)}: {what}. ↩ Rolled back: the panel is as it was (old key verified). "
            f"Next: look at {m.esc(run.panel)}'s logs, then request that panel again. The other panels go on."
        )
    if run.state == "refused":
        return (
            f"⊘ {m.esc(run.panel)}: {what}. Nothing was changed on it. "
            f"Next: request {m.esc(run.panel)} again (its plan must be approved anew)."
        )
    return (
        f":sos: {m.esc(run.panel)}: {what}. NOT rolled back: run `recover` on {m.esc(run.panel)} "
        f"(run `{m.esc(run.run_id)}`), see docs/operations.md."
    )


def summary_message(request: RotationRequest, runs: Sequence[PanelRun], took_s: float) -> blocks.Message:
    counts = count_runs(runs)
    failed = [r.panel for r in runs if r.state not in ("verified",)]
    verified = counts.get("verified", 0)
    head = (
        f"{':white_check_mark:' if not failed else ':warning:'} Fleet `{m.esc(request.id)}` finished: "
        f"{verified}/{len(runs)} panels verified in {took_s:.1f} s · {counts_line(counts)}"
    )
    people = (
        f"requested by {request.requester.mention} · approved by "
        f"{m.people([a.approver_label for a in request.approvals if a.person])} · reason {m.quote(request.reason)}"
    )
    lines = [head, people]
    if failed:
        lines.append(f"Not verified: {m.esc(m.some_names(failed, 20))} (each has its reply above)")
    lines.append("The whole per-panel table is attached as a file.")
    anchor = request.outcome.get("audit")
    if isinstance(anchor, dict):
        lines.append(f"audit #{anchor.get('seq')} {str(anchor.get('digest'))[:16]}")
    text = "\n".join(lines)
    return {"text": m.fit(text, blocks.PREVIEW_LIMIT), "blocks": blocks._sections(text, most=4)}


TABLE_COLUMNS = (
    "panel",
    "host",
    "tags",
    "outcome",
    "old_key",
    "new_key",
    "values",
    "seconds",
    "code",
    "run_id",
    "to_do_by_hand",
)


def table_csv(request: RotationRequest, runs: Sequence[PanelRun] | None = None) -> str:
    """The whole per-panel table (the plan's, or the run's when ``runs`` are given)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TABLE_COLUMNS)
    by_panel = {r.panel: r for r in runs or ()}
    person = str(request.plan.fleet.get("person") or "")
    manual = f"remove the SSH keys and panel accounts of Slack user {person}" if person else ""
    for mem in members(request.plan):
        run = by_panel.get(mem["panel"])
        if mem.get("error"):
            outcome, code = "not planned: " + str(mem["error"]), str(mem.get("code") or "")
        elif run is None:
            outcome, code = "planned", ""
        else:
            outcome, code = PANEL_WORDS.get(run.state, run.state), run.code
        writer.writerow([
            mem["panel"], mem.get("host", ""), " ".join(mem.get("tags") or ()), outcome,
            (run.old_fingerprint if run and run.old_fingerprint else mem.get("key_fingerprint") or ""),
            run.new_fingerprint if run else "", mem.get("values", ""),
            f"{run.seconds:.1f}" if run and run.seconds is not None else "", code,
            run.run_id if run else "", manual,
        ])  # fmt: skip
    return out.getvalue()


def upload_table(client: WebClient, request: RotationRequest, content: str, name: str, title: str) -> bool:
    """The table as a CSV file in the request's thread (files v2 upload)."""
    try:
        client.files_upload_v2(
            channel=request.channel_id,
            thread_ts=request.message_ts,
            content=content,
            filename=name,
            title=title,
        )
    except (SlackApiError, SlackClientError) as exc:
        log.warning("could not upload the table of %s: %s", request.id, type(exc).__name__)
        return False
    return True


def manual_checklist(request: RotationRequest) -> str:
    """What the tool cannot do and a person must, per host."""
    person = f"<@{m.esc(request.plan.fleet.get('person'))}>"
    ok = runnable(request.plan)
    lines = [f":clipboard: *A person must still, on each host* (this tool cannot remove {person}'s own access):"]
    for mem in ok[:40]:
        lines.append(
            f"☐ {m.esc(mem['panel'])} ({m.esc(mem.get('host'))}): "
            f"remove {person}'s SSH keys (`authorized_keys`) and panel accounts"
        )
    if len(ok) > 40:
        lines.append(f"☐ … and {len(ok) - 40} more hosts: see the plan file (column to_do_by_hand)")
    return "\n".join(lines)
