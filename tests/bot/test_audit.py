"""The audit log: an HMAC chain whose key is kept outside the store, anchored outside it too.

Each tampering case an insider with write access to the store (but not the
audit key) can try must end in "NOT verified" with the reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bot.audit import Anchor, AuditLog, read_export, verify_entries
from bot.audit_key import AuditKey
from bot.store import Store, open_store
from bot.store.audit_chain import canonical, entry_hash
from tests.bot.conftest import BOB, CHANNEL, MakeBot, wait_until

KEY = AuditKey.generate()


def a_log(url: str, entries: int = 5, key: AuditKey = KEY) -> tuple[Store, AuditLog]:
    store = open_store(url, audit_key=key)
    audit = AuditLog(store)
    for n in range(1, entries + 1):
        audit.append("request.approved", f"r-{n}", "T0TEAM/U0BOB", {"n": n, "reason": "täst"})
    return store, audit


def rehash_from(store: Store, first: int, key: AuditKey | None) -> None:
    """What an insider does after editing entry ``first``: recompute every hash after it and
    move the head (with ``key=None``: plain SHA-256, all one can do without the audit key)."""
    import hashlib

    entries = list(store.audit_entries())
    prev = entries[first - 2]["hash"] if first > 1 else "0" * 64
    with store.transaction() as tx:
        for entry in entries[first - 1 :]:
            fields = {k: entry[k] for k in ("seq", "ts_ms", "kind", "request_id", "actor", "data")}
            if key is None:
                material = canonical([*fields.values(), prev]).encode()
                digest = hashlib.sha256(material).hexdigest()
            else:
                digest = entry_hash(key, **fields, prev_hash=prev)
            tx.execute(
                "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?",
                (prev, digest, entry["seq"]),
            )
            prev = digest
        tx.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (entries[-1]["seq"], prev))


def test_an_untouched_log_verifies_against_its_anchor(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    anchor = audit.anchor()
    report = audit.verify([anchor])
    assert (report.ok, report.entries, report.problems, report.anchors_checked) == (True, 5, [], [anchor])
    assert report.summary().startswith("audit log verified: 5 entries, head #5 ")
    assert store.audit_head() == (5, report.head_hash)
    store.close()


def test_without_an_anchor_the_report_says_a_cut_tail_is_not_ruled_out(tmp_path: Path) -> None:
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    report = audit.verify()
    assert report.ok
    assert report.summary().startswith("audit log intact but NOT anchored: 5 entries")
    store.close()


@pytest.mark.parametrize(
    ("column", "value", "flagged"),
    [
        ("seq", 30, 30),
        ("ts_ms", 1, 3),
        ("kind", "request.denied", 3),
        ("request_id", "r-other", 3),
        ("actor", "T0TEAM/U0MALLORY", 3),
        ("data", '{"n":3,"reason":"other"}', 3),
        ("prev_hash", "f" * 64, 3),
    ],
)
def test_every_field_the_hmac_covers_is_checked(tmp_path: Path, column: str, value: object, flagged: int) -> None:
    """Changing any one stored field of entry 3 (without re-signing) breaks that entry's HMAC."""
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    with store.transaction() as tx:
        tx.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = 3", (value,))
    report = audit.verify()
    assert report.ok is False
    assert f"entry {flagged}: content does not match its HMAC (changed)" in report.problems
    store.close()


def test_a_removed_entry_is_found(any_store_url: str) -> None:
    store, audit = a_log(any_store_url)
    with store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq = 2")
    report = audit.verify()
    assert report.ok is False
    assert report.problems[:2] == [
        "entry 3: expected sequence number 2 (removed or reordered)",
        "entry 3: does not follow the entry before it (removed or reordered)",
    ]
    store.close()


def test_removing_the_last_entries_is_found_through_the_head(tmp_path: Path) -> None:
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    with store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq >= 4")
    assert audit.verify().problems == [
        "the log ends at entry 3 but its head records entry 5 "
        "(entries removed at the end, or the head was changed)"
    ]
    store.close()


