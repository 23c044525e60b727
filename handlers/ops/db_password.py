"""``/rotate-db-password``: give the panel's database user a new password.

Everything the Slack side knows of a DB-password rotation: its command, its plan and run
requests (the run names the login's current password by fingerprint), its card's plan
lines (the login and every account the password opens) and its summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slack_bolt import App

from handlers import blocks
from handlers import messages as m
from handlers.ending import Ending
from handlers.ops import Listener, Operation
from handlers.ops.incident import MAX_ACCOUNTS, accounts_tail, text_sections
from handlers.parsing import Parsed, parse_panel_reason
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest, State

OP = "rotate-db-password"
COMMAND = "/rotate-db-password"
HELP_LINES = (
    m.esc(
        "• `/rotate-db-password [panel] <reason>`: give the panel's database user a new "
        "password (`DB_PASSWORD` in `.env`); the old one stops working."
    ),
)


def parse(text: str, panels: Sequence[str]) -> Parsed | str:
    """``/rotate-db-password [panel] <reason>``: the panel's database login. ("password" in
    its reason is about the DB password, not the admin's: no screening for it.)"""
    return parse_panel_reason(text, panels, OP, screen_special=False)


def plan_fields(agents: Sequence[str], all_agents: bool) -> dict[str, Any]:
    return {"db_password": True}


def plan_extras(result: dict[str, Any]) -> dict[str, Any]:
    return {"db_accounts": _db_accounts(result)}


def run_fields(request: RotationRequest) -> dict[str, Any]:
    """The run names the login's current password, by fingerprint."""
    return {"password_fingerprint": request.plan.password_fingerprint or None}


def _db_accounts(result: dict[str, Any]) -> tuple[str, ...]:
    """``u@localhost (socket /run/mysqld/mysqld.sock)``, one per account the engine found."""
    out = []
    for item in result.get("accounts") or ():
        if isinstance(item, dict):
            routes = ", ".join(str(r) for r in item.get("routes") or ())
            out.append(f"{item.get('account')} ({routes})" if routes else str(item.get("account")))
    return tuple(out)


def plan_lines(plan: PlanView) -> str:
    """The card's plan for ``/rotate-db-password``: which login, and how it is proven."""
    user = m.esc(m.fit(plan.db_user or "?", 80))
    where = f" on {m.esc(m.fit(plan.db_host, 80))}" if plan.db_host else ""
    lines = [
        f"*Plan* `{plan.short_hash}`",
        f"• the database password of user `{user}`{where} gets a new one (`DB_PASSWORD` in `.env`)"
        f" · current password {m.short_fp(plan.password_fingerprint)}",
        "• the user sets its own password (no admin login); php-fpm restarts; the panel and a fresh "
        "login must work with the new password, and the old one must be refused on every route, or it goes back",
    ]
    if plan.db_accounts:
        accounts = ", ".join(f"`{m.esc(m.fit(a, 120))}`" for a in plan.db_accounts[:MAX_ACCOUNTS])
        lines.insert(2, f"• every account the current password opens gets the new one: {accounts}")
    return "\n".join([*lines, *blocks.plan_tail(plan)])




def summary_text(request: RotationRequest) -> str:
    """What happened to the login's password, who asked and approved, the audit anchor."""
    ending = Ending.of(request.outcome)
    approvers = [a.approver_label for a in request.approvals if a.person]
    user = m.esc(m.fit(str(ending.db_user or request.plan.db_user or "?"), 80))
    if request.state == State.DONE:
        routes = [r.route for r in ending.routes if r.old == "refused"]
        everywhere = f" on {m.esc(m.fit(', '.join(routes), 300))}" if routes else ""
        head = (
            f":white_check_mark: Database password rotated on panel {m.esc(request.panel)} · user `{user}` · "
            f"{m.short_fp(ending.old_fingerprint)} → {m.short_fp(ending.new_fingerprint)}"
            f"{accounts_tail(ending.accounts)} · the new password works, the old one is refused{everywhere}"
        )
    elif ending.rolled_back is True:
        head = (f":rotating_light: Database password rotation failed and was rolled back: the old password "
                f"of `{user}` works again{accounts_tail(ending.accounts)}. "
                f"What failed: {m.esc(ending.message or '?')}")  # fmt: skip
    elif ending.nothing_changed:
        what = m.esc(ending.message or "?")
        head = f":no_entry_sign: Database password rotation failed before any change: {what}"
    else:
        head = (f":sos: Database password rotation failed and was NOT rolled back: run recover on "
                f"{m.esc(request.panel)}. What failed: {m.esc(ending.message or '?')}")  # fmt: skip
    took = m.duration(ending.duration_ms)
    return "\n".join([
        head,
        f"Requested by {request.requester.mention} · approved by {m.people(approvers)} · "
        f"reason {m.quote(request.reason)}",
        f"Rotation `{m.esc(request.id)}`" + (f" · {took}" if took else "") + m.audit_anchor(ending),
    ])  # fmt: skip


def summary_blocks(request: RotationRequest, *, on_card: bool = False) -> list[dict[str, Any]]:
    return text_sections(summary_text(request))


def attach(app: App, listener: Listener) -> None:
    app.command("/rotate-db-password")(listener)


OPERATION = Operation(
    name=OP,
    commands=(COMMAND,),
    help_lines=HELP_LINES,
    parse=parse,
    attach=attach,
    title="Database password rotation",
    icon=":lock:",
    target=blocks.panel_target,
    plan_fields=plan_fields,
    plan_extras=plan_extras,
    run_fields=run_fields,
    plan_lines=plan_lines,
    summary_blocks=summary_blocks,
    summary_text=summary_text,
)
