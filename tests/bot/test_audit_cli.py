"""`python -m bot audit ...` as an operator runs it: the store and the audit key, no Slack tokens."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.audit import Anchor, AuditLog
from bot.audit_key import AuditKey, load_audit_key
from bot.audit_slack import anchors_from_slack
from bot.fakes.slack_api import FakeSlack
from bot.store import open_store
from tests.bot.conftest import AUDIT_KEY, BOB, CHANNEL, MakeBot, wait_until
from tests.support.procs import run_bot as run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment with only the store URL and the audit key file: no Slack setting at all."""
    key_file = tmp_path / "audit.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    made = run(env, "audit", "keygen", str(key_file))
    assert made.returncode == 0, made.stderr
    db = tmp_path / "rotator.db"
    env |= {"ROTATOR_STORE": f"sqlite://{db}", "ROTATOR_AUDIT_KEY_FILE": str(key_file)}
    store = open_store(env["ROTATOR_STORE"], audit_key=load_audit_key(env))
    for n in range(1, 6):
        AuditLog(store).append("request.approved", f"r-{n}", "T0TEAM/U0BOB", {"n": n})
    store.close()
    return env, db


def test_keygen_writes_a_private_key_file_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    first = run(env, "audit", "keygen", str(tmp_path / "k"))
    again = run(env, "audit", "keygen", str(tmp_path / "k"))
    key = load_audit_key({"ROTATOR_AUDIT_KEY_FILE": str(tmp_path / "k")})
    assert (first.returncode, oct((tmp_path / "k").stat().st_mode & 0o777)) == (0, "0o600")
    assert f"fingerprint {key.fingerprint}" in first.stdout and key.hex() not in first.stdout
    assert (again.returncode, again.stderr.strip()) == (
        2,
        f"error: {tmp_path / 'k'} exists already; the audit key is never overwritten",
    )


