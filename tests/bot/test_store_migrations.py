"""Versioned store migrations, from the previous release's store, on SQLite and MariaDB
(issue 22, item 4)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.audit_key import AuditKey
from bot.errors import StoreError
from bot.store import Store, migrations, open_backend, open_store
from handlers.rotation_request import Person
from tests.bot import previous_store_schema
from tests.bot.test_store import a_request

KEY = AuditKey.generate()
ALICE = Person("T0TEAM", "U0ALICE")


def previous_release_store(url: str) -> Store:
    """The store as the bot before versioned migrations made it: its own CREATE statements
    (frozen in tests/bot/previous_store_schema.py), no schema_migrations table."""
    backend = open_backend(url)
    conn = backend.connection()
    cursor = conn.cursor()
    for statement in previous_store_schema.MYSQL if backend.mysql else previous_store_schema.SQLITE:
        cursor.execute(statement)
    cursor.close()
    return Store(backend, time.time, KEY)  # not migrated: the old bot wrote through it


def tables(store: Store) -> set[str]:
    with store.transaction() as tx:
        if store._backend.mysql:
            rows = tx.all("SHOW TABLES")
        else:
            rows = tx.all("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(r[0]) for r in rows}


def test_a_previous_release_store_keeps_its_data_and_gains_the_schema_version(any_store_url: str) -> None:
    old = previous_release_store(any_store_url)
    request = a_request()
    old.create(request, actor=ALICE.key)
    assert old.claim_reminder("prod-eu", "PANEL_ENCRYPTION_KEY", 86400)
    with old.transaction() as tx:  # as 0.1.0 wrote an enrollment: no status, no DM columns
        tx.execute("INSERT INTO totp_enrollments (user_id, sealed_secret, enrolled_at, last_step) "
                   "VALUES (?, ?, ?, ?)", ("U0ALICE", "sealed-secret-text", 1_700_000_000.0, 7))
    old.remember_home_viewer("T0TEAM", "U0ALICE")
    entries, head = old.audit_snapshot()
    assert "schema_migrations" not in tables(old)
    old.close()

    store = open_store(any_store_url, audit_key=KEY)

    assert store.schema_version() == migrations.latest()
    assert store.get(request.id) == request
    assert store.last_reminder("prod-eu", "PANEL_ENCRYPTION_KEY") is not None
    enrollment = store.enrollment("U0ALICE")
    assert enrollment is not None
    assert (enrollment.sealed_secret, enrollment.last_step, enrollment.status) == ("sealed-secret-text", 7, "active")
    assert store.audit_snapshot() == (entries, head)
    store.close()


def test_migrations_apply_once_each_in_order(any_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration appended after this release runs once, on top of the data, in both dialects."""
    open_store(any_store_url, audit_key=KEY).close()
    added = migrations.Migration(
        migrations.latest() + 1,
        "a probe table",
        ("CREATE TABLE probe_rows (id INTEGER PRIMARY KEY, note VARCHAR(20) NOT NULL)",
         "INSERT INTO probe_rows (id, note) VALUES (1, 'added once')"),
        ("CREATE TABLE probe_rows (id INT PRIMARY KEY, note VARCHAR(20) NOT NULL) ENGINE=InnoDB",
         "INSERT INTO probe_rows (id, note) VALUES (1, 'added once')"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, added))

    for _ in range(2):  # a restart: nothing applied twice (a second CREATE TABLE would fail)
        store = open_store(any_store_url, audit_key=KEY)
        with store.transaction() as tx:
            rows = tx.all("SELECT id, note FROM probe_rows")
        assert ([(1, "added once")], added.version) == ([tuple(r) for r in rows], store.schema_version())
        store.close()


def test_a_store_from_a_newer_bot_is_refused_naming_the_upgrade(
    any_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = migrations.Migration(migrations.latest() + 1, "from the future", ("SELECT 1",), ("SELECT 1",))
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, newer))
        open_store(any_store_url, audit_key=KEY).close()

    with pytest.raises(StoreError) as caught:
        open_store(any_store_url, audit_key=KEY)

    assert f"has schema version {newer.version}, from a newer bot" in caught.value.message
    assert "upgrade this bot" in caught.value.message


def test_migration_numbers_must_follow_each_other() -> None:
    """Two helpers appending the same number is caught before any statement runs."""
    one = migrations.MIGRATIONS[0]
    with pytest.raises(ValueError, match=r"numbered 1\.\.2 in order"):
        migrations.check_order((one, migrations.Migration(1, "twice", (), ())))


def test_the_frozen_previous_schema_is_what_version_1_creates(tmp_path: Path) -> None:
    """Version 1 is exactly the previous release's tables: adopting an old store changes nothing."""
    assert migrations.MIGRATIONS[0].sqlite == previous_store_schema.SQLITE
    assert migrations.MIGRATIONS[0].mysql == previous_store_schema.MYSQL


def test_a_store_that_already_has_the_enrollment_columns_is_adopted(any_store_url: str) -> None:
    """A store made between the enrollment columns (ADDED_COLUMNS) and versioning has them but no
    ``schema_migrations``: migration 2 finds them and adds nothing."""
    from bot.store import schema

    old = previous_release_store(any_store_url)
    with old.transaction() as tx:
        for table, column, definition in schema.ADDED_COLUMNS:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    old.close()

    store = open_store(any_store_url, audit_key=KEY)

    assert store.schema_version() == migrations.latest()
    store.close()


def test_doctor_reads_a_previous_release_store_without_migrating_it(
    any_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor changes nothing: on a store the bot has not migrated yet it says so, and the
    store keeps its old schema (the bot migrates it when it starts)."""
    from types import SimpleNamespace

    from bot import doctor
    from bot.enrollment_key import KEY_ENV, EnrollmentKey

    previous_release_store(any_store_url).close()
    monkeypatch.setenv(KEY_ENV, EnrollmentKey.generate().hex())
    settings = SimpleNamespace(step_up_anywhere=True, store_url=any_store_url)

    (check,) = doctor.enrollment_checks(settings)

    assert check.ok and f"schema version 0 of {migrations.latest()}" in check.finding
    backend = open_backend(any_store_url)
    assert "schema_migrations" not in tables(Store(backend, time.time, KEY))
    backend_store = open_store(any_store_url, audit_key=KEY)  # the bot's start migrates it
    assert backend_store.schema_version() == migrations.latest()
    (after,) = doctor.enrollment_checks(settings)
    assert after.ok and "opens all 0 stored TOTP secret" in after.finding
