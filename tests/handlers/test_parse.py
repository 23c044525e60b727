"""Reading slash-command text: panel, agents, reason; and what is not ours to rotate."""

from __future__ import annotations

import pytest

from handlers import messages as m
from handlers.ops.agents import parse as parse_rotate_agent
from handlers.ops.key import parse as parse_rotate_key
from handlers.parsing import Parsed

PANELS = ["prod-eu", "prod-us"]


@pytest.mark.parametrize(
    ("text", "panels", "expected"),
    [
        (
            "prod-eu suspected .env disclosure",
            PANELS,
            Parsed("rotate-key", "prod-eu", "suspected .env disclosure"),
        ),
        ("  prod-us   laptop  stolen ", PANELS, Parsed("rotate-key", "prod-us", "laptop stolen")),
        ("laptop stolen", ["prod-eu"], Parsed("rotate-key", "prod-eu", "laptop stolen")),
    ],
)
def test_rotate_key_reads_panel_and_reason(text: str, panels: list[str], expected: Parsed) -> None:
    assert parse_rotate_key(text, panels) == expected


@pytest.mark.parametrize(
    ("text", "panels", "expected"),
    [
        ("prod-eu", PANELS, m.needs_reason("/rotate-key", "prod-eu suspected .env disclosure")),
        ("", ["prod-eu"], m.needs_reason("/rotate-key", "prod-eu suspected .env disclosure")),
        ("prod-ue leaked", PANELS, "Unknown panel `prod-ue`. Known panels: prod-eu, prod-us."),
        (
            "",
            PANELS,
            "Which panel? Known panels: prod-eu, prod-us. Name it, e.g. `/rotate-key prod-eu &lt;reason&gt;`.",
        ),
        ("prod-eu " + "x" * 501, PANELS, "Please keep the reason under 500 characters."),
        ("admin password", PANELS, m.ADMIN_PASSWORD),
        ("prod-eu operator password please", PANELS, m.ADMIN_PASSWORD),
        ("licence", PANELS, m.LICENCE_KEY),
        ("prod-us PANEL_LICENSE_KEY", PANELS, m.LICENCE_KEY),
    ],
)
def test_rotate_key_says_what_to_fix(text: str, panels: list[str], expected: str) -> None:
    assert parse_rotate_key(text, panels) == expected


def test_a_reason_that_mentions_the_licence_is_still_a_key_rotation() -> None:
    """Only the first words name a target; "licence" later in a reason is just a reason."""
    assert parse_rotate_key("prod-eu .env with licence key leaked", PANELS) == Parsed(
        "rotate-key", "prod-eu", ".env with licence key leaked"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "agent-7 prod-eu lost laptop",
            Parsed("rotate-agent", "prod-eu", "lost laptop", ("agent-7",)),
        ),
        (
            "agent-7,agent-9,agent-7 prod-us leaked",
            Parsed("rotate-agent", "prod-us", "leaked", ("agent-7", "agent-9")),
        ),
        (
            "--all prod-eu yearly rotation",
            Parsed("rotate-agent", "prod-eu", "yearly rotation", (), True),
        ),
    ],
)
def test_rotate_agent_reads_agents_panel_and_reason(text: str, expected: Parsed) -> None:
    assert parse_rotate_agent(text, PANELS) == expected


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("", "`/rotate-agent` needs the agents to rotate"),
        ('"agent-7 prod-eu x y', "`/rotate-agent` needs the agents to rotate"),  # an unclosed quote
        ('"a"b prod-eu x y', "`/rotate-agent` needs the agents to rotate"),
        ('"" prod-eu x y', "`/rotate-agent` needs the agents to rotate"),
        ("a" * 101 + " prod-eu x y", "`/rotate-agent` needs the agents to rotate"),  # the panel's VARCHAR(100)
        (
            "agent-7 prod-eu",
            "`/rotate-agent` needs a reason, e.g. `/rotate-agent agent-7 lost laptop`.",
        ),
        ("agent-7 nowhere because", "Unknown panel `nowhere`."),
    ],
)
def test_rotate_agent_says_what_to_fix(text: str, starts: str) -> None:
    answer = parse_rotate_agent(text, PANELS)
    assert isinstance(answer, str) and answer.startswith(starts)


#: Names the panel accepts and the engine carries as data (tests/agents/test_edges.py), less
#: those with a control character, which a slash command cannot carry.
from tests.agents.test_edges import HOSTILE_NAMES  # noqa: E402

TYPED_NAMES = [n for n in HOSTILE_NAMES if not any(ord(c) < 32 for c in n)] + ["Büro 1, Keller", "agent;rm"]


def _as_slack_sends(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.parametrize("name", TYPED_NAMES)
def test_any_name_the_panel_accepts_can_be_named_in_the_command(name: str) -> None:
    """Written as the help says (quoted where needed) and sent as Slack sends it, every name
    reaches the request exactly; with another name beside it, in either order."""
    from handlers.parsing import agent_names_text

    typed = agent_names_text([name, "agent-9"]) + " prod-eu lost laptop"
    assert parse_rotate_agent(_as_slack_sends(typed), PANELS) == Parsed(
        "rotate-agent", "prod-eu", "lost laptop", (name, "agent-9"))
    typed = agent_names_text(["agent-9", name]) + " lost laptop"
    assert parse_rotate_agent(_as_slack_sends(typed), PANELS[:1]) == Parsed(
        "rotate-agent", PANELS[0], "lost laptop", ("agent-9", name))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('"Büro 1",agent-9 prod-eu lost laptop', ("Büro 1", "agent-9")),
        ("\u201cB\u00fcro 1\u201d, agent-9 prod-eu lost laptop", ("Büro 1", "agent-9")),  # a phone's curly quotes
        ("agent-7, agent-9 prod-eu lost laptop", ("agent-7", "agent-9")),
        ("a&amp;b,&lt;x&gt; prod-eu lost laptop", ("a&b", "<x>")),
    ],
)
def test_quoted_curly_spaced_and_escaped_names(text: str, names: tuple[str, ...]) -> None:
    parsed = parse_rotate_agent(text, PANELS)
    assert isinstance(parsed, Parsed)
    assert (parsed.agents, parsed.panel, parsed.reason) == (names, "prod-eu", "lost laptop")
