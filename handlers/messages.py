"""Every sentence the bot says, in one place, for an operator paged at 3 a.m.

Functions take plain data and return Slack ``mrkdwn`` text. Nothing here talks
to Slack or the store; ``blocks`` arranges these sentences into cards.

Every string that comes from a person, the database or the engine (reasons,
panel and agent names, column names, engine messages) goes through ``esc``
where it is put into a sentence, so ``<!channel>`` or ``<https://evil|click>``
arrives as text, not as a mention or a link. Mentions the bot builds itself
(``<@U…>``, ``<!subteam^…>``, ``<#C…>``) are passed in already made and are not
escaped again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.protocol import AGENT_STEPS, KEY_STEPS
from engine.protocol.codes import CODES, UNKNOWN
from engine.protocol.words import plural as plural  # one way to count, in the engine and in Slack
from handlers.ending import Ending

if TYPE_CHECKING:
    from handlers.plan_view import PlanView

# --- small formatters -------------------------------------------------------------------

CONFIRM_LIMIT = 300  # Slack's limit for a confirm dialog's text
LISTED_NAMES = 10  # names a sentence lists before "and N more"


def esc(value: object) -> str:
    """``value`` as inert mrkdwn: Slack's three control characters escaped, as Slack asks."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def some_names(names: Sequence[str], shown: int = LISTED_NAMES, longest: int = 40) -> str:
    """``a, b, c and 47 more``: a few names (each at most ``longest`` characters), escaped."""
    listed = ", ".join(esc(fit(n, longest)) for n in names[:shown])
    rest = len(names) - shown
    return f"{listed} and {count(rest)} more" if rest > 0 else listed


def clock_time(ts: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(ts))


