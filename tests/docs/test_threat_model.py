"""docs/threat-model.md points each "cannot" at a test: every one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_the_threat_model_names_exists() -> None:
    text = (REPO / "docs" / "threat-model.md").read_text(encoding="utf-8")
    cited = set(CITED.findall(text))
    assert len(cited) >= 30, cited
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.M)
    ]
    assert missing == []


def test_every_cannot_of_every_actor_points_at_a_test() -> None:
    """Each actor's section has a "Cannot" list, and each of its items names a test."""
    text = (REPO / "docs" / "threat-model.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 7, [s.splitlines()[0] for s in sections]
    unproven = []
    for section in sections:
        title, _, body = section.partition("\n")
        cannot = body.split("**Cannot**", 1)
        assert len(cannot) == 2, f"{title}: no Cannot list"
        listed = cannot[1].removeprefix(":").strip().split("\n\n", 1)[0]  # the list: up to its blank line
        items = re.split(r"^\* ", listed, flags=re.M)[1:]
        assert items, f"{title}: an empty Cannot list"
        unproven += [f"{title}: {item[:60]}" for item in items if not CITED.search(item)]
    assert unproven == []
