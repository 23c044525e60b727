"""The test infrastructure itself: PHP interop, the sandbox, the reference panel, the scanner.

The interop tests are the core evidence that what the engine writes is what
the panel reads: PHP's ``openssl_encrypt`` and the engine's ``Codec`` agree in
both directions for every scheme, and no scheme opens another's values.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tomllib
import uuid

import pytest

from bot.fakes.panel.ctl import parse_env
from engine.cipher import ALL_SCHEMES, Codec, Scheme, new_key_hex
from engine.profile import load_profile
from tests.support.panel import LONG_LEN, NON_ASCII, PANEL_CTL, label
from tests.support.php_crypto import PhpCryptoError, php_decrypt, php_encrypt
from tests.support.procs import wait_for_stopped, wait_until
from tests.support.secrets_scan import SecretRegistry, check_report, register_secret, scan_text

SAMPLES: list[bytes] = [
    b"pw-" + os.urandom(8).hex().encode(),
    b"",
    (b"pw-long-" + os.urandom(LONG_LEN).hex().encode())[:LONG_LEN],
    NON_ASCII.encode(),
    bytes(range(256)),
    *(os.urandom(n) for n in range(1, 49)),  # every length across three AES blocks
]
SCHEME_IDS = [s.label for s in ALL_SCHEMES]


def fingerprint(key_hex: str) -> str:
    return hashlib.sha256(key_hex.encode()).hexdigest()[:16]


# --- PHP <-> engine interop -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_values_encrypted_by_php_open_with_the_engine_codec(scheme: Scheme) -> None:
    """Empty, long, non-ASCII and binary plaintexts come back byte for byte; NULL stays NULL."""
    key = new_key_hex()
    stored = php_encrypt(scheme.label, key, [*SAMPLES, None])
    codec = Codec(scheme, key)

    assert stored[-1] is None
    assert [codec.open(v) for v in stored[:-1] if v is not None] == SAMPLES


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_values_sealed_by_the_engine_codec_decrypt_in_php(scheme: Scheme) -> None:
    """What the engine writes, the panel reads."""
    key = new_key_hex()
    codec = Codec(scheme, key)

    assert php_decrypt(scheme.label, key, [codec.seal(p) for p in SAMPLES] + [None]) == [
        *SAMPLES,
        None,
    ]


def test_a_value_opens_only_under_its_own_scheme_and_key() -> None:
    """GCM's tag tells schemes and keys apart: nothing opens under a wrong one, in PHP or Python.

    (Not true of an encrypted *empty* string: with no ciphertext, iv·tag·ct and
    iv·ct·tag are the same bytes, so such values open under both iv12 layouts.)
    """
    key, other_key = new_key_hex(), new_key_hex()
    sealed = {s: php_encrypt(s.label, key, [b"pw-one-scheme-only"])[0] for s in ALL_SCHEMES}

    for reader in ALL_SCHEMES:
        foreign = [v for s, v in sealed.items() if s != reader]
        codec = Codec(reader, key)
        assert [codec.open(v) for v in foreign if v] == [None] * 7, reader.label
        assert php_decrypt(reader.label, key, foreign) == [False] * 7, reader.label
        assert php_decrypt(reader.label, other_key, [sealed[reader]]) == [False], reader.label


def test_ascii32_is_phps_own_truncation_of_the_hex_string() -> None:
    """PHP keeps the first 32 characters: a key differing only in its second half still opens.

    The pitfall ``probe`` detects (128 bits of entropy instead of 256).
    """
    key = new_key_hex()
    same_first_half = key[:32] + new_key_hex()[:32]
    stored = php_encrypt("iv12_tag_ct/ascii32", key, [b"pw-truncated-key"])

    assert php_decrypt("iv12_tag_ct/ascii32", same_first_half, stored) == [b"pw-truncated-key"]
    assert php_decrypt("iv12_tag_ct/hex", key, stored) == [False]


def test_an_encrypted_empty_string_opens_under_both_iv12_layouts() -> None:
    """Why ``probe`` must not decide a layout on empty values alone."""
    key = new_key_hex()
    stored = php_encrypt("iv12_tag_ct/hex", key, [b""])

    assert php_decrypt("iv12_ct_tag/hex", key, stored) == [b""]


def test_crypto_php_errors_do_not_show_the_key() -> None:
    """A malformed key is refused with a message that does not quote it."""
    bad_key = new_key_hex()[:63] + "z"
    with pytest.raises(PhpCryptoError) as caught:
        php_encrypt("iv12_tag_ct/hex", bad_key, [b"x"])

    assert "64 hex characters" in str(caught.value)
    assert bad_key not in str(caught.value)


# --- the panel sandbox ----------------------------------------------------------------------


def test_mysql_db_has_the_schema_and_bulk_inserts(mysql_db) -> None:
    """A fresh database per test, with every table, and fast multi-row inserts."""
    rows = [(i, f"agent-{i}", None) for i in range(1, 10_001)]

    assert mysql_db.insert_rows("agents", ["id", "name", "agent_token"], rows) == 10_000
    assert mysql_db.query("SELECT COUNT(*) FROM agents") == [(10_000,)]
    assert set(mysql_db.tables) == {
        "oscam_installs", "saved_servers", "email_settings", "email_configurations",
        "agents", "agent_install_tokens",
    }


def test_sandbox_fixtures_open_under_the_env_key_in_php(panel_factory) -> None:
    """Every kind of fixture value is present and PHP opens all of them under the key in .env."""
    sandbox = panel_factory(scheme="iv16_tag_ct/ascii32", rows=10)
    stored = sandbox.stored_values()
    codec = Codec(Scheme.parse(sandbox.scheme), sandbox.env_key())
    plaintexts = [p for p in sandbox.plaintexts.values() if p is not None]

    assert sandbox.php_check_all() == []
    assert len(stored) == 6 * 10
    assert sandbox.env_key() == sandbox.initial_key
    assert {None, ""} <= set(stored.values())
    assert b"" in plaintexts
    assert any(len(p) == LONG_LEN for p in plaintexts)
    assert any(NON_ASCII.encode() in p for p in plaintexts)
    assert all(
        codec.open(stored[lbl]) == p for lbl, p in sandbox.plaintexts.items() if p is not None
    )


def test_sandbox_can_leave_a_table_out_and_writes_a_valid_profile(panel_factory) -> None:
    """A missing table has no rows; the profile loads with the engine's own loader."""
    sandbox = panel_factory(missing_tables=("email_configurations",), rows={"oscam_installs": 3})
    profile = load_profile(sandbox.profile_path)
    override = load_profile(sandbox.write_profile(ciphertext="iv12_ct_tag/hex", batch_size=7))

    assert sorted({lbl.split("#")[0] for lbl in sandbox.stored_values()}) == [
        "oscam_installs.webif_password"
    ]
    assert sandbox.php_check_all() == []
    assert not sandbox.db.table_exists("email_configurations")
    assert profile.env_path == sandbox.env_path
    assert profile.ciphertext == "auto"
    assert profile.restart_command == ["true"]
    assert not profile.journal_dir.exists()
    assert (override.ciphertext, override.batch_size) == ("iv12_ct_tag/hex", 7)


