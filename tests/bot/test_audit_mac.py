"""A stored MAC is compared whole: altering any digit past the 16 an anchor shows is found.

An insider with write access to the store (not the audit key) alters an entry's stored MAC
after its 16th hex digit and moves the head to match. A verifier comparing a prefix (the 16
digits a closing summary shows) would pass it; every digit must count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bot.audit
from bot.audit import Anchor, AuditLog
from bot.audit_key import AuditKey
from bot.store import Store, open_store

KEY = AuditKey.generate()


def a_log(url: str, entries: int = 5) -> tuple[Store, AuditLog]:
    store = open_store(url, audit_key=KEY)
    audit = AuditLog(store)
    for n in range(1, entries + 1):
        audit.append("request.approved", f"r-{n}", "T0TEAM/U0BOB", {"n": n})
    return store, audit


def altered(mac: str, digit: int) -> str:
    """``mac`` with the hex digit at ``digit`` (0-based) changed, and nothing else."""
    flipped = "0" if mac[digit] != "0" else "1"
    return mac[:digit] + flipped + mac[digit + 1 :]


@pytest.mark.parametrize("digit", [16, 40, 63])
def test_the_last_entrys_mac_altered_past_its_16th_digit_with_the_head_moved_is_found(
    any_store_url: str, digit: int
) -> None:
    """The head is moved to the altered MAC, so chain and head agree; the 16-digit anchor from
    Slack still matches it. Only the full MAC check can tell, and it does."""
    store, audit = a_log(any_store_url)
    anchor = audit.anchor()
    last = list(store.audit_entries())[-1]
    forged = altered(last["hash"], digit)
    assert forged[:16] == anchor.digest
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET hash = ? WHERE seq = 5", (forged,))
        tx.execute("UPDATE audit_head SET seq = 5, hash = ? WHERE id = 1", (forged,))

    report = audit.verify([anchor])

    assert report.ok is False
    assert ["entry 5: content does not match its HMAC (changed)"] == report.problems
    assert report.summary().startswith("audit log NOT verified (1 problems):")
    store.close()


def test_a_middle_entrys_mac_altered_past_its_16th_digit_and_relinked_is_found(tmp_path: Path) -> None:
    """Entry 3's MAC altered at digit 20, entry 4 relinked to it: both fail their HMAC."""
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    third = list(store.audit_entries())[2]
    forged = altered(third["hash"], 20)
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET hash = ? WHERE seq = 3", (forged,))
        tx.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = 4", (forged,))
    report = audit.verify()
    assert [
        "entry 3: content does not match its HMAC (changed)",
        "entry 4: content does not match its HMAC (changed)",
    ] == report.problems
    store.close()


def test_every_mac_and_link_is_compared_whole_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each entry's MAC, each link and the head go through ``hmac.compare_digest`` with all 64
    digits on both sides; an anchor with fewer than 16 digits never matches."""
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}", entries=3)
    compared: list[tuple[Any, Any]] = []
    real = bot.audit.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(bot.audit.hmac, "compare_digest", spy)
    assert audit.verify().ok
    assert len(compared) == 3 * 2 + 1, "a MAC and a link per entry, and the head"
    assert {(64, 64)} == {(len(a), len(b)) for a, b in compared}

    short = Anchor(3, audit.anchor().digest[:8])
    report = audit.verify([short])
    assert report.ok is False and report.anchors_checked == []
    store.close()
