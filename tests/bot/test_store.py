"""The state store, on SQLite and on MariaDB: compare-and-swap, history, deliveries."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bot.audit import AuditLog
from bot.audit_key import AuditKey
from bot.errors import StoreError
from bot.store import open_store
from handlers.plan_view import PlanView
from handlers.rotation_request import Decision, Person, RotationRequest, State

KEY = AuditKey.generate()
ALICE = Person("T0TEAM", "U0ALICE")
BOB = Person("T0TEAM", "U0BOB")


def a_request(
    request_id: str = "r-20261126-031402-7f3a", expires_in: float = 1800
) -> RotationRequest:
    now = time.time()
    plan = PlanView(
        panel="prod-eu",
        op="rotate-key",
        engine_version="0.4.0",
        host_key_fingerprint="SHA256:abc",
        columns={"oscam_installs.webif_password": 812, "email_settings.smtp_password": 1},
        skipped=("email_configurations",),
        total=813,
    )
    return RotationRequest(
        id=request_id,
        op="rotate-key",
        panel="prod-eu",
        reason="suspected disclosure",
        requester=ALICE,
        channel_id="C0ROTATE",
        plan=plan,
        created_at=now,
        expires_at=now + expires_in,
    )


def test_a_request_comes_back_as_it_was_stored(any_store_url: str) -> None:
    store = open_store(any_store_url, audit_key=KEY)
    request = a_request()
    store.create(request, actor=ALICE.key)
    assert store.get(request.id) == request
    assert list(store.get(request.id).plan.columns) == list(request.plan.columns)
    store.close()


def test_an_update_wins_only_against_the_version_it_read(any_store_url: str) -> None:
    """Two writers read version 1: the first update wins, the second gets None, changes nothing."""
    store = open_store(any_store_url, audit_key=KEY)
    request = a_request()
    store.create(request, actor=ALICE.key)
    approved = request.evolve(state=State.APPROVED, approvals=(Decision(BOB, time.time()),))
    cancelled = request.evolve(state=State.CANCELLED, decision=Decision(ALICE, time.time()))
    first = store.update(approved, expected_version=1, event="approved", actor=BOB.key)
    second = store.update(cancelled, expected_version=1, event="cancelled", actor=ALICE.key)
    assert (first.version if first else None, second) == (2, None)
    assert store.get(request.id).state == State.APPROVED
    assert [(t.event, t.from_state, t.to_state) for t in store.history(request.id)] == [
        ("created", None, "pending"),
        ("approved", "pending", "approved"),
    ]
    store.close()


def test_concurrent_updates_from_many_threads_have_exactly_one_winner(any_store_url: str) -> None:
    store = open_store(any_store_url, audit_key=KEY)
    request = a_request()
    store.create(request, actor=ALICE.key)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def approve(n: int) -> None:
        barrier.wait()
        person = Person("T0TEAM", f"U0P{n}")
        won = store.update(
            request.evolve(state=State.APPROVED, approvals=(Decision(person, time.time()),)),
            expected_version=1,
            event="approved",
            actor=person.key,
        )
        results.append(won is not None)

    threads = [threading.Thread(target=approve, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len([t for t in store.history(request.id) if t.event == "approved"]) == 1
    store.close()


def test_two_store_objects_on_one_database_behave_as_two_replicas(any_store_url: str) -> None:
    one, two = open_store(any_store_url, audit_key=KEY), open_store(any_store_url, audit_key=KEY)
    request = a_request()
    one.create(request, actor=ALICE.key)
    assert two.update(
        request.evolve(state=State.APPROVED), expected_version=1, event="approved", actor="x"
    )
    assert (
        one.update(
            request.evolve(state=State.DENIED), expected_version=1, event="denied", actor="y"
        )
        is None
    )
    assert one.get(request.id).state == State.APPROVED
    one.close()
    two.close()


def test_queries_for_expiry_status_and_history(any_store_url: str) -> None:
    store = open_store(any_store_url, audit_key=KEY)
    due = a_request("r-20261126-031402-0001", expires_in=-5)
    later = a_request("r-20261126-031402-0002", expires_in=600)
    for r in (due, later):
        store.create(r, actor=ALICE.key)
    assert [r.id for r in store.pending_due(time.time())] == [due.id]
    assert store.next_expiry() == pytest.approx(due.expires_at)
    assert [r.id for r in store.list_in_states([State.PENDING])] == [due.id, later.id]
    store.update(
        later.evolve(state=State.DENIED), expected_version=1, event="denied", actor=BOB.key
    )
    assert [r.id for r in store.recent_final(5)] == [later.id]
    store.close()


def test_a_delivery_is_claimed_once(any_store_url: str) -> None:
    store = open_store(any_store_url, audit_key=KEY)
    assert store.claim_deliveries(["sig:a", "act:1"]) == []
    assert store.claim_deliveries(["sig:b", "act:1"]) == ["act:1"]
    assert store.claim_deliveries(["sig:a", "act:2"]) == ["sig:a"]
    assert store.purge_deliveries(older_than_s=-1) == 4
    store.close()


def test_an_unreachable_mysql_store_is_named_without_its_password() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("mysql://rotator:hunter2-very-secret@127.0.0.1:1/rotator?connect_timeout=1")
    message = str(caught.value)
    assert "hunter2-very-secret" not in message
    assert message.startswith(
        "the state store (mysql://127.0.0.1:1/rotator) could not create the tables"
    )


def test_a_mysql_store_that_accepts_and_never_greets_is_given_up_within_its_connect_timeout() -> None:
    """A wedged server (it accepts the connection, never sends its greeting) fails the
    store's opening within connect_timeout, named without its password, instead of
    holding the bot's thread for ever."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            open_store(f"mysql://rotator:hunter2-very-secret@127.0.0.1:{port}/rotator?connect_timeout=1")
        assert time.monotonic() - started < 10
        assert f"mysql://127.0.0.1:{port}/rotator" in str(raised.value)
        assert "hunter2" not in str(raised.value)
    finally:
        listener.close()