def test_write_profile_merges_nested_overrides_and_none_removes(panel_factory) -> None:
    sandbox = panel_factory(rows=1, server=True)
    path = sandbox.write_profile(
        verify_url=None,
        database={"name": "other_db", "env_keys": {"password": "DB_PASS"}},
        agents={"inventory": {"10.0.0.7": {"host": "10.0.0.7", "port": 2222}}},
    )
    data = tomllib.loads(path.read_text())

    assert "verify_url" not in data
    assert data["database"] == {"name": "other_db", "env_keys": {"password": "DB_PASS"}}
    assert data["agents"]["inventory"]["10.0.0.7"] == {"host": "10.0.0.7", "port": 2222}
    assert data["restart_command"] == sandbox.restart_command
    assert load_profile(path).database.name == "other_db"
    assert load_profile(sandbox.profile_path).verify_url == sandbox.verify_url


def test_php_check_all_names_a_value_that_no_longer_opens(panel_factory) -> None:
    """A value sealed under another key is reported by label, without its plaintext."""
    sandbox = panel_factory(rows={"saved_servers": 2})
    target = label("saved_servers", "ssh_credential_encrypted", 1)
    foreign = php_encrypt(sandbox.scheme, new_key_hex(), [sandbox.plaintexts[target]])[0]
    sandbox.db.execute("UPDATE saved_servers SET ssh_credential_encrypted = %s WHERE id = 1", [foreign])

    assert sandbox.php_check_all() == [f"{target}: does not decrypt with the key"]


# --- the reference panel --------------------------------------------------------------------


@pytest.mark.parametrize("fpm", [False, True], ids=["php-S", "php-fpm+nginx"])
def test_reference_panel_takes_the_env_key_at_restart(panel_factory, fpm: bool) -> None:
    """/health is 200 under the right key; a new key in .env counts only after a restart."""
    sandbox = panel_factory(server=True, fpm=fpm, rows=5)
    secret_count = sum(p is not None for p in sandbox.plaintexts.values())
    other_key = new_key_hex()

    status, body = sandbox.health()
    assert (status, body["ok"], body["total"], body["decrypted"]) == (
        200, True, secret_count, secret_count
    )
    assert body["key_fingerprint"] == fingerprint(sandbox.initial_key)

    sandbox.set_env_key(other_key)
    assert sandbox.health()[0] == 200  # the running workers still hold the old key
    sandbox.restart_panel()
    status, body = sandbox.health()

    assert (status, body["ok"], body["failed"]) == (500, False, secret_count)
    assert body["key_fingerprint"] == fingerprint(other_key)
    assert label("oscam_installs", "webif_password", 1) in body["failures"]


def test_reference_panel_shows_and_saves_credentials(panel_factory) -> None:
    """/credentials shows every plaintext; a saved password is encrypted with the worker's key."""
    sandbox = panel_factory(server=True, rows={"email_settings": 4})
    expected = {
        lbl: None if p is None else p.decode() for lbl, p in sandbox.plaintexts.items()
    }
    assert sandbox.credentials() == expected

    sandbox.save_credential("email_settings", "smtp_password", 3, "pw-saved-by-a-user")

    assert sandbox.credentials()[label("email_settings", "smtp_password", 3)] == (
        "pw-saved-by-a-user"
    )
    assert sandbox.php_check_all() == []


