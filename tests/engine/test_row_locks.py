"""The panel stays writable during a rotation: rows are locked from the apply to the commit only.

docs/operations.md tells operators that a panel user saving a credential while the pass
over the values or the escrow command runs does not wait for it, and that the rotation
re-seals what they saved; here a panel login does exactly that. This changed on purpose:
the rows used to stay locked from the pass to the commit, escrow included (issue 25).
"""

from __future__ import annotations

import pymysql
import pytest

from tests.engine.runner import finish, rotate, start_paused
from tests.support.php_crypto import php_encrypt
from tests.support.secrets_scan import register_secret


def _save(panel, table: str, column: str, row_id: int, value: str | None) -> None:
    """A panel login saving one value, giving up after 1 s of waiting for a row lock."""
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.execute(f"UPDATE `{table}` SET `{column}` = %s WHERE id = %s", (value, row_id))
        conn.commit()


def _saved(panel, label: str, plaintext: bytes | None, key: str) -> None:
    """Save ``plaintext`` (None: clear the field) as a panel worker holding ``key`` would,
    and tell the sandbox what the row must hold from now on."""
    column, row_id = label.split("#")
    table, col = column.split(".")
    value = None if plaintext is None else php_encrypt(panel.scheme, key, [plaintext])[0]
    _save(panel, table, col, int(row_id), value)
    panel.plaintexts[label] = plaintext
    if plaintext is None:
        panel.no_value[label] = None


def test_a_panel_write_while_the_key_is_escrowed_does_not_wait_and_is_resealed(panel_factory, tmp_path):
    panel = panel_factory(rows=6, server=True)
    old_key = panel.env_key()
    escrowed = tmp_path / "escrowed"
    escrow = tmp_path / "escrow.sh"
    escrow.write_text(f"#!/bin/sh\ncat > {escrowed}\n")
    escrow.chmod(0o700)
    profile = panel.write_profile(escrow_command=[str(escrow)])
    engine = start_paused(profile, "state:STAGED", "rotate-key", "--yes", "--json")  # escrow done, nothing applied
    try:
        assert escrowed.exists()
        register_secret(escrowed.read_text().strip(), "new PANEL_ENCRYPTION_KEY (escrow)")
        _saved(panel, "saved_servers.ssh_credential_encrypted#1", b"saved while the key was escrowed", old_key)
        _saved(panel, "email_settings.smtp_password#3", b"set where there was none", old_key)  # was NULL
        _saved(panel, "oscam_installs.webif_password#5", None, old_key)  # cleared
    finally:
        run = finish(engine)
    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "DONE"
    assert run.step("reencrypt")["resealed"] == 2  # the value saved and the value set; the cleared one dropped
    assert panel.env_key() != old_key
    assert panel.php_check_all() == []
    assert run.leaks() == []


def test_a_panel_write_during_the_pass_does_not_wait_and_is_resealed(panel_factory):
    """Paused after the pass's first batch: a row already read and a row not read yet are
    saved without waiting; both end under the new key with what the user saved."""
    panel = panel_factory(rows={"oscam_installs": 10})
    old_key = panel.env_key()
    profile = panel.write_profile(batch_size=2)
    engine = start_paused(profile, "reencrypt:batch:1", "rotate-key", "--yes", "--json")
    try:
        _saved(panel, "oscam_installs.webif_password#1", b"saved after it was read", old_key)
        _saved(panel, "oscam_installs.webif_password#9", b"saved before it was read", old_key)
    finally:
        run = finish(engine)
    assert run.returncode == 0, run.stderr
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")
    assert panel.env_key() != old_key
    assert panel.php_check_all() == []


