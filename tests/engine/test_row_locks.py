"""The rows a rotation reads stay locked from its one pass to the commit, escrow included.

docs/operations.md tells operators that a panel user saving a credential while the
escrow command runs waits for it: here a panel login tries exactly that.
"""

from __future__ import annotations

import pymysql
import pytest

from tests.engine.runner import finish, start_paused
from tests.support.php_crypto import php_encrypt


def test_a_panel_write_waits_for_the_rotation_while_its_key_is_escrowed(panel_factory, tmp_path):
    panel = panel_factory(rows=6, server=True)
    escrowed = tmp_path / "escrowed"
    escrow = tmp_path / "escrow.sh"
    escrow.write_text(f"#!/bin/sh\ncat > {escrowed}\n")
    escrow.chmod(0o700)
    profile = panel.write_profile(escrow_command=[str(escrow)])
    engine = start_paused(profile, "state:STAGED", "rotate-key", "--yes", "--json")  # escrow done, nothing applied
    try:
        assert escrowed.exists()
        sealed = php_encrypt(panel.scheme, panel.env_key(), [b"saved while the key was escrowed"])[0]
        with panel.db.connect() as conn, conn.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
            with pytest.raises(pymysql.err.OperationalError) as waited:
                cur.execute("UPDATE saved_servers SET ssh_credential_encrypted = %s WHERE id = 1", (sealed,))
        assert waited.value.args[0] == 1205  # lock wait timeout: the row is the rotation's until it commits
    finally:
        run = finish(engine)
    assert run.returncode == 0, run.stderr
    assert run.closing["state"] == "DONE"
    assert panel.php_check_all() == []
    assert run.leaks() == []
