"""probe: which layout and key reading the panel uses, from PHP-written values."""

from __future__ import annotations

import os

import pytest

from engine.cipher import ALL_SCHEMES
from tests.engine.runner import run_engine
from tests.support.php_crypto import php_encrypt


@pytest.mark.parametrize("scheme", [s.label for s in ALL_SCHEMES])
def test_probe_picks_the_one_scheme_that_opens_every_value(panel_factory, scheme):
    panel = panel_factory(rows=3, scheme=scheme)
    run = run_engine(panel.profile_path, "probe", "--json")

    result = run.closing
    total = sum(1 for p in panel.plaintexts.values() if p is not None)
    assert run.returncode == 0, run.stderr
    assert result["scheme"] == scheme
    assert sum(result["opens"][scheme].values()) == total
    assert all(sum(counts.values()) < total for label, counts in result["opens"].items() if label != scheme)
    assert result["problem"] is None


def test_probe_reports_counts_per_column_and_missing_tables(panel_factory):
    panel = panel_factory(rows={"oscam_installs": 5, "saved_servers": 2}, missing_tables=("email_configurations",))
    run = run_engine(panel.profile_path, "probe", "--json")

    expected = {}
    for label, plain in panel.plaintexts.items():
        column = label.split("#")[0]
        expected[column] = expected.get(column, 0) + (plain is not None)
    assert run.closing["columns"] == {k: v for k, v in expected.items()} | {
        "email_settings.smtp_password": 0, "email_settings.mailgun_api_key": 0}
    assert run.closing["skipped"] == ["email_configurations"]


def _plant_foreign(panel, *where: tuple[str, str, int]) -> None:
    """Values another key encrypted (a restore from another panel, say) at ``where``."""
    foreign = php_encrypt(panel.scheme, os.urandom(32).hex(), [b"from another panel"] * len(where))
    with panel.db.connect() as conn, conn.cursor() as cur:
        for (table, column, row_id), value in zip(where, foreign, strict=True):
            cur.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", (value, row_id))


def test_probe_names_the_few_values_the_panels_layout_does_not_open(panel_factory):
    """With ``ciphertext = "auto"`` and 2 bad values among many, probe names the layout that opens
    the rest, names both rows (table, column, id), says what to do, and exits 1."""
    panel = panel_factory(rows=10)
    _plant_foreign(panel, ("oscam_installs", "webif_password", 2), ("saved_servers", "ssh_credential_encrypted", 7))

    run = run_engine(panel.profile_path, "probe")

    assert run.returncode == 1
    total = sum(1 for p in panel.plaintexts.values() if p is not None)
    assert f"layout {panel.scheme} opens {total - 2:,} of {total:,} stored values; 2 do not open" in run.stdout
    assert "oscam_installs.webif_password id 2, saved_servers.ssh_credential_encrypted id 7." in run.stdout
    assert "Restore those values from a backup, or clear them" in run.stdout
    assert 1 == run.stdout.count("2 do not open")


def test_a_rotation_with_auto_layout_names_the_bad_rows_not_the_key(panel_factory):
    """The sample that detects the layout holds a bad value: the rotation still finds the layout,
    then its preflight names the row, and nothing changes."""
    panel = panel_factory(rows=10)
    _plant_foreign(panel, ("saved_servers", "ssh_credential_encrypted", 1))
    before = (panel.env_path.read_bytes(), panel.stored_values())

    run = run_engine(panel.profile_path, "rotate-key", "--yes", "--json")

    assert run.returncode == 1
    assert run.closing["code"] == "undecryptable"
    assert "saved_servers.ssh_credential_encrypted id 1" in run.closing["message"]
    assert (panel.env_path.read_bytes(), panel.stored_values()) == before


def test_probe_says_clearly_when_no_layout_opens_everything(panel_factory):
    """A wrong key opens nothing: no layout is named, the key is suspected, exit 1."""
    panel = panel_factory(rows=3)
    panel.set_env_key(os.urandom(32).hex())

    run = run_engine(panel.profile_path, "probe")

    assert run.returncode == 1
    assert "no known layout opens every stored value" in run.stdout
    assert "the key in .env may be wrong" in run.stdout


def test_probe_with_no_values_asks_for_an_explicit_layout(panel_factory):
    panel = panel_factory(rows=0)
    run = run_engine(panel.profile_path, "probe", "--json")
    assert "set `ciphertext` in the profile" in run.closing["problem"]


def test_probe_flags_a_profile_that_disagrees_with_the_data(panel_factory):
    panel = panel_factory(rows=2, scheme="iv12_ct_tag/hex")
    run = run_engine(panel.write_profile(ciphertext="iv12_tag_ct/hex"), "probe", "--json")
    assert run.returncode == 1
    assert "profile says ciphertext = iv12_tag_ct/hex" in run.closing["problem"]


def test_probe_changes_nothing(panel_factory):
    panel = panel_factory(rows=3)
    before = (panel.env_path.read_bytes(), panel.stored_values())
    run_engine(panel.profile_path, "probe")
    assert (panel.env_path.read_bytes(), panel.stored_values()) == before


@pytest.mark.parametrize("op", ["probe", "plan", "rotate-key"])
def test_a_myisam_table_is_refused_with_a_clear_message(panel_factory, op):
    """The one-transaction design needs InnoDB: probe, plan and a rotation refuse a MyISAM
    table (no transactions) by name, and change nothing."""
    panel = panel_factory(rows=2)
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE saved_servers ENGINE=MyISAM")
    env_before, stored = panel.env_path.read_bytes(), panel.stored_values()
    args = ["rotate-key", "--yes"] if op == "rotate-key" else [op]

    run = run_engine(panel.profile_path, *args, "--json")

    assert run.returncode != 0
    assert run.closing["code"] == "not_transactional"
    assert "saved_servers (MyISAM)" in run.closing["message"]
    assert "ENGINE=InnoDB" in run.closing["message"]
    assert (panel.env_path.read_bytes(), panel.stored_values()) == (env_before, stored)
