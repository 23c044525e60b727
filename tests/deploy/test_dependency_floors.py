"""The dependency floors in pyproject.toml admit no release with a published advisory.

Each entry is the advisory's affected range (from its GHSA/CVE record): the floor must be
at or above the first fixed release, so ``pip install`` on an old mirror cannot pick a
vulnerable one. A new advisory is added here together with the raised floor.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package -> (advisory, first release that fixed it)
ADVISORIES = {
    "cryptography": [
        ("CVE-2024-26130 (NULL dereference in PKCS#12 serialisation, 38.0.0-42.0.3)", (42, 0, 4)),
        ("GHSA-h4gh-qq45-vh27 (bundled OpenSSL, 37.0.0-43.0.0)", (43, 0, 1)),
        ("CVE-2024-12797 (bundled OpenSSL, 42.0.0-44.0.0)", (44, 0, 1)),
        ("CVE-2026-69247 / GHSA-g6cj-pr64-35w5 (PKCS#7 Bleichenbacher oracle, 44.0.0-49.x)", (50, 0, 0)),
    ],
    "pymysql": [("CVE-2024-36039 (escape_dict SQL injection, through 1.1.0)", (1, 1, 1))],
}


def _floors() -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement)
        if match:
            floors[match[1].lower()] = tuple(int(part) for part in match[2].split("."))
    return floors


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_the_floor_is_past_every_published_advisory(package: str) -> None:
    floor = _floors()[package]
    padded = floor + (0,) * (3 - len(floor))
    for advisory, fixed_in in ADVISORIES[package]:
        assert padded >= fixed_in, f"{package}>={'.'.join(map(str, floor))} still admits {advisory}"
