"""Claims in README.md and docs/ that no other test reads: each checked against the code.

A doc sentence no test reads will drift; these keep the lists and tables the docs repeat
from the code (test files named as proof, the engine's exit statuses and commands, the
metrics) equal to what the code has.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "SECURITY.md", *sorted((REPO / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _engine_help() -> str:
    done = subprocess.run([sys.executable, "-I", "-m", "engine", "--help"], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout


def _words(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def test_every_test_file_and_test_the_docs_name_exists() -> None:
    named = {(doc.name, m[1], m[2]) for doc in DOCS for m in re.finditer(r"(tests/[\w/]+\.py)(?:::(test_\w+))?",
                                                                        _text(doc))}  # fmt: skip
    assert len(named) >= 20
    missing = [
        f"{doc}: {path}::{name}" if name else f"{doc}: {path}"
        for doc, path, name in sorted(named)
        if not (REPO / path).is_file()
        or (name and not re.search(rf"^(async )?def {name}\(", _text(REPO / path), re.M))
    ]
    assert missing == []


def test_the_readmes_exit_status_table_is_the_engines_help() -> None:
    """README: "The same exit status table is in --help": every clause of each status there."""
    readme = _text(REPO / "README.md")
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", readme, re.M))
    epilog = _engine_help().split("exit status:", 1)[1]
    helped = {m[1]: _words(m[2]) for m in re.finditer(r"^  (\d)  (.*?)(?=^  \d  |\Z)", epilog, re.M | re.S)}
    assert sorted(rows) == sorted(helped) == ["0", "1", "2", "3", "4"]
    for status, said in helped.items():
        row = _words(rows[status])
        clauses = [c.strip(" .") for c in re.split(r"; | (?=(?:rotate-incident|status): )", said)]
        assert [c for c in clauses if c and c not in row] == [], (status, row)


def test_the_engine_commands_the_readme_lists_are_the_engines() -> None:
    readme = _text(REPO / "README.md")
    listed = set(re.search(r"`myosicam-rotator \[--profile PROFILE\.toml\] ([\w|\\-]+)`", readme)[1]  # type: ignore[index]
                 .replace("\\", "").split("|"))  # fmt: skip
    listing = _engine_help().split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    commands = set(re.findall(r"^    ([\w-]+)", listing, re.M))
    assert listed == commands


def test_the_metrics_table_lists_what_the_bot_exposes() -> None:
    """docs/operations.md's metric table, against the families bot/metrics.py builds."""
    guide = _text(REPO / "docs" / "operations.md")
    table = set(re.findall(r"^\| `(myosicam_\w+)(?:\{[\w,]+\})?` \|", guide, re.M))
    code = _text(REPO / "bot" / "metrics.py")
    families = {
        name + ("_total" if kind == "Counter" else "")
        for kind, name in re.findall(r'(Counter|Gauge|Histogram)MetricFamily\(\s*"(myosicam_\w+)"', code)
    }
    assert len(families) == 9 and table == families


def test_the_guides_offboarding_words_and_people_commands_are_the_bots() -> None:
    """docs/operations.md, Offboarding: the Home tab's line is the one the bot shows, and the
    `python -m bot people` commands it gives parse as written (their runs:
    tests/bot/test_offboarded_people.py)."""
    from handlers.ops.fleet import OFFBOARDED_HOME, RESTORE_HINT

    guide = _words(_text(REPO / "docs" / "operations.md"))
    assert _words(OFFBOARDED_HOME + RESTORE_HINT.split(" (")[0]) in guide
    assert "python -m bot people restore" in _words(RESTORE_HINT)
    from bot.__main__ import _parser

    given = re.findall(r"^python -m bot (people [^#\n]*?)\s*(?:#.*)?$", _text(REPO / "docs" / "operations.md"), re.M)
    assert len(given) == 2
    for command in given:
        args = _parser().parse_args([w.strip('"') for w in re.findall(r'"[^"]*"|\S+', command)])
        assert args.command == "people", command


def test_probe_after_an_upgrade_names_a_missing_escrow_line(panel_factory) -> None:  # type: ignore[no-untyped-def]
    """docs/operations.md, Upgrades: "`myosicam-rotator probe` on each panel host also tells
    you whether its profile needs the new `escrow` line" (a 0.1.0 profile has none)."""
    from tests.engine.runner import run_engine

    guide = _words(_text(REPO / "docs" / "operations.md"))
    assert "myosicam-rotator probe on each panel host also tells you whether its profile needs the new escrow line" \
        in guide
    panel = panel_factory(rows=2)
    probe = run_engine(panel.write_profile(escrow=None), "probe")

    assert probe.returncode == 2, probe.stdout + probe.stderr
    assert 'escrow = "none"' in probe.stdout + probe.stderr and "escrow_command" in probe.stdout + probe.stderr
