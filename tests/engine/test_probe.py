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


def test_probe_says_clearly_when_no_layout_opens_everything(panel_factory):
    panel = panel_factory(rows=3)
    foreign = php_encrypt(panel.scheme, os.urandom(32).hex(), [b"from another panel"])[0]
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("UPDATE oscam_installs SET webif_password = %s WHERE id = 1", (foreign,))

    run = run_engine(panel.profile_path, "probe")

    assert run.returncode == 0
    assert "no known layout opens every stored value" in run.stdout


def test_probe_with_no_values_asks_for_an_explicit_layout(panel_factory):
    panel = panel_factory(rows=0)
    run = run_engine(panel.profile_path, "probe", "--json")
    assert "set `ciphertext` in the profile" in run.closing["problem"]


def test_probe_flags_a_profile_that_disagrees_with_the_data(panel_factory):
    panel = panel_factory(rows=2, scheme="iv12_ct_tag/hex")
    run = run_engine(panel.write_profile(ciphertext="iv12_tag_ct/hex"), "probe", "--json")
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
