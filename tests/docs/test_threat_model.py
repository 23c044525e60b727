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
