"""Slack messages as a terminal shows them: the card's blocks (fields as "Label: value"), the thread a line per step.

Slack renders ``<@U0ALICE>`` as @alice, ``<!subteam^S0ONCALL>`` as @oncall,
``*bold*`` as bold, ```code``` in a fixed font and ``:key:`` as an emoji; so
does this (without the fonts), with the names the demo gave its people and groups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

EMOJI: dict[str, str] = {
    "key": "🔑",
    "robot_face": "🤖",
    "white_check_mark": "✅",
    "ballot_box_with_check": "☑️",
    "rotating_light": "🚨",
    "sos": "🆘",
    "warning": "⚠️",
    "no_entry": "⛔",
    "no_entry_sign": "🚫",
    "x": "❌",
    "hourglass": "⌛",
    "hourglass_flowing_sand": "⏳",
    "arrows_counterclockwise": "🔄",
}
_USER = re.compile(r"<@([A-Z0-9]+)>")
_GROUP = re.compile(r"<!subteam\^([A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([A-Z0-9]+)(?:\|[^>]*)?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_CODE = re.compile(r"`([^`\n]+)`")
_EMOJI = re.compile(r":([a-z0-9_+-]+):")


def plain(text: str, names: Mapping[str, str]) -> str:
    """``mrkdwn`` as Slack shows it; ``names`` maps user, group and channel ids to names."""
    text = _USER.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    text = _GROUP.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    text = _CHANNEL.sub(lambda m: "#" + names.get(m.group(1), m.group(1)), text)
    text = _BOLD.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    return _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)


def card(message: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """A message's blocks as lines: sections and context as text, buttons as ``[ Approve ]``."""
    lines: list[str] = []
    for block in message.get("blocks") or []:
        kind = block.get("type")
        if kind == "section":
            lines += plain(str(block.get("text", {}).get("text", "")), names).splitlines()
            for field in block.get("fields") or []:  # "*Label*\nvalue" as "Label: value"
                label, _, value = str(field.get("text", "")).partition("\n")
                lines.append(plain(f"{label}: {value}" if value else label, names))
        elif kind == "context":
            lines.append(
                " · ".join(plain(str(e.get("text", "")), names) for e in block.get("elements", []))
            )
        elif kind == "actions":
            lines.append(
                "  ".join(f"[ {e.get('text', {}).get('text', '?')} ]" for e in block["elements"])
            )
    return lines or plain(str(message.get("text", "")), names).splitlines()


def has_fields(message: Mapping[str, Any]) -> bool:
    return any(block.get("fields") for block in message.get("blocks") or [])


def one_line(text: str, names: Mapping[str, str]) -> str:
    """A thread reply on one line: its own lines joined with `` · ``."""
    return " · ".join(part.strip() for part in plain(text, names).splitlines() if part.strip())