def time_left(until: float, now: float) -> str:
    seconds = until - now
    if seconds <= 0:
        return "now"
    minutes = int(seconds // 60 + (1 if seconds % 60 >= 30 else 0))
    if minutes < 1:
        return "in under a minute"
    if minutes < 60:
        return f"in {minutes} min"
    return f"in {minutes // 60} h {minutes % 60} min"


def minutes_left(until: float, now: float) -> str:
    minutes = max(0, int((until - now) // 60))
    return f"{minutes} min left"


def duration(ms: float | int | None) -> str:
    if ms is None:
        return ""
    seconds = float(ms) / 1000
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 0.1 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def count(n: int | float) -> str:
    return f"{int(n):,}"


def short_fp(fingerprint: str | None) -> str:
    if not fingerprint:
        return "(unknown)"
    return f"{fingerprint[:8]}…"


def quote(reason: str) -> str:
    return f"“{esc(reason)}”"


def approve_confirm(short_hash: str, what: str) -> str:
    """The Approve button's "are you sure?" text, within Slack's 300 characters."""
    tail = " It starts as soon as the approvals are complete."
    head = f"You approve plan `{esc(short_hash)}` for "
    room = CONFIRM_LIMIT - len(head) - len(tail) - 1
    return f"{head}{fit(what, room)}.{tail}"


# --- ephemeral answers ------------------------------------------------------------------

ADMIN_PASSWORD = (
    "The admin operator password is managed by MyOsicam staff: "
    "contact MyOsicam support to rotate it."
)
LICENCE_KEY = (
    "The licence key (`PANEL_LICENSE_KEY`) identifies your MyOsicam licence and is not "
    "rotated by this procedure: contact MyOsicam support if it needs to be reissued."
)
ALREADY_APPROVED = "You already approved this request."
DUPLICATE_DENY = "You already answered this request."


def self_approval(approvers: str) -> str:
    """``approvers``: those who may approve, the requester left out (a user group as is)."""
    if not approvers:
        return "You asked for this rotation, so someone else must approve it."
    return f"You asked for this rotation, so someone else from {approvers} must approve it."


def not_an_approver(approvers: str, verb: str = "approve") -> str:
    return f"Only members of {approvers} can {verb} rotations."


def not_a_requester(requesters: str) -> str:
    return f"Only members of {requesters} can request rotations."


def wrong_channel(channels: Sequence[str]) -> str:
    where = " or ".join(f"<#{c}>" for c in channels)
    return f"Rotations are requested in {where}, so that the team sees them."


def needs_reason(command: str, example: str) -> str:
    return f"`{command}` needs a reason, e.g. `{command} {example}`."


def unknown_panel(name: str, known: Sequence[str]) -> str:
    return f"Unknown panel `{esc(name)}`. Known panels: {esc(', '.join(known)) or 'none configured'}."


def which_panel(usage: str, known: Sequence[str]) -> str:
    return f"Which panel? Known panels: {esc(', '.join(known))}. Name it, e.g. `{esc(usage)}`."


def needs_agents(command: str) -> str:
    return (
        f"`{command}` needs the agents to rotate, e.g. `{command} agent-7,agent-9 lost laptop` "
        f"or `{command} --all annual rotation`."
    )


def reason_too_long(limit: int) -> str:
    return f"Please keep the reason under {limit} characters."


def planning(op: str, panel: str) -> str:
    return f":hourglass_flowing_sand: Asking the engine on {esc(panel)} for a plan ({esc(op)})…"


def plan_failed(panel: str, message: str, ref: str) -> str:
    return f"Could not plan on {esc(panel)}: {esc(message)}. Nothing was changed. Ref {ref}."


def store_down(ref: str) -> str:
    return f":warning: The rotator cannot reach its state store; nothing was done. Ref {ref}."


def unexpected(ref: str) -> str:
    return f"Something went wrong on our side; nothing was changed. Ref {ref}."


def card_not_posted(ref: str) -> str:
    return (
        "The plan is ready, but the request card could not be posted in the channel "
        f"(is the bot a member?). The request was withdrawn. Ref {ref}."
    )


def unknown_request(request_id: str) -> str:
    return f"No request `{esc(request_id)}`. `/rotate-status` lists the open ones."


def cancel_usage() -> str:
    return "`/rotate-cancel` needs a request id, e.g. `/rotate-cancel r-20261126-031402-7f3a`."


def only_requester_cancels(requester_mention: str) -> str:
    return f"Only the requester ({requester_mention}) can cancel this request."


def cannot_cancel_running(request_id: str) -> str:
    return (
        f"`{esc(request_id)}` is already running. A rotation is never stopped halfway: it finishes "
        "or rolls back by itself. Follow it in the card's thread."
    )


def use_cancel(request_id: str) -> str:
    return f"To withdraw your own request, use `/rotate-cancel {esc(request_id)}`."


def cancelled_ack(request_id: str) -> str:
    return f"Cancelled `{esc(request_id)}`."


def approval_recorded(missing: int, approvers: str) -> str:
    return (
        f"Your approval is recorded. It still needs {plural(missing, 'approval')} from {approvers}."
    )


def deny_recorded(request_id: str) -> str:
    return f"Denied `{esc(request_id)}`."


def decided_phrase(state: str, who: str | None, at: float | None, reason: str = "") -> str:
    """``approved by @bob at 03:14 UTC`` and friends, for "no longer pending" answers."""
    when = f" at {clock_time(at)}" if at else ""
    by = f" by {who}" if who else ""
    if state in ("approved", "running"):
        return f"it was approved{by}{when}" + (" and is running" if state == "running" else "")
    if state == "denied":
        return f"it was denied{by}{when}" + (f": {quote(reason)}" if reason else "")
    if state == "cancelled":
        return f"it was cancelled{by}{when}"
    if state == "expired":
        return f"it expired{when} without approval"
    if state == "voided":
        return "its plan changed before running, so its approvals are void"
    if state == "done":
        return f"it was approved{by}{when} and has finished: verified"
    if state == "failed":
        return f"it was approved{by}{when} and has finished: failed"
    return f"it is {esc(state)}"


def no_longer_pending(phrase: str) -> str:
    return f"This request is no longer pending: {phrase}."


# --- card status lines ------------------------------------------------------------------


def needs_approvals(
    missing: int, approvers: str, requester: str, expires_at: float, now: float
) -> str:
    """``Needs 1 approval from @oncall (not @alice)`` when a group may hold the requester,
    ``from @bob or @carol`` when approvers are people (the requester left out; pass
    ``requester=""``)."""
    who = f"from {approvers}" if approvers else "from someone other than the requester"
    not_them = f" (not {requester})" if requester else ""
    return (
        f"Needs {plural(missing, 'approval')} {who}{not_them} · "
        f"expires {clock_time(expires_at)} ({time_left(expires_at, now)})"
    )


def approved_line(names: str, at: float) -> str:
    return f":white_check_mark: Approved by {names} at {clock_time(at)}"


def partially_approved(names: str, have: int, need: int) -> str:
    return f":ballot_box_with_check: Approved by {names} ({have} of {need})"


def running_line(progress: dict[str, Any]) -> str:
    if not progress:
        return "running: starting…"
    label = step_label(str(progress.get("name", "")))
    index, total = progress.get("index"), progress.get("total")
    where = f"step {esc(index)}/{esc(total)}, " if index and total else ""
    agent = f"{esc(fit(str(progress['agent']), 80))}: " if progress.get("agent") else ""
    return f"running: {where}{agent}{step_doing(str(progress.get('name', '')), label)}…"


def denied_line(who: str, at: float, reason: str) -> str:
    return f":no_entry: Denied by {who} at {clock_time(at)}: {quote(reason)}"


def expired_line(at: float) -> str:
    return f":hourglass: Expired at {clock_time(at)} without approval"


def cancelled_line(who: str, at: float, reason: str = "") -> str:
    why = f": {esc(reason)}" if reason else ""
    return f":x: Cancelled by {who} at {clock_time(at)}{why}"


def voided_line(differences: Sequence[str]) -> str:
    changed = esc("; ".join(differences)) or "the plan differs"
    return f":warning: Plan changed before running ({changed}); approvals void, request again"


def done_line(duration_ms: int | None) -> str:
    return (
        f":white_check_mark: Verified in {duration(duration_ms)}"
        if duration_ms
        else (":white_check_mark: Verified")
    )


def failed_line(outcome: Ending | Mapping[str, Any], panel: str) -> str:
    ending = Ending.read(outcome)
    if ending.partial:
        if ending.code == "agent_unverified":
            return f":grey_question: Finished, could not verify: {esc(ending.message or 'see thread')}"
        return f":warning: Finished with failures: {esc(ending.message or 'see thread')}"
    if ending.rolled_back is True:
        tail = ", old key verified" if ending.verified_old in (True, None) else ", old key NOT verified"
        return f":rotating_light: Failed, rolled back{tail}"
    if ending.nothing_changed:
        return f":no_entry_sign: Failed before any change: {esc(ending.message or '')}"
    if ending.rolled_back is False:
        return f":sos: Failed and NOT rolled back: run recover on {esc(panel)} (see thread)"
    return (
        f":sos: Outcome unknown: lost track of the engine. Check status on {esc(panel)} (see thread)"
    )


# --- the thread -------------------------------------------------------------------------

STEP_LABELS: dict[str, tuple[str, str, str]] = {
    # name: (a finished step says, a running step is, a skipped or failed step is called)
    "preflight": ("preflight", "checking every stored value", "preflight"),
    "stage": ("new key staged", "staging the new key", "key staging"),
    "reencrypt": ("re-encrypted", "re-encrypting", "re-encryption"),
    "verify_db": ("database verified", "verifying the database", "database verification"),
    "write_env": ("config/.env updated", "writing config/.env", "config/.env update"),
    "restart": ("php-fpm restarted", "restarting php-fpm", "restart"),
    "sweep": ("sweep", "sweeping values written during the switch", "sweep"),
    "verify": ("verified from disk", "verifying", "verification"),
    "backup": ("backup updated", "updating the backup", "backup"),
    "issue_token": ("install token issued", "issuing an install token", "install token"),
    "bootstrap": ("bootstrap ran", "running the bootstrap", "bootstrap"),
    "reregistered": (
        "agent re-registered",
        "waiting for the agent to re-register",
        "re-registration",
    ),
    "old_revoked": ("old token revoked", "checking the old token is dead", "old token check"),
    "rollback": ("rolled back", "rolling back", "rollback"),
    "rolling_back": ("rolled back", "rolling back", "rollback"),
    "verify_old": ("old key verified", "verifying the old key", "old key verification"),
    "classify": ("values classified", "classifying every value", "classification"),
    "recover": ("recovered", "recovering", "recovery"),
    "db_preflight": ("preflight", "checking the database login", "preflight"),
    "db_stage": ("new password staged", "staging the new password", "password staging"),
    "db_change": ("password changed", "changing the password", "password change"),
    "db_write_env": ("config/.env updated", "writing config/.env", "config/.env update"),
    "db_restart": ("php-fpm restarted", "restarting php-fpm", "restart"),
    "db_verify": ("new password verified", "verifying the new password", "verification"),
    "db_backup": ("backup updated", "updating the backup", "backup"),
    "db_rollback": ("rolled back", "rolling back", "rollback"),
    "db_verify_old": ("old password verified", "verifying the old password", "old password verification"),
}
KNOWN_STEPS = frozenset(KEY_STEPS) | frozenset(AGENT_STEPS)


def _labels(name: str) -> tuple[str, str, str]:
    plain = esc(name.replace("_", " "))
    return STEP_LABELS.get(name, (plain, plain, plain))


def step_label(name: str) -> str:
    return _labels(name)[0]


def step_doing(name: str, label: str) -> str:
    return _labels(name)[1] or label


def _without_prefix(detail: str, label: str) -> str:
    """The engine often starts its detail with what the label says already; say it once."""
    if detail.lower().startswith(label.lower()):
        return detail[len(label) :].lstrip(" ·:,")
    return detail


def step_reply(event: dict[str, Any]) -> str:
    """One thread reply for one finished engine step: outcome, detail, elapsed time."""
    name = str(event.get("name", "step"))
    state = str(event.get("state", ""))
    done, _, noun = _labels(name)
    detail = esc(str(event.get("detail") or "").strip())
    elapsed = duration(event.get("elapsed_ms"))
    agent = f"{esc(event['agent'])}: " if event.get("agent") else ""
    if state == "failed":
        text = f"✖ {agent}{noun} failed" + (f": {detail}" if detail else "")
    elif state == "skipped":
        text = f"↷ {agent}{noun} skipped" + (f": {detail}" if detail else "")
    else:
        icon = "↩" if name.startswith(("roll", "restore")) else "✔"
        detail = _without_prefix(detail, done)
        text = f"{icon} {agent}{done}" + (f" · {detail}" if detail else "")
    counts = _counts(event)
    if counts:
        text += f" · {counts}"
    if elapsed:
        text += f" · {elapsed}"
    return text


def _counts(event: dict[str, Any]) -> str:
    parts = []
    for key in ("done", "values", "reencrypted", "written", "swept", "checked"):
        value = event.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(plural(value, "value") if key == "values" else f"{count(value)} {key}")
    return ", ".join(parts)


def column_counts(columns: dict[str, int], shown: int = 20) -> str:
    """``table.column 812 · …``: at most ``shown`` columns (names cut to 100), then a count."""
    items = list(columns.items())
    text = " · ".join(f"{esc(fit(name, 100))} {count(n)}" for name, n in items[:shown])
    rest = len(items) - shown
    return f"{text} · and {plural(rest, 'more column')}" if rest > 0 else text


#: What to do next, by error code: the advice of the protocol's codes table, as one sentence.
NEXT_STEPS: dict[str, str] = {name: code.next_step() for name, code in CODES.items()}
DEFAULT_NEXT_STEP = UNKNOWN.next_step()


def _recover(panel: str) -> str:
    return (
        f"run `sudo myosicam-rotator recover` on {esc(panel)}'s host, "
        "then `/rotate-status` here. Do not request again before that."
    )


def next_step(
    code: str,
    panel: str,
    rolled_back: bool | None,
    nothing_changed: bool,
    outcome: Ending | Mapping[str, Any] | None = None,
) -> str:
    """The one thing to do next, for this kind of failure; never "the step above", which a
    failure before the first step does not have."""
    if code == "rollback_failed" or rolled_back is False:
        head = "the engine could not roll back by itself: " if code == "rollback_failed" else ""
        return head + _recover(panel)
    if rolled_back is None and not nothing_changed:
        return _recover(panel)
    if code == "undecryptable":
        locations = [str(x) for x in Ending.read(outcome or {}).locations if x]
        if locations:
            they = "it" if len(locations) == 1 else "them"
            return (
                f"{some_names(locations, longest=120)} "
                f"{'does' if len(locations) == 1 else 'do'} not open with the current key: "
                f"restore {they} from a backup, or clear {they} in the panel so that "
                f"{'its owner enters it' if len(locations) == 1 else 'their owners enter them'} "
                "again; then request again."
            )
    return NEXT_STEPS.get(code, DEFAULT_NEXT_STEP)


def people(persons: Sequence[str]) -> str:
    return ", ".join(persons) if persons else "nobody"


def audit_anchor(outcome: Ending | Mapping[str, Any]) -> str:
    """` · audit #57 3f9a0c1d2e4b5a6f`: the audit chain's position when the run closed, kept in
    Slack so that `python -m bot audit verify --slack` can tell a cut or rewritten log."""
    anchor = Ending.read(outcome).audit
    return f" · audit #{anchor[0]} {anchor[1]}" if anchor else ""


def voided_reply(differences: Sequence[str]) -> str:
    return (
        ":warning: The plan changed between approval and run: "
        + esc("; ".join(differences))
        + ". Nothing was run; the approvals are void. Request again to approve the new plan."
    )


def reattached(after_seq: int) -> str:
    return (
        ":arrows_counterclockwise: The bot restarted; it is following the engine again "
        f"from event {after_seq}."
    )


def requester_notice(request_id: str, panel: str, state: str, summary: str, link: str = "") -> str:
    where = f" ({link})" if link else ""
    return f"Your rotation `{esc(request_id)}` on {esc(panel)} ended: {summary}{where}"


# --- help -------------------------------------------------------------------------------


def help_text(
    panels: Sequence[str],
    approvers: str,
    approvals_required: int,
    expiry_min: float,
    step_up: bool = False,
    extra: Sequence[str] = (),
) -> str:
    """``extra``: the operations' own lines, in the registry's order (``handlers.ops.help_lines``)."""
    known = esc(", ".join(panels)) or "none configured"
    enroll = [
        esc(
            "• `/rotate-enroll`: enroll an authenticator app; approving then also asks for its "
            "6-digit code. `/rotate-enroll reset @user` (admins): remove a lost one."
        )
    ]
    return "\n".join(
        [
            "*MyOsicam Rotator* rotates panel secrets with a second person's approval.",
            *extra,
            "• `/rotate-status [id]`: pending and running requests, or one request's history.",
            esc("• `/rotate-cancel <id>`: withdraw your own pending request."),
            *(enroll if step_up else []),
            f"Panels: {known}. Approval: {plural(approvals_required, 'person', 'people')} from "
            f"{approvers}, never the requester. Requests expire after {expiry_min:g} min.",
            "The card shows the plan; approving approves that plan. If it changes before the run, "
            "the approvals are void.",
            f"Not rotated here: {ADMIN_PASSWORD} {LICENCE_KEY}",
        ]
    )


def directory_unavailable(group: str, max_age_minutes: float) -> str:
    return (
        f"Slack has not been able to list the members of {group} for over "
        f"{max_age_minutes:g} min, so no one can be confirmed as a member: nothing was "
        "changed. Try again in a few minutes."
    )


def status_wrong_channel(channels: Sequence[str]) -> str:
    where = " or ".join(f"<#{c}>" for c in channels)
    return f"Rotation status is shown in {where} only."


def status_not_allowed(requesters: str, approvers: str) -> str:
    return f"Only members of {requesters} or {approvers} can see rotation status."


def outside_channels(channels: Sequence[str]) -> str:
    """For someone outside every rotations channel, on a surface that has none (App Home)."""
    where = " or ".join(f"<#{c}>" for c in channels)
    return (
        f"Only members of {where} request, approve and follow rotations, and you are not one. "
        "Ask to join it if you need to."
    )


def not_allowed(requesters: str, approvers: str, channels: Sequence[str], in_scope: bool) -> str:
    """Why the App Home tab or the request modal shows nothing to this person."""
    if not in_scope:
        return outside_channels(channels)
    return status_not_allowed(requesters, approvers)


def too_many_pending(limit: int, pending: Sequence[str]) -> str:
    ids = f" ({', '.join(f'`{i}`' for i in pending[:limit])})" if pending else ""
    return (
        f"One person may have at most {limit} pending requests, and you have that many{ids}. "
        "Cancel one with `/rotate-cancel <id>`, or wait until they are decided."
    )


# --- step-up approval (TOTP) -------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return plural(max(1, -(-int(seconds) // 60)), "min", "min")


def step_up_not_enrolled() -> str:
    return (
        "Approving rotations here needs a code from an authenticator app, and you have not "
        "enrolled one yet: type `/rotate-enroll`, scan the QR code I send you, then click "
        "Approve again."
    )


def step_up_rate_limited(retry_after_s: float) -> str:
    return (
        "Too many wrong codes lately, so no code is checked for now: try again in "
        f"{_minutes(retry_after_s)}. Nothing was approved."
    )


def _tries(tries_left: int, retry_after_s: float) -> str:
    if tries_left <= 0:
        return f"No tries left: wait {_minutes(retry_after_s)}."
    return f"{plural(tries_left, 'try', 'tries')} left before a pause."


def step_up_wrong(tries_left: int, retry_after_s: float) -> str:
    return (
        "That code is not the current one from your authenticator, so nothing was approved. "
        f"Click Approve and type the code shown now. {_tries(tries_left, retry_after_s)}"
    )


def step_up_replayed(tries_left: int, retry_after_s: float) -> str:
    return (
        "That code was already used, so nothing was approved: wait for your authenticator to "
        f"show a new one, then click Approve again. {_tries(tries_left, retry_after_s)}"
    )


def step_up_not_confirmed() -> str:
    return (
        "Your enrollment is not finished, so it approves nothing yet: in the direct message I "
        "sent you, click Type my first code and type the code your authenticator shows."
    )


def step_up_expired() -> str:
    return (
        "Your enrollment expired before its first code was typed, so it approves nothing: "
        "type `/rotate-enroll` to start again."
    )


def step_up_awaiting_approval(admins: str) -> str:
    who = admins or "an enroll admin"
    return (
        f"Your authenticator is confirmed, but {who} must approve the enrollment before it "
        "approves anything (a second person checks every new enrollment)."
    )


def step_up_key_mismatch() -> str:
    return (
        "Your code can't be checked: the bot's enrollment key (ROTATOR_ENROLLMENT_KEY) no longer "
        "opens the stored authenticator secrets (it was changed or is wrong). Nothing was "
        "approved. Ask whoever runs the bot to restore that key, or an enroll admin to reset "
        "your enrollment (`/rotate-enroll reset @you`) so you can enroll again."
    )


STEP_UP_ALREADY_CONFIRMED = "Your enrollment is confirmed already: nothing to do."


def step_up_code_format() -> str:
    return "Type the 6 digits your authenticator shows now."


def approved_with_totp(approver: str) -> str:
    return f":lock: {approver} approved with TOTP (a code from their enrolled authenticator)."


STEP_UP_OFF = (
    "Step-up approval is not turned on here, so there is nothing to enroll "
    '(`step_up = "totp"` in the bot\'s settings turns it on).'
)


def enroll_not_approver(approvers: str) -> str:
    return f"Only approvers enroll an authenticator; approvers here are {approvers}."


def enroll_already(admins: str) -> str:
    who = admins or "an admin (enroll_admins in the bot's settings)"
    return (
        "You are enrolled already. Lost your authenticator? Ask "
        f"{who} to run `/rotate-enroll reset @you`, then enroll again."
    )


ENROLL_SENT = (
    ":iphone: I sent you a direct message with your enrollment: scan its QR code with an "
    "authenticator app, then type the first code it shows there (the message and the QR code "
    "are deleted then)."
)


def enroll_dm(uri: str, pending_s: float) -> str:
    return (
        ":lock: Your step-up enrollment for rotation approvals. Scan the QR code below with an "
        "authenticator app, or add this link to it:\n"
        f"`{uri}`\nThen click *Type my first code* and type the code it shows, within "
        f"{_minutes(pending_s)}. I delete this message and the QR code as soon as that code is "
        "right; until then, keep them to yourself."
    )


def enroll_pending(pending_s: float) -> str:
    return (
        "You have an enrollment waiting for its first code: open the direct message I sent you. "
        f"If you lost it, wait until it expires ({_minutes(pending_s)} after you asked), then "
        "type `/rotate-enroll` again."
    )


def enroll_waiting(admins: str) -> str:
    who = admins or "an enroll admin"
    return f"Your enrollment is confirmed and waits for {who} to approve it."


def enroll_confirmed(needs_approval: bool, admins: str) -> str:
    deleted = "I deleted the message and the QR code that held its secret."
    if not needs_approval:
        return f":white_check_mark: Your authenticator is enrolled: Approve buttons now ask for its code. {deleted}"
    who = admins or "an enroll admin"
    return (
        f":white_check_mark: Your authenticator is confirmed. {deleted} It approves rotations "
        f"once {who} approves the enrollment: I asked them."
    )


def enrollment_approval_request(user: str, admins: str) -> str:
    return (
        f":iphone: {user} enrolled an authenticator for approving rotations and typed its first "
        f"code. {admins or 'An enroll admin'}: approve it if {user} really did (ask them on "
        "another channel: a stolen Slack session can enroll too). To refuse, "
        f"`/rotate-enroll reset {user}`."
    )


def enrollment_approved(user: str, admin: str) -> str:
    return f":white_check_mark: {user}'s authenticator enrollment was approved by {admin}."


def enrollment_active(admin: str) -> str:
    return f":white_check_mark: {admin} approved your authenticator: Approve buttons now ask for its code."


def enroll_approve_self(admins: str) -> str:
    return f"You can't approve your own enrollment: another of {admins} must."


def enroll_approve_not_admin(admins: str) -> str:
    if not admins:
        return "No one may approve enrollments here: set `enroll_admins` in the bot's settings."
    return f"Only {admins} can approve an enrollment."


def enroll_approve_not_waiting(user: str) -> str:
    return f"{user}'s enrollment is not waiting for an approval (approved, reset or never confirmed)."


def enroll_self_reset_refused(admins: str) -> str:
    return (
        "You can't reset your own enrollment without its current code: type "
        "`/rotate-enroll reset @you 123456` with the code your authenticator shows, or ask "
        f"another of {admins or 'the enroll admins'}. This refusal is in the audit log."
    )


def enroll_failed(ref: str) -> str:
    return (
        "I could not send you the enrollment, so it was withdrawn: try `/rotate-enroll` again "
        f"in a moment. Ref {ref}."
    )


def enroll_reset_usage() -> str:
    return (
        "Usage: `/rotate-enroll` to enroll yourself, or `/rotate-enroll reset @user` (admins; "
        "your own enrollment: `/rotate-enroll reset @you <current code>`)."
    )


def enroll_reset_not_admin(admins: str) -> str:
    if not admins:
        return "No one may reset enrollments here: set `enroll_admins` in the bot's settings."
    return f"Only {admins} can reset an enrollment."


def enroll_reset_done(user: str) -> str:
    return (
        f"Reset: {user}'s authenticator no longer approves anything. They can enroll again with "
        "`/rotate-enroll`. This reset is in the audit log."
    )


def enroll_reset_none(user: str) -> str:
    return f"{user} is not enrolled: nothing to reset."


def plan_host_line(plan: PlanView) -> str:
    """The card's last plan line: where the run goes (host, pinned host key, engine version)."""
    host = esc(plan.panel_host or plan.panel)
    return (
        f"• panel host {host} · host key {esc(plan.host_key_fingerprint or '(unknown)')} · "
        f"engine {esc(plan.engine_version or '(unknown)')}"
    )
