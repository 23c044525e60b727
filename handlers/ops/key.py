"""``/rotate-key``: re-encrypt every stored credential under a new ``PANEL_ENCRYPTION_KEY``.

Everything the Slack side knows of a key rotation: its command, its plan and run
requests (the run names the current key by fingerprint), its card's plan lines and its
summary (``handlers.blocks.engine_summary_blocks``, shared with the agents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slack_bolt import App

from handlers import blocks
from handlers import messages as m
from handlers.ops import Listener, Operation, run_summary
from handlers.parsing import Parsed, parse_panel_reason
from handlers.plan_view import PlanView
from handlers.rotation_request import RotationRequest

OP = "rotate-key"
COMMAND = "/rotate-key"
MAX_COLUMN_LINES = 20
HELP_LINES = (
    m.esc(
        "• `/rotate-key [panel] <reason>`: re-encrypt every stored credential under a new "
        "`PANEL_ENCRYPTION_KEY`."
    ),
)


def parse(text: str, panels: Sequence[str]) -> Parsed | str:
    """``/rotate-key [panel] <reason>`` -> ``Parsed``, or the sentence that says what to fix."""
    return parse_panel_reason(text, panels, OP)


def run_fields(request: RotationRequest) -> dict[str, Any]:
    """The run names the key the plan was read with."""
    return {"key_fingerprint": request.plan.key_fingerprint or None}


def plan_lines(plan: PlanView) -> str:
    """How many stored values are re-encrypted in which columns, the layout, the current key."""
    lines = [f"*Plan* `{plan.short_hash}`"]
    lines.append(
        f"• {m.plural(plan.total, 'stored credential')} in {m.plural(len(plan.columns), 'column')} "
        "will be re-encrypted"
    )
    if plan.columns:
        lines.append(f"      {m.column_counts(plan.columns)}")
    for table in plan.skipped[:MAX_COLUMN_LINES]:
        lines.append(f"      {m.esc(table)}: table not present, skipped")
    if len(plan.skipped) > MAX_COLUMN_LINES:
        lines.append(f"      … and {len(plan.skipped) - MAX_COLUMN_LINES} more not present")
    layout = m.esc(plan.scheme_description or plan.scheme or "not detected")
    lines.append(f"• layout: {layout} · current key {m.short_fp(plan.key_fingerprint)}")
    if plan.escrow:
        lines.append(f"• new key: {m.esc(plan.escrow)}")
    return "\n".join([*lines, *blocks.plan_tail(plan)])


def key_fingerprints(closing: dict[str, Any]) -> dict[str, str]:
    return {k: str(closing[k]) for k in ("old_fingerprint", "new_fingerprint") if closing.get(k)}


def attach(app: App, listener: Listener) -> None:
    app.command("/rotate-key")(listener)


OPERATION = Operation(
    name=OP,
    commands=(COMMAND,),
    help_lines=HELP_LINES,
    parse=parse,
    attach=attach,
    title="Key rotation",
    icon=":key:",
    target=blocks.panel_target,
    modal_label="Panel encryption key",
    run_fields=run_fields,
    plan_lines=plan_lines,
    summary_blocks=run_summary.summary_blocks,
    summary_text=run_summary.summary_text,
    key_fingerprints=key_fingerprints,
)