def test_a_cut_tail_with_the_head_moved_back_is_found_through_the_anchor(any_store_url: str) -> None:
    """Delete the last 2 entries and move the head back: the anchor seen in Slack still says 5."""
    store, audit = a_log(any_store_url)
    anchor = audit.anchor()
    entry_3 = list(store.audit_entries())[2]
    with store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq >= 4")
        tx.execute("UPDATE audit_head SET seq = 3, hash = ? WHERE id = 1", (entry_3["hash"],))
    report = audit.verify([anchor])
    assert report.ok is False
    assert report.problems == [
        f"anchor {anchor} shows the log reached entry 5, but it ends at entry 3: "
        "entries were removed from the end"
    ]
    assert report.summary().startswith("audit log NOT verified (1 problems):")
    store.close()


def test_an_edited_entry_re_hashed_without_the_key_is_found(tmp_path: Path) -> None:
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'T0TEAM/U0MALLORY' WHERE seq = 3")
    rehash_from(store, 3, key=None)
    assert audit.verify().problems == [
        "entry 3: content does not match its HMAC (changed)",
        "entry 4: content does not match its HMAC (changed)",
        "entry 5: content does not match its HMAC (changed)",
    ]
    store.close()


def test_a_log_re_signed_with_the_key_is_still_caught_by_an_older_anchor(tmp_path: Path) -> None:
    """Even the key's holder cannot rewrite what an anchor in Slack already pinned."""
    store, audit = a_log(f"sqlite://{tmp_path / 's.db'}")
    anchor = audit.anchor()
    with store.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'T0TEAM/U0MALLORY' WHERE seq = 3")
    rehash_from(store, 3, key=KEY)
    report = audit.verify([anchor])
    assert report.problems == [f"entry 5 does not match anchor {anchor}: the log was rewritten"]
    store.close()


def test_the_wrong_key_is_named_once_not_per_entry(tmp_path: Path) -> None:
    store, _ = a_log(f"sqlite://{tmp_path / 's.db'}")
    other = AuditKey.generate()
    report = AuditLog(open_store(f"sqlite://{tmp_path / 's.db'}", audit_key=other)).verify()
    assert report.problems == [
        f"none of the 5 entries matches its HMAC under audit key {other.fingerprint}: "
        "the wrong key, or the whole log was re-hashed"
    ]
    store.close()


def test_a_store_without_the_key_refuses_to_append(tmp_path: Path) -> None:
    from bot.errors import StoreError

    store = open_store(f"sqlite://{tmp_path / 's.db'}")
    with pytest.raises(StoreError, match="without the audit key"):
        AuditLog(store).append("a", "r-1", "x", {})
    assert list(store.audit_entries()) == []
    store.close()


def exported(store: Store, since: float | None = None) -> list[str]:
    out = io.StringIO()
    AuditLog(store).export(out, since=since)
    return out.getvalue().splitlines(keepends=True)


def test_an_export_verifies_on_its_own_and_ends_with_its_signed_head(any_store_url: str) -> None:
    store, _ = a_log(any_store_url)
    lines = exported(store)
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert (first["seq"], first["kind"], first["data"], first["time"].endswith("Z")) == (
        1,
        "request.approved",
        {"n": 1, "reason": "täst"},
        True,
    )
    assert (last["export_head"]["last_seq"], last["export_head"]["entries"]) == (5, 5)
    export = read_export(io.StringIO("".join(lines)))
    assert verify_entries(export.entries, KEY, export=export).ok
    store.close()


@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        (slice(0, -1), "the export has no head record: lines were cut off its end"),
        (slice(0, -2), "the export has no head record: lines were cut off its end"),
        (
            [0, 1, 2, 3, 5],
            "the export holds 4 entries up to entry 4, but its head record says 5 up to entry 5",
        ),
        ([1, 2, 3, 4, 5], "entry 2: expected sequence number 1 (removed or reordered)"),
        ([0, 1, 3, 4, 5], "entry 4: expected sequence number 3 (removed or reordered)"),
    ],
    ids=["head-line", "last-entry-and-head", "last-entry", "first-entry", "middle-entry"],
)
def test_lines_cut_off_an_export_are_found(tmp_path: Path, cut: slice | list[int], problem: str) -> None:
    store, _ = a_log(f"sqlite://{tmp_path / 's.db'}")
    lines = exported(store)
    kept = lines[cut] if isinstance(cut, slice) else [lines[i] for i in cut]
    export = read_export(io.StringIO("".join(kept)))
    report = verify_entries(export.entries, KEY, export=export)
    assert report.ok is False
    assert any(p.startswith(problem) for p in report.problems), report.problems
    store.close()