def test_verify_and_export_need_only_the_store_and_the_key(
    operator: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = operator
    verified = run(env, "audit", "verify")
    assert (verified.returncode, verified.stderr) == (3, ""), "intact but not anchored: monitoring alerts"
    assert verified.stdout.startswith("audit log intact but NOT anchored: 5 entries, head #5 ")
    digest = verified.stdout.split("head #5 ", 1)[1][:16]
    anchored = run(env, "audit", "verify", "--anchor", f"5:{digest}")
    assert (anchored.returncode, anchored.stdout.splitlines()[0]) == (
        0,
        f"audit log verified: 5 entries, head #5 {digest}, matches 1 anchor(s), the newest "
        f"5:{digest} (from the command line)",
    )
    out = tmp_path / "audit.jsonl"
    exported = run(env, "audit", "export", "--output", str(out))
    from_file = run(env, "audit", "verify", "--file", str(out), "--anchor", f"5:{digest}")
    assert (exported.returncode, from_file.returncode) == (0, 0)
    assert from_file.stdout.startswith("audit log verified: 5 entries")


def test_an_intact_but_unanchored_log_exits_3_from_the_store_and_from_a_file(
    operator: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """Intact but not anchored is not "verified": exit 3, as the engine's `status` does for an
    unfinished rotation, so one monitoring rule alerts on both; `--help` says so."""
    env, _ = operator
    out = tmp_path / "audit.jsonl"
    assert run(env, "audit", "export", "--output", str(out)).returncode == 0
    from_store = run(env, "audit", "verify")
    from_file = run(env, "audit", "verify", "--file", str(out))
    shown = run(env, "audit", "verify", "--help")
    assert (from_store.returncode, from_file.returncode) == (3, 3)
    assert from_file.stdout.startswith("audit log intact but NOT anchored: 5 entries")
    assert "  3  intact but NOT anchored" in shown.stdout


def test_each_tampering_case_says_not_verified_and_exits_non_zero(
    operator: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, db = operator
    digest = run(env, "audit", "verify").stdout.split("head #5 ", 1)[1][:16]
    out = tmp_path / "audit.jsonl"
    assert run(env, "audit", "export", "--output", str(out)).returncode == 0
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(out.read_text().splitlines(keepends=True)[:3]))
    cut_export = run(env, "audit", "verify", "--file", str(cut))
    with sqlite3.connect(db) as conn:  # cut the tail and move the head back
        (hash_3,) = conn.execute("SELECT hash FROM audit_log WHERE seq = 3").fetchone()
        conn.execute("DELETE FROM audit_log WHERE seq > 3")
        conn.execute("UPDATE audit_head SET seq = 3, hash = ? WHERE id = 1", (hash_3,))
    cut_tail = run(env, "audit", "verify", "--anchor", f"5:{digest}")
    with sqlite3.connect(db) as conn:  # edit an entry and re-hash after it, without the key
        conn.execute("UPDATE audit_log SET actor = 'T0TEAM/U0MALLORY' WHERE seq = 3")
    edited = run(env, "audit", "verify", "--anchor", f"3:{hash_3[:16]}")
    for result, reason in [
        (cut_export, "the export has no head record: lines were cut off its end"),
        (cut_tail, "shows the log reached entry 5, but it ends at entry 3"),
        (edited, "entry 3: content does not match its HMAC (changed)"),
    ]:
        assert (result.returncode, result.stdout.startswith("audit log NOT verified")) == (1, True)
        assert reason in result.stdout


def test_a_missing_or_wrong_key_is_a_clear_error(operator: tuple[dict[str, str], Path]) -> None:
    env, _ = operator
    missing = run({k: v for k, v in env.items() if k != "ROTATOR_AUDIT_KEY_FILE"}, "audit", "verify")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ROTATOR_AUDIT_KEY_FILE is not set")
    wrong = run(env | {"ROTATOR_AUDIT_KEY_FILE": "", "ROTATOR_AUDIT_KEY": AuditKey.generate().hex()}, "audit", "verify")
    assert wrong.returncode == 1 and "none of the 5 entries matches its HMAC" in wrong.stdout
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_serving_without_the_audit_key_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    from tests.bot.conftest import write_config

    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://rotator.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    env |= {
        "SLACK_BOT_TOKEN": "xoxb-1-serve-test-token",
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123",
        "ROTATOR_CONFIG": str(config),
    }
    result = run(env, "--http", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ROTATOR_AUDIT_KEY_FILE is not set: the audit log is signed")
    assert not (tmp_path / "rotator.db").exists()


def test_verify_reads_the_anchors_back_from_the_slack_threads(make_bot: MakeBot, tmp_path: Path) -> None:
    """Two runs close with `audit #SEQ DIGEST`; `audit verify --slack` finds both in the channel,
    and after the tail is cut (head moved back) it says NOT verified."""
    bot = make_bot()
    for _ in range(2):
        request_id, ts = bot.request_key()
        bot.approve(request_id, ts, BOB)
        wait_until(lambda rid=request_id: bot.store.get(rid).outcome.get("reported") is True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    env |= {
        "SLACK_BOT_TOKEN": bot.fake.token,
        "SLACK_SIGNING_SECRET": bot.settings.signing_secret,
        "SLACK_API_URL": bot.fake.url,
        "ROTATOR_CONFIG": str(bot.settings.config_path),
        "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex(),
    }
    good = run(env, "audit", "verify", "--slack")
    assert (good.returncode, good.stderr) == (0, ""), good.stdout
    assert "matches 2 anchor(s)" in good.stdout
    assert bot.fake.calls_to("conversations.history")
    head, _ = bot.store.audit_head()
    with bot.store.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE seq > 4")
        tx.execute("UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)")
    cut = run(env, "audit", "verify", "--slack")
    assert (cut.returncode, cut.stdout.splitlines()[0]) == (1, "audit log NOT verified (2 problems):")
    assert f"shows the log reached entry {head}, but it ends at entry 4" in cut.stdout


def test_an_anchor_only_in_a_thread_reply_is_read_with_conversations_replies(fake_slack: FakeSlack) -> None:
    client = WebClient(token=fake_slack.token, base_url=fake_slack.url)
    parent = client.chat_postMessage(channel=CHANNEL, text="Key rotation requested")["ts"]
    client.chat_postMessage(channel=CHANNEL, thread_ts=parent, text="✔ step")
    client.chat_postMessage(channel=CHANNEL, thread_ts=parent, text="Done · rotation r-1 · audit #12 0123456789abcdef")
    assert anchors_from_slack(client, [CHANNEL]) == [
        Anchor(12, "0123456789abcdef", f"Slack {CHANNEL} thread {parent}")
    ]
    assert [c.params["ts"] for c in fake_slack.calls_to("conversations.replies")] == [parent]