def test_a_store_url_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(StoreError, match="must start with sqlite:// or mysql://"):
        open_store("postgres://x@y/z")


def test_a_taken_request_id_is_reported_not_raised(any_store_url: str) -> None:
    """Two requests in the same second may draw the same id; the second create says so."""
    store = open_store(any_store_url, audit_key=KEY)
    assert store.create(a_request(), actor=ALICE.key) is True
    assert store.create(a_request(), actor=ALICE.key) is False
    assert len(store.history(a_request().id)) == 1
    store.close()


def test_the_sqlite_store_and_its_journal_files_are_private(tmp_path: Path) -> None:
    """Only the bot's user may read requests and the audit log: 0600, the -wal and -shm too."""
    db = tmp_path / "state" / "rotator.db"
    store = open_store(f"sqlite://{db}", audit_key=KEY)
    AuditLog(store).append("request.created", "r-1", "x", {})
    files = sorted(p.name for p in db.parent.iterdir())
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in db.parent.iterdir()}
    assert files == ["rotator.db", "rotator.db-shm", "rotator.db-wal"]
    assert modes == dict.fromkeys(files, "0o600")
    store.close()


def test_an_existing_world_readable_store_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "rotator.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    open_store(f"sqlite://{db}", audit_key=KEY).close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_pending_of_reads_one_persons_pending_requests_under_any_team(any_store_url: str) -> None:
    """The per-person cap's query: Alice's pending requests, whichever team id they carry."""
    store = open_store(any_store_url, audit_key=KEY)
    mine = a_request("r-20261126-031402-0001")
    other_team = a_request("r-20261126-031402-0002").evolve(requester=Person("T0OTHER", "U0ALICE"))
    bobs = a_request("r-20261126-031402-0003").evolve(requester=BOB)
    decided = a_request("r-20261126-031402-0004")
    for request in (mine, other_team, bobs, decided):
        store.create(request, actor=request.requester.key)
    store.update(decided.evolve(state=State.CANCELLED), expected_version=1, event="cancelled", actor="x")
    assert [r.id for r in store.pending_of("U0ALICE")] == [mine.id, other_team.id]
    assert [r.id for r in store.pending_of("U0ALICE", limit=1)] == [mine.id]
    assert (store.pending_of("%"), store.pending_of("U0ALIC_")) == ([], [])
    store.close()


def test_a_reminder_is_claimed_once_per_interval_on_either_backend(any_store_url: str) -> None:
    """``claim_reminder`` is one conditional write: the first claim wins, a second within the
    interval (another replica, or after a restart: a new store on the same database) loses,
    and one after the interval wins again; panels and secrets are counted apart."""
    now = [1_900_000_000.0]
    first = open_store(any_store_url, clock=lambda: now[0], audit_key=KEY)
    again = open_store(any_store_url, clock=lambda: now[0], audit_key=KEY)
    try:
        assert [True, False, True, True] == [
            first.claim_reminder("prod-eu", "key", 7 * 86400),
            again.claim_reminder("prod-eu", "key", 7 * 86400),
            again.claim_reminder("prod-eu", "agent:agent-7", 7 * 86400),
            again.claim_reminder("prod-us", "key", 7 * 86400),
        ]
        now[0] += 7 * 86400 - 1
        assert not first.claim_reminder("prod-eu", "key", 7 * 86400)
        now[0] += 2
        assert again.claim_reminder("prod-eu", "key", 7 * 86400)
        assert now[0] == first.last_reminder("prod-eu", "key")
    finally:
        first.close()
        again.close()
