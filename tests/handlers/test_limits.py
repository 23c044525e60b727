"""Every card and message the bot builds stays within Slack's limits, whatever the inputs.

Each builder gets extreme inputs (50 long agent names, a 500-character reason
made of characters that escaping lengthens, a 200-character panel name, 80
columns, long engine messages, 50 failed agents) and its output is checked
with the strict validator of the fake Web API (``bot.fakes.slack_blocks``),
which uses slack_sdk's Block Kit models plus Slack's documented limits.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bot.fakes.slack_blocks import MAX_MESSAGE_TEXT, block_errors, view_errors
from handlers import blocks
from handlers import messages as m
from handlers.ops import run_summary
from handlers.plan_view import PlanView
from handlers.rotation_request import Decision, Person, RotationRequest, State, Transition

T0 = 1_795_000_000.0
ALICE, BOB = Person("T0", "U0ALICE"), Person("T0", "U0BOB")
NASTY = "<!channel> & <https://evil.example|click> "  # escaping makes each character longer
PANEL = "panel-" + "x" * 194
AGENTS = tuple(f"agent-{i:02d}.{'very-long-region-name.' * 2}compute.internal" for i in range(50))
ENGINE_MESSAGE = ("the engine says " + NASTY) * 100  # 5,000+ characters
AGENT_OUTCOMES = [
    {"name": a, "ok": False, "failed_step": "bootstrap", "error": ENGINE_MESSAGE[:500]}
    for a in AGENTS
]
PLAN = PlanView(
    panel=PANEL,
    op="rotate-agent",
    engine_version="0.4.0" + "-dev" * 50,
    host_key_fingerprint="SHA256:" + "A" * 300,
    panel_host=PANEL + ".example.net",
    key_fingerprint="3a9c41d2e5f60718",
    scheme="iv12_tag_ct/base64",
    scheme_description=NASTY * 20,
    columns={f"table_{i:02d}_{'y' * 40}.column_{'z' * 40}": 10**6 + i for i in range(80)},
    skipped=tuple(f"missing_table_{i}_{'w' * 40}" for i in range(60)),
    total=80 * 10**6,
    agents=AGENTS,
    agent_rows=tuple(
        {"name": a, "server": "oscam." + "s" * 200, "last_seen": NASTY * 5} for a in AGENTS
    ),
    warnings=tuple(NASTY * 30 for _ in range(20)),
)
REQUEST = RotationRequest(
    id="r-20261126-031402-7f3a",
    op="rotate-agent",
    panel=PANEL,
    reason=(NASTY * 20)[:500],
    requester=ALICE,
    channel_id="C0ROTATE",
    plan=PLAN,
    created_at=T0,
    expires_at=T0 + 1800,
    agents=AGENTS,
)
APPROVED = (Decision(BOB, T0 + 60),)
OUTCOMES: dict[str, dict[str, Any]] = {
    "done": {
        "agents": AGENT_OUTCOMES,
        "message": ENGINE_MESSAGE,
        "duration_ms": 12_000,
        "columns": dict(PLAN.columns),
        "skipped": list(PLAN.skipped),
        "verified": True,
        "total": 80 * 10**6,
        "panel_check": ENGINE_MESSAGE,
    },
    "partial": {"partial": True, "agents": AGENT_OUTCOMES, "message": ENGINE_MESSAGE},
    "rolled back": {"rolled_back": True, "message": ENGINE_MESSAGE, "code": "database"},
    "not rolled back": {"rolled_back": False, "message": ENGINE_MESSAGE},
    "voided": {"differences": [ENGINE_MESSAGE] * 10},
}


def requests() -> dict[str, RotationRequest]:
    """The extreme request in every state a card shows."""
    decided = Decision(BOB, T0 + 60, NASTY * 12)
    cases = {
        "pending": REQUEST,
        "pending, one of two": REQUEST.evolve(approvals=APPROVED),
        "approved": REQUEST.evolve(state=State.APPROVED, approvals=APPROVED),
        "running": REQUEST.evolve(
            state=State.RUNNING,
            approvals=APPROVED,
            progress={"name": "bootstrap" + NASTY * 50, "index": 3, "total": 6, "agent": AGENTS[0]},
        ),
        "denied": REQUEST.evolve(state=State.DENIED, decision=decided),
        "cancelled": REQUEST.evolve(state=State.CANCELLED, decision=decided),
        "expired": REQUEST.evolve(state=State.EXPIRED, decision=Decision(None, T0 + 1800)),
    }
    for name, outcome in OUTCOMES.items():
        state = {"done": State.DONE, "voided": State.VOIDED}.get(name, State.FAILED)
        cases[name] = REQUEST.evolve(state=state, approvals=APPROVED, outcome=outcome)
    cases["rotate-key done"] = replace(
        cases["done"], op="rotate-key", agents=(), plan=replace(PLAN, op="rotate-key")
    )
    cases["all agents"] = replace(REQUEST, agents=(), all_agents=True)
    return cases


def slack_refuses(message: dict[str, Any]) -> list[str]:
    problems = block_errors(message["blocks"])
    if not message.get("text") or len(message["text"]) > MAX_MESSAGE_TEXT:
        problems.append(f"text of {len(message.get('text') or '')} characters")
    return problems


@pytest.mark.parametrize("case", list(requests()))
def test_every_card_is_accepted_by_slack(case: str) -> None:
    card = blocks.request_card(
        requests()[case], approvers="<!subteam^S0ONCALL>", approvals_required=2, now=T0 + 5
    )
    assert slack_refuses(card) == []


@pytest.mark.parametrize("case", ["done", "partial", "rolled back", "not rolled back"])
def test_every_closing_summary_is_accepted_by_slack(case: str) -> None:
    assert slack_refuses(blocks.thread_reply(blocks.summary_text(requests()[case]))) == []


def test_the_approve_confirmation_counts_the_agents_and_names_three() -> None:
    card = blocks.request_card(REQUEST, approvers="<!subteam^S0ONCALL>", approvals_required=1, now=T0)
    (actions,) = [b for b in card["blocks"] if b["type"] == "actions"]
    confirm = actions["elements"][0]["confirm"]["text"]["text"]
    assert len(confirm) <= 300
    assert "50 agents on panel panel-xxx" in confirm
    short = replace(REQUEST, panel="prod-eu")
    card = blocks.request_card(short, approvers="<!subteam^S0ONCALL>", approvals_required=1, now=T0)
    (actions,) = [b for b in card["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["confirm"]["text"]["text"] == (
        f"You approve plan `{PLAN.short_hash}` for 50 agents on panel prod-eu "
        f"({', '.join(m.fit(a, 40) for a in AGENTS[:3])} and 47 more). "
        "It starts as soon as the approvals are complete."
    )


def test_step_replies_status_history_and_the_deny_modal_are_accepted_by_slack() -> None:
    step = {
        "name": "bootstrap",
        "state": "failed",
        "detail": ENGINE_MESSAGE,
        "agent": AGENTS[0],
        "elapsed_ms": 200,
    }
    unknown_step = {"name": NASTY * 100, "state": "ok", "detail": ENGINE_MESSAGE, "done": 10}
    many = [requests()["pending"]] * 200
    transitions = [
        Transition(REQUEST.id, "approve" + NASTY, "pending", "approved", "T0/U0BOB", T0 + i)
        for i in range(500)
    ]
    for message in (
        blocks.thread_reply(m.step_reply(step)),
        blocks.thread_reply(m.step_reply(unknown_step)),
        blocks.thread_reply(m.voided_reply([ENGINE_MESSAGE] * 10)),
        blocks.status_report(many, many[:20], approvals_required=2, now=T0),
        blocks.history_report(REQUEST, transitions),
    ):
        assert slack_refuses(message) == []
    assert view_errors(blocks.deny_modal(REQUEST.id, blocks.request_headline(REQUEST))) == []


def test_nothing_a_person_or_the_engine_wrote_can_mention_or_link() -> None:
    """Every builder escapes ``<``, ``>`` and ``&`` in supplied text; only the bot's own mentions stay."""
    texts = [str(blocks.request_card(r, approvers="<!subteam^S0ONCALL>", approvals_required=2, now=T0))
             for r in requests().values()]
    texts += [blocks.summary_text(requests()[c]) for c in ("done", "partial", "rolled back")]
    texts += [
        m.step_reply({"name": "x", "state": "failed", "detail": NASTY, "agent": NASTY}),
        m.plan_failed(NASTY, NASTY, "ref"),
        m.unknown_panel(NASTY, [NASTY]),
        m.unknown_request(NASTY),
        m.requester_notice(NASTY, NASTY, "done", "ok"),
    ]
    for text in texts:
        assert "<!channel>" not in text and "<https://evil" not in text and "& " not in text


def test_command_output_in_engine_events_is_not_forwarded_to_slack() -> None:
    """Issue 9 item 10: a hook's or bootstrap's output lines stay on the host, whatever the event holds."""
    output = {"output": "NEW_TOKEN=9f8e7d6c\nregistered", "stdout": "line 1", "stderr": "stderr-text", "lines": ["x"]}
    step = {"name": "bootstrap", "state": "ok", "detail": "ran on oscam-7", "agent": "agent-7", **output}
    agent = {"name": "agent-7", "ok": False, "failed_step": "bootstrap", "error": "exit 1", **output}
    said = [
        m.step_reply(step),
        run_summary.agent_outcomes([agent]),
        run_summary.final_failed(
            request_id="r-1",
            panel="prod-eu",
            requester="<@U0ALICE>",
            approvers=[],
            reason="lost laptop",
            outcome={"partial": True, "message": "1 agent failed", "agents": [agent], **output},
        ),
    ]
    assert said[0] == "✔ agent-7: bootstrap ran · ran on oscam-7"
    assert said[1] == "agent-7 failed at bootstrap: exit 1"
    assert not [s for s in said if "NEW_TOKEN" in s or "line 1" in s or "stderr-text" in s]