def test_panel_ctl_fails_in_one_line_without_a_panel(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(PANEL_CTL), "start", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert proc.returncode == 1
    assert proc.stderr == f"panel_ctl: start failed: {tmp_path / 'panel.json'} does not exist\n"


def test_panel_ctl_reads_env_files_like_the_panel() -> None:
    """Comments, blank lines, export, both quotes, escapes and inline comments."""
    text = (
        "# comment\n\nAPP_NAME=\"My \\\"Panel\\\"\"\nexport DB_HOST=127.0.0.1 # inline\n"
        "DB_PASSWORD='p#ss word'\nEMPTY=\nPANEL_ENCRYPTION_KEY=abc\n"
    )

    assert parse_env(text) == {
        "APP_NAME": 'My "Panel"',
        "DB_HOST": "127.0.0.1",
        "DB_PASSWORD": "p#ss word",
        "EMPTY": "",
        "PANEL_ENCRYPTION_KEY": "abc",
    }


# --- helpers --------------------------------------------------------------------------------


def test_wait_for_stopped_finds_a_sigstopped_process() -> None:
    """The crash tests' hook: a process that stopped itself is found by its command line."""
    marker = f"myosicam-test-{uuid.uuid4().hex}"
    code = "import os, signal, time; os.kill(os.getpid(), signal.SIGSTOP); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, marker])
    try:
        assert wait_for_stopped(lambda argv: marker in argv, timeout=10) == proc.pid
    finally:
        proc.kill()
    assert proc.wait() == -signal.SIGKILL


def test_wait_until_returns_the_first_truthy_value_or_times_out() -> None:
    answers = iter([0, None, "ready"])

    assert wait_until(lambda: next(answers), timeout=5, interval=0.001) == "ready"
    with pytest.raises(TimeoutError, match="panel up not met"):
        wait_until(lambda: False, timeout=0.05, what="panel up")


# --- the secret scanner ---------------------------------------------------------------------


def test_scan_text_names_leaked_secrets_in_their_escaped_forms() -> None:
    """Raw, JSON-escaped, repr'd and upper-cased secrets are found; short strings never."""
    registry = SecretRegistry()
    key = new_key_hex()
    registry.register_key(key, "PANEL_ENCRYPTION_KEY")
    registry.register(NON_ASCII + "-scan", "fixture plaintext")
    registry.register("short", "too short to scan")

    assert registry.scan(f"loaded key {key.upper()}") == ["PANEL_ENCRYPTION_KEY"]
    assert registry.scan(f"ascii32 key {key[:32]}") == ["PANEL_ENCRYPTION_KEY (first half)"]
    assert registry.scan(json.dumps({"pw": NON_ASCII + "-scan"})) == ["fixture plaintext"]
    assert registry.scan(repr((NON_ASCII + "-scan").encode())) == ["fixture plaintext"]
    assert registry.scan("short short short; fingerprint " + fingerprint(key)) == []
    assert "[REDACTED PANEL_ENCRYPTION_KEY]" in registry.redact(f"key={key}")


def test_scan_text_uses_the_session_registry() -> None:
    secret = f"pw-registered-{uuid.uuid4().hex}"
    register_secret(secret, "registered by a test")

    assert scan_text(f"smtp password is {secret}.") == ["registered by a test"]


def test_a_report_with_a_leak_fails_without_showing_the_secret() -> None:
    """The makereport hook's check: leak -> failed, kind named, secret redacted everywhere."""
    registry = SecretRegistry()
    key = new_key_hex()
    registry.register_key(key, "new PANEL_ENCRYPTION_KEY")
    report = pytest.TestReport(
        nodeid="t.py::test_x",
        location=("t.py", 1, "test_x"),
        keywords={},
        outcome="passed",
        longrepr=None,
        when="call",
        sections=[("Captured stderr call", f"rotating to {key}\n")],
    )

    leaked = check_report(report, registry)

    assert leaked == ["new PANEL_ENCRYPTION_KEY in captured stderr call"]
    assert report.failed
    assert "new PANEL_ENCRYPTION_KEY" in str(report.longrepr)
    assert key not in str(report.longrepr) + repr(report.sections)
    assert key[:32] not in repr(report.sections)


def test_a_teardown_report_checks_only_teardown_output() -> None:
    """Setup and call output is judged with the call report, so a leak fails once."""
    registry = SecretRegistry()
    registry.register("pw-setup-leak-123", "fixture plaintext")
    report = pytest.TestReport(
        nodeid="t.py::test_x",
        location=("t.py", 1, "test_x"),
        keywords={},
        outcome="passed",
        longrepr=None,
        when="teardown",
        sections=[("Captured stdout setup", "pw-setup-leak-123")],
    )

    assert check_report(report, registry) == []
    assert report.passed
    assert "pw-setup-leak-123" not in repr(report.sections)
