"""Reading a rotation command's text: the panel, the reason, the agents.

The shared pieces every operation's parser uses (``handlers.ops.<op>.parse``): a
``Parsed`` request, the panel (left out when only one is configured), the reason
(3 to 500 characters) and the secrets this product does not rotate. No I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from handlers import messages as m

MAX_REASON = 500
MAX_AGENTS = 500
MIN_REASON = 3
#: The reference panel's ``agents.name`` is VARCHAR(100); the engine carries any name but NUL
MAX_AGENT_NAME = 100
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}  # Slack's clients may send curly quotes
_SLACK_ESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))  # what Slack escapes in a command's text
_BARE_NAME = re.compile(r"[^\s,]+")
_NEEDS_NO_QUOTES = re.compile(r"[^\s,\"'\u201c\u201d\u2018\u2019]+")
_ADMIN_WORDS = frozenset(
    {"admin", "admin-password", "admin_password", "operator", "operator-password", "password"}
)
_LICENCE_WORDS = frozenset(
    {
        "licence",
        "license",
        "licence-key",
        "license-key",
        "licence_key",
        "license_key",
        "panel_license_key",
    }
)


@dataclass(frozen=True)
class Parsed:
    """A well-formed rotation request, before anyone checked who asked."""

    op: str
    panel: str
    reason: str
    agents: tuple[str, ...] = ()
    all_agents: bool = False


def not_rotated_here(words: Sequence[str]) -> str | None:
    """The operator documentation's answer for the secrets this product does not rotate."""
    for word in words[:2]:
        lowered = word.lower().strip("`'\".,:")
        if lowered in _ADMIN_WORDS:
            return m.ADMIN_PASSWORD
        if lowered in _LICENCE_WORDS:
            return m.LICENCE_KEY
    return None


def take_panel(words: list[str], panels: Sequence[str], usage: str) -> str:
    """Pop the panel name off ``words``; with one panel configured it may be left out.

    ``usage`` is the command as it would read with a panel, for the "which panel?" answer.
    """
    if words and words[0] in panels:
        return words.pop(0)
    if len(panels) == 1:
        if words and difflib.get_close_matches(words[0], panels, n=1, cutoff=0.75):
            raise Refusal(m.unknown_panel(words[0], panels))
        return panels[0]
    if not words:
        raise Refusal(m.which_panel(usage, panels))
    raise Refusal(m.unknown_panel(words[0], panels))


class Refusal(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def reason_of(words: list[str], command: str, example: str) -> str:
    reason = " ".join(words).strip()
    if len(reason) < MIN_REASON:
        raise Refusal(m.needs_reason(command, example))
    if len(reason) > MAX_REASON:
        raise Refusal(m.reason_too_long(MAX_REASON))
    return reason




def parse_panel_reason(text: str, panels: Sequence[str], op: str, *, screen_special: bool = True) -> Parsed | str:
    """``/<op> [panel] <reason>`` -> ``Parsed``, or the sentence that says what to fix.

    ``screen_special``: answer for the secrets this product does not rotate (the admin
    password, the licence key) when the text names one ("password" in a
    ``/rotate-db-password`` reason is about the DB password, so that one does not)."""
    words = text.split()
    special = not_rotated_here(words) if screen_special else None
    if special:
        return special
    example = f"{panels[0]} suspected .env disclosure" if panels else "suspected .env disclosure"
    try:
        panel = take_panel(words, panels, f"/{op} {panels[0]} <reason>")
        special = not_rotated_here(words) if screen_special else None
        if special:
            return special
        return Parsed(op=op, panel=panel, reason=reason_of(words, f"/{op}", example))
    except Refusal as refusal:
        return refusal.message


def is_agent_name(name: str) -> bool:
    """1 to ``MAX_AGENT_NAME`` characters, none of them a control character."""
    return 0 < len(name) <= MAX_AGENT_NAME and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def take_agent_names(text: str) -> tuple[tuple[str, ...], str] | None:
    """The agent names at the start of ``text`` and the text after them, or None when
    malformed (an unclosed quote, an empty or over-long name, a control character).

    Names are separated by commas; a name with a space, a comma or a quote is quoted
    (``"Büro 1",agent-9`` or with curly quotes). Any other name the panel accepts is
    taken as it is (the engine treats names as data: docs/agents-contract.md), with
    Slack's ``&lt;``/``&gt;``/``&amp;`` turned back into what was typed."""
    names: list[str] = []
    at, text = 0, text.strip()
    while True:
        close = _QUOTES.get(text[at:at + 1])
        if close:
            end = text.find(close, at + 1)
            if end < 0:
                return None
            name, at = text[at + 1:end], end + 1
        else:
            match = _BARE_NAME.match(text, at)
            if match is None:
                return None
            name, at = match.group(0), match.end()
        for escaped, typed in _SLACK_ESCAPES:
            name = name.replace(escaped, typed)
        if not is_agent_name(name):
            return None
        names.append(name)
        if text[at:at + 1] != ",":
            break
        at += 1
        while text[at:at + 1].isspace():  # "a, b"
            at += 1
    if at < len(text) and not text[at].isspace():
        return None  # "a"b: a quote ends a name only where a comma or a space follows
    return tuple(names), text[at:]


def agent_names_text(names: tuple[str, ...] | list[str]) -> str:
    """Names as ``take_agent_names`` reads them back: quoted where a space, comma or quote needs it."""
    def one(name: str) -> str:
        if _NEEDS_NO_QUOTES.fullmatch(name):
            return name
        opening = next((o for o, c in _QUOTES.items() if c not in name), '"')
        return f"{opening}{name}{_QUOTES[opening]}"

    return ", ".join(one(name) for name in names)