def test_a_forged_export_head_is_found(tmp_path: Path) -> None:
    """Cut the last entry and write a head record that matches: without the key its HMAC fails."""
    store, _ = a_log(f"sqlite://{tmp_path / 's.db'}")
    lines = exported(store)
    head = json.loads(lines[-1])
    fourth = json.loads(lines[3])
    head["export_head"].update(last_seq=4, last_hash=fourth["hash"], entries=4)
    export = read_export(io.StringIO("".join([*lines[:4], json.dumps(head) + "\n"])))
    assert verify_entries(export.entries, KEY, export=export).problems == [
        "the export's head record does not match its HMAC: it was changed, or the wrong audit key is in use"
    ]
    store.close()


def test_an_export_since_a_time_verifies_from_its_first_entry(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = open_store(f"sqlite://{tmp_path / 's.db'}", clock=lambda: now[0], audit_key=KEY)
    audit = AuditLog(store)
    audit.append("a", "r-1", "x", {})
    now[0] += 3600
    audit.append("b", "r-2", "x", {})
    lines = exported(store, since=now[0] - 60)
    assert [json.loads(line).get("kind") for line in lines] == ["b", None]
    export = read_export(io.StringIO("".join(lines)))
    report = verify_entries(export.entries, KEY, export=export, anchors=[audit.anchor()])
    assert (report.ok, report.entries) == (True, 1)
    store.close()


def test_an_anchor_is_read_from_the_summary_text_and_the_command_line() -> None:
    assert Anchor.parse("57:3F9A0C1D2E4B5A6F") == Anchor(57, "3f9a0c1d2e4b5a6f")
    assert Anchor.parse("audit #57 3f9a0c1d2e4b5a6f") == Anchor(57, "3f9a0c1d2e4b5a6f")
    from bot.errors import BotError

    with pytest.raises(BotError, match="is not SEQ:DIGEST"):
        Anchor.parse("57:3f9a")


def test_a_closing_summary_shows_the_chain_position_that_verifies_the_log(make_bot: MakeBot) -> None:
    """The summary's `audit #SEQ DIGEST` pins the log's head outside the store."""
    from bot.audit import anchors_in

    bot = make_bot()
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    summary = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done").text
    wait_until(lambda: bot.store.get(request_id).outcome.get("reported") is True)
    [anchor] = anchors_in(summary, "the summary")
    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    finished = [e for e in bot.store.audit_entries() if e["kind"] == "request.finished"]
    assert (anchor.seq, anchor.text() in card) == (finished[0]["seq"], True)
    assert bot.rotator.audit.verify([anchor]).ok
    with bot.store.transaction() as tx:  # cut the tail back to before the run, head moved too
        tx.execute("DELETE FROM audit_log WHERE seq > 3")
        tx.execute("UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    assert bot.rotator.audit.verify([anchor]).ok is False


def test_verifying_while_the_bot_appends_never_reports_a_false_problem(any_store_url: str) -> None:
    """Entries and head are read in one transaction: a concurrent append can't look like a cut."""
    import threading

    store, audit = a_log(any_store_url, entries=1)
    done = threading.Event()

    def append() -> None:
        writer = open_store(any_store_url, audit_key=KEY)
        for n in range(150):
            AuditLog(writer).append("engine.step", "r-1", "engine", {"n": n})
        writer.close()
        done.set()

    thread = threading.Thread(target=append)
    thread.start()
    reports = []
    while not done.is_set():
        reports.append(audit.verify())
    thread.join()
    assert [r.problems for r in reports if not r.ok] == []
    assert audit.verify().entries == 151
    store.close()
