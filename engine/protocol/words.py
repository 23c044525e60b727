"""Counts in words: ``1 value``, ``2 values``, ``1,204 values`` (the engine's step details and
CLI output, and the bot's Slack messages, all say them this one way)."""

from __future__ import annotations


def plural(n: int | float, word: str, words: str | None = None) -> str:
    """The count (with thousands separators) and the noun that agrees with it.

    ``words`` is the plural when adding an "s" is wrong (``person``/``people``)."""
    return f"{int(n):,} {word if n == 1 else (words or word + 's')}"


def verb(n: int | float, one: str, many: str) -> str:
    """``does``/``do``, ``opens``/``open``: the verb that agrees with a count of ``n``."""
    return one if n == 1 else many
