"""The agent settings are documented where the docs say: the example profile's [agents] section."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from engine.profile import AgentSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "panel-profile.example.toml"


def agents_section() -> str:
    text = EXAMPLE.read_text()
    return text[text.index("\n[agents]\n"):]


def test_the_example_profile_documents_every_agent_setting() -> None:
    """Each [agents] setting appears in the example, set or commented out."""
    section = agents_section()
    shown = set(re.findall(r"^#?\s*([a-z_]+)\s*=", section, re.MULTILINE))
    shown |= {"inventory"} if "[agents.inventory." in section else set()

    assert sorted(set(AgentSettings.field_names()) - shown) == []


def test_the_values_the_example_shows_are_the_defaults() -> None:
    assert AgentSettings(**tomllib.loads(EXAMPLE.read_text())["agents"]) == AgentSettings()
