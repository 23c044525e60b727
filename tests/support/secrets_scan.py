"""A session-wide registry of every secret the tests create, and a leak scanner.

Fixtures register keys, DB passwords and fixture plaintexts; tests register
what they create (``register_secret(new_key, "new PANEL_ENCRYPTION_KEY")``).
``check_report`` (wired as a ``pytest_runtest_makereport`` hook in
tests/conftest.py) fails any test whose captured stdout, stderr or log holds a
registered secret, and redacts the secret from the report, so the failure
names *which* secret leaked without printing it.

A secret is also found in the forms a careless log line would give it: JSON
or Python-repr escaped, upper-case hex. Keys register their two halves too: the
first 32 hex characters are the whole key under PHP's ascii32 reading.
Scanning costs one dictionary lookup per character of text, however many
secrets are registered (100,000-row fixtures register 100,000 plaintexts).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable

import pytest

MIN_LEN = 8
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_ESCAPED = frozenset("\\\"'")


def _variants(value: str) -> set[str]:
    forms = {value}
    if not (value.isascii() and value.isprintable() and not set(value) & _ESCAPED):
        # Plain ASCII escapes to itself (the common, fast case); anything else may not.
        forms |= {
            json.dumps(value)[1:-1],  # p\u00e4ss...
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
            repr(value.encode("utf-8"))[2:-1],  # p\xc3\xa4ss...
        }
    if _HEX.match(value):
        forms |= {value.lower(), value.upper()}
    return {form for form in forms if len(form) >= MIN_LEN}


class SecretRegistry:
    """Secrets by name; ``scan`` returns the names of those found in a text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # variant -> name
        self._by_prefix: dict[str, list[str]] = {}  # first MIN_LEN chars -> variants

    def register(self, value: str | bytes | None, name: str = "secret") -> None:
        """Remember ``value`` (str or UTF-8 bytes); values shorter than 8 characters are ignored."""
        if value is None:
            return
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = value.hex()
        if len(value) < MIN_LEN:
            return
        with self._lock:
            for form in _variants(value):
                if form not in self._names:
                    self._names[form] = name
                    self._by_prefix.setdefault(form[:MIN_LEN], []).append(form)

    def register_key(self, key_hex: str, name: str = "PANEL_ENCRYPTION_KEY") -> None:
        self.register(key_hex, name)
        self.register(key_hex[:32], f"{name} (first half)")
        self.register(key_hex[32:], f"{name} (second half)")

    def register_many(self, values: Iterable[tuple[str | bytes | None, str]]) -> None:
        for value, name in values:
            self.register(value, name)

    def scan(self, text: str) -> list[str]:
        """Names of the registered secrets found in ``text``, sorted, each once.

        A match inside a longer one (a key's half inside the whole key) is not
        reported separately.
        """
        if len(text) < MIN_LEN or not self._by_prefix:
            return []
        matches: list[tuple[int, int, str]] = []
        index = self._by_prefix
        for i in range(len(text) - MIN_LEN + 1):
            for form in index.get(text[i : i + MIN_LEN], ()):
                if text.startswith(form, i):
                    matches.append((i, i + len(form), self._names[form]))
        found: set[str] = set()
        reach = -1  # furthest end of the matches so far, by start then longest first
        for _start, end, name in sorted(matches, key=lambda m: (m[0], -m[1])):
            if end > reach:
                found.add(name)
                reach = end
        return sorted(found)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``[REDACTED <name>]``."""
        if not self.scan(text):
            return text
        hits = sorted(
            (f for f in self._names if f in text), key=len, reverse=True
        )  # longest first, so a half never splits a whole key
        for form in hits:
            text = text.replace(form, f"[REDACTED {self._names[form]}]")
        return text

    def __len__(self) -> int:
        return len(set(self._names.values()))


REGISTRY = SecretRegistry()


def register_secret(value: str | bytes | None, name: str = "secret") -> None:
    REGISTRY.register(value, name)


def scan_text(text: str) -> list[str]:
    """Names of the registered secrets that ``text`` contains (never the secrets)."""
    return REGISTRY.scan(text)


def check_report(report: pytest.TestReport, registry: SecretRegistry = REGISTRY) -> list[str]:
    """Fail ``report`` if output captured in its phase leaks a secret; redact all sections.

    A call report carries the sections of setup and call, a teardown report
    those of all three phases, so each phase checks only its own (setup output
    is checked with the call). Returns the names of the leaked secrets.
    """
    if report.when not in ("call", "teardown"):
        return []
    own_phases = ("setup", "call") if report.when == "call" else ("teardown",)
    leaked: set[str] = set()
    sections = []
    for title, content in report.sections:
        if title.startswith("Captured ") and title.rsplit(" ", 1)[-1] in own_phases:
            names = registry.scan(content)
            leaked.update(f"{name} in {title.lower()}" for name in names)
        sections.append((title, registry.redact(content)))
    report.sections = sections
    if report.failed and registry.scan(str(report.longrepr)):
        # A failing assertion or traceback quoting a secret: keep the text, not the secret.
        report.longrepr = registry.redact(str(report.longrepr))
    if leaked:
        message = "secret leaked into test output: " + "; ".join(sorted(leaked))
        if report.failed:
            report.sections.append(("secret scan", message))
        else:
            report.outcome = "failed"
            report.longrepr = message
    return sorted(leaked)