def test_rows_are_locked_from_the_apply_to_the_commit(panel_factory):
    """Between the apply and the commit the rows are the rotation's, those without a value
    too: a save waits (here it gives up after 1 s) rather than land between the apply
    and the switch unseen."""
    panel = panel_factory(rows=6)
    old_key = panel.env_key()
    engine = start_paused(panel.profile_path, "apply:done", "rotate-key", "--yes", "--json")
    try:
        sealed = php_encrypt(panel.scheme, old_key, [b"saved while the rows are locked"])[0]
        for row_id in (1, 3):  # a row with a value, and a row without one (NULL)
            with pytest.raises(pymysql.err.OperationalError) as waited:
                _save(panel, "saved_servers", "ssh_credential_encrypted", row_id, sealed)
            assert waited.value.args[0] == 1205  # lock wait timeout
    finally:
        run = finish(engine)
    assert run.returncode == 0, run.stderr
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")
    assert panel.php_check_all() == []


def test_a_value_saved_meanwhile_that_the_key_does_not_open_stops_the_rotation(panel_factory):
    """Rule 2: a value neither key opens is never overwritten. Saved between the pass and
    the apply, it is named, nothing is committed, and every other value opens under the
    old key, still in .env. The rollback leaves that value as the panel saved it, names it
    and finishes (it used to fail its own check on that very value and keep the journal
    open): the next rotation's preflight names the value, not an unfinished rotation."""
    panel = panel_factory(rows=6)
    old_key = panel.env_key()
    engine = start_paused(panel.profile_path, "state:STAGED", "rotate-key", "--yes", "--json")
    foreign = php_encrypt(panel.scheme, "ab" * 32, [b"sealed under some other key"])[0]
    try:
        _save(panel, "email_configurations", "mailgun_api_key", 2, foreign)
    finally:
        run = finish(engine)
    assert run.returncode != 0, run.stdout[-800:]
    assert run.step("reencrypt", "failed")["detail"].startswith(
        "1 value written by the panel during the rotation does not decrypt with the current key: "
        "email_configurations.mailgun_api_key id 2"
    )
    assert "email_configurations.mailgun_api_key id 2" in run.closing["message"]
    assert panel.env_key() == old_key
    assert panel.stored_values()["email_configurations.mailgun_api_key#2"] == foreign
    assert panel.php_check_all() == ["email_configurations.mailgun_api_key#2: does not decrypt with the key"]
    assert run.closing["rolled_back"] is True
    assert run.step("rollback")["detail"].endswith(
        "1 value opens with neither key, left untouched: email_configurations.mailgun_api_key id 2"
    )
    assert "left as it was: email_configurations.mailgun_api_key id 2" in run.step("verify_old")["detail"]
    assert not (panel.root / "journal" / "rotation.json").exists()
    again = rotate(panel.profile_path)
    assert again.closing["code"] == run.closing["code"]
    assert "email_configurations.mailgun_api_key id 2" in again.step("preflight", "failed")["detail"]
    assert panel.env_key() == old_key


def test_saves_after_the_catch_up_are_resealed_under_the_lock(panel_factory):
    """Paused after the unlocked catch-up, right before the locks: a value saved, one
    cleared, one set where there was none and a row inserted all end as the user left
    them, the values under the new key: the locked apply re-seals what it finds changed."""
    panel = panel_factory(rows={"oscam_installs": 10, "email_settings": 10})
    old_key = panel.env_key()
    engine = start_paused(panel.profile_path, "apply:caught-up", "rotate-key", "--yes", "--json")
    try:
        _saved(panel, "oscam_installs.webif_password#1", b"saved right before the apply", old_key)
        _saved(panel, "oscam_installs.webif_password#2", None, old_key)
        _saved(panel, "email_settings.mailgun_api_key#3", b"set where there was none", old_key)
        inserted = php_encrypt(panel.scheme, old_key, [b"a new install"])[0]
        with panel.db.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO oscam_installs (id, name, webif_password) VALUES (100, 'new', %s)", (inserted,))
            conn.commit()
        panel.plaintexts["oscam_installs.webif_password#100"] = b"a new install"
    finally:
        run = finish(engine)
    assert run.returncode == 0, run.stdout[-800:]
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")
    assert run.step("reencrypt")["resealed"] == 3
    assert panel.env_key() != old_key
    assert panel.php_check_all() == []
