"""``/rotate-incident`` over signed HTTP, with the strict fake Slack API and the fake engine.

The card lists the parts in order with counts and what a person must rotate elsewhere;
two-person approval runs it; one checklist message in the thread is updated in place as
parts finish; the closing summary is a timeline with fingerprints, never values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.fakes.panel.ctl import parse_env
from bot.fakes.slack_api import Call
from bot.local_client import LocalEngineClient
from tests.bot.conftest import (
    ALICE,
    AUDIT_KEY,
    BOB,
    CHANNEL,
    PANEL,
    MakeBot,
    card_request_id,
    is_card,
    wait_until,
)
from tests.support.fake_engine import (
    DB_NEW_FP,
    DB_OLD_FP,
    NEW_FP,
    OLD_FP,
    FakeEngineHost,
    db_password_plan_result,
    db_password_rotation,
    incident_plan_result,
    incident_rotation,
    incident_stopped_at_key,
)
from tests.support.secrets_scan import SecretRegistry, scan_text

REPO = Path(__file__).resolve().parents[2]
REASON = "INC-4412 .env leaked on a pastebin"


def _engine(script=incident_rotation) -> FakeEngineHost:  # type: ignore[no-untyped-def]
    host = FakeEngineHost()
    host.plan_result = incident_plan_result()
    host.rotation_script = script
    return host


def _request(bot) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    ack = bot.command("/rotate-incident", f"{PANEL} {REASON}", ALICE)
    assert 200 == ack.status
    card = bot.fake.wait_for("chat.postMessage", is_card)[-1]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    return request_id, ts


def _checklists(bot, ts: str) -> list[Call]:  # type: ignore[no-untyped-def]
    posted = [c for c in bot.fake.calls_to("chat.postMessage")
              if c.params.get("thread_ts") == ts and c.text.startswith("*Incident checklist*")]  # fmt: skip
    assert 1 == len(posted), "one checklist message, updated in place"
    return bot.fake.card_versions(CHANNEL, str(posted[0].response["ts"]))


def test_the_card_lists_the_parts_in_order_and_what_a_person_must_rotate(make_bot: MakeBot) -> None:
    bot = make_bot(engine=_engine())
    _request_id, ts = _request(bot)

    card = bot.fake.latest_card(CHANNEL, ts).all_text()
    assert "Incident rotation (DB password, key, agent tokens) requested: panel prod-eu" in card
    for line in (
        "1. the database password of user `myosicam`",
        "2. the encryption key: 1,204 stored credentials in 4 columns",
        "oscam_installs.webif_password 812",
        "3. 2 agent tokens: agent-1, agent-2",
        "• `PANEL_LICENSE_KEY`: contact MyOsicam support",
        "• `STRIPE_SECRET`: rotate at its issuer",
    ):
        assert line in card
    assert "Approve" in card  # the usual two-person approval
    plan = bot.engine.ops("plan")[-1] if bot.engine else None
    assert plan is not None and plan.incident


def test_an_approved_incident_runs_with_a_checklist_and_closes_with_a_timeline(make_bot: MakeBot) -> None:
    bot = make_bot(engine=_engine())
    request_id, ts = _request(bot)
    bot.approve(request_id, ts, BOB)

    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Incident rotation done")
    assert bot.engine is not None and [] == bot.engine.refusals
    run = bot.engine.ops("rotate-incident")[-1]
    assert (OLD_FP, DB_OLD_FP, ["agent-1", "agent-2"], "U0ALICE", ["U0BOB"]) == (
        run.key_fingerprint, run.password_fingerprint, run.agents, run.requested_by, run.approved_by)
    versions = [c.text for c in _checklists(bot, ts)]
    assert versions[-1].splitlines()[1:] == [
        f":white_check_mark: database password: done, verified · {DB_OLD_FP}… → {DB_NEW_FP}… verified",
        f":white_check_mark: encryption key: done, verified · {OLD_FP}… → {NEW_FP}… verified",
        ":white_check_mark: agent tokens: done, verified · 2 of 2 agents rotated and verified",
    ]
    assert any(":arrows_counterclockwise: encryption key: running…" in v for v in versions)
    text = final.all_text()
    for fragment in (
        "Requested by <@U0ALICE> · approved by <@U0BOB> · reason “INC-4412 .env leaked on a pastebin”",
        "database password: done, verified · ",
        f"{DB_OLD_FP[:8]}… → {DB_NEW_FP[:8]}… · user `myosicam`",
        "encryption key: done, verified · ",
        f"{OLD_FP[:8]}… → {NEW_FP[:8]}…",
        "agent tokens: done, verified",
        "*Left for a human*",
        "• `PANEL_LICENSE_KEY`: contact MyOsicam support",
        "*Message for MyOsicam support* (copy it)",
    ):
        assert fragment in text
    assert " UTC" in text.split("encryption key: done, verified · ")[1].split("\n")[0]
    wait_until(lambda: bot.state(request_id) == "done")


def test_a_failure_in_the_middle_part_says_what_is_left(make_bot: MakeBot) -> None:
    bot = make_bot(engine=_engine(incident_stopped_at_key))
    request_id, ts = _request(bot)
    bot.approve(request_id, ts, BOB)

    final = bot.fake.wait_text("chat.postMessage", ":warning: Incident rotation stopped")
    text = final.all_text()
    wait_until(lambda: "Incident rotation (DB password, key, agent tokens) stopped: panel prod-eu"
               in bot.fake.latest_card(CHANNEL, ts).text)  # fmt: skip
    assert ":white_check_mark: database password: done, verified" in text
    assert ":rotating_light: encryption key: failed, rolled back" in text
    assert ":white_square: agent tokens: not started, untouched" in text
    assert "• encryption key: not rotated; fix the cause above, then `/rotate-incident` again" in text
    assert "• agent tokens: not rotated" in text
    last = _checklists(bot, ts)[-1].text
    assert ":white_square: agent tokens: not started, untouched" in last
    wait_until(lambda: bot.state(request_id) == "failed")


def test_help_lists_the_incident_command(make_bot: MakeBot) -> None:
    bot = make_bot()
    ack = bot.command("/rotate-help", "", ALICE)
    assert "/rotate-incident [panel] &lt;reason&gt;" in ack.answer or "/rotate-incident [panel] <reason>" in ack.answer


def test_the_postmortem_appendix_is_written_from_the_store_and_the_audit_log(make_bot: MakeBot) -> None:
    """`python -m bot audit export --incident ID --format markdown`, as an operator runs it:
    the facts, the timeline with fingerprints, what is left, every engine step, the anchor."""
    bot = make_bot(engine=_engine(incident_stopped_at_key))
    request_id, ts = _request(bot)
    bot.approve(request_id, ts, BOB)
    wait_until(lambda: bot.state(request_id) == "failed" and bot.store.get(request_id).outcome.get("reported"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))}
    env |= {"ROTATOR_STORE": bot.settings.store_url, "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex()}

    done = subprocess.run([sys.executable, "-m", "bot", "audit", "export", "--incident", request_id,
                           "--format", "markdown"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    unknown = subprocess.run([sys.executable, "-m", "bot", "audit", "export", "--incident", "r-nope",
                              "--format", "markdown"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip

    assert 0 == done.returncode, done.stderr
    text = done.stdout
    assert text.startswith(f"## Appendix: incident rotation `{request_id}` on panel prod-eu")
    assert "| Requested by | U0ALICE at " in text and "| Approved by | U0BOB at " in text
    assert "| database password | done, verified | 20" in text
    assert f"| {DB_OLD_FP} | {DB_NEW_FP} | user myosicam |" in text
    assert "| encryption key | failed, rolled back |" in text
    assert "| agent tokens | not started, untouched | - | - | - | - |" in text
    assert "- [ ] agent tokens: not started, untouched; rotate it again" in text
    assert "- [ ] `PANEL_LICENSE_KEY`: contact MyOsicam support" in text
    assert "| key | part | failed | panel check failed after restart" in text
    assert re.search(r"Audit anchor: `\d+:[0-9a-f]+`", text)
    assert (2, "error: --incident: no request 'r-nope' in the store") == (
        unknown.returncode, unknown.stderr.strip())
    assert [] == scan_text(text + done.stderr)


def test_rotate_db_password_alone_binds_the_current_password_and_says_which_login(make_bot: MakeBot) -> None:
    """/rotate-db-password: the card names the login and the current password's fingerprint; the
    approved run names it (the engine would refuse another); "password" in the reason is fine."""
    host = FakeEngineHost()
    host.plan_result = db_password_plan_result()
    host.rotation_script = db_password_rotation
    bot = make_bot(engine=host)
    ack = bot.command("/rotate-db-password", f"{PANEL} password was in the leaked .env", ALICE)
    assert 200 == ack.status
    card = bot.fake.wait_for("chat.postMessage", is_card)[-1]
    request_id, ts = card_request_id(card), str(card.response["ts"])
    wait_until(lambda: bot.state(request_id, "message_ts") == ts)
    assert f"the database password of user `myosicam` on 127.0.0.1 gets a new one (`DB_PASSWORD` in `.env`) · " \
        f"current password {DB_OLD_FP[:8]}…" in card.all_text()

    bot.approve(request_id, ts, BOB)

    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Database password rotated")
    assert f"user `myosicam` · {DB_OLD_FP[:8]}… → {DB_NEW_FP[:8]}…" in final.text
    assert [] == host.refusals
    assert DB_OLD_FP == host.ops("rotate-db-password")[-1].password_fingerprint
    assert "✔ new password verified" in "\n".join(bot.fake.thread(CHANNEL, ts))


def test_over_the_real_engine_the_passwords_never_reach_slack(
    make_bot: MakeBot, panel_factory: Callable[..., Any], secret_registry: SecretRegistry
) -> None:
    """/rotate-incident driving ``python -m engine serve`` on a real panel in MariaDB: the DB
    password and the key are rotated (the panel still answers), the checklist ends with both
    done, and no Slack call carries the old or the new password, or either key."""
    sandbox = panel_factory(rows=5, server=True)
    old_password = parse_env(sandbox.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]
    bot = make_bot(engine_clients={PANEL: LocalEngineClient(sandbox.profile_path)},
                   profiles={PANEL: sandbox.profile_path})  # fmt: skip
    request_id, ts = _request(bot)
    assert f"1. the database password of user `{sandbox.db.user}`" in bot.fake.latest_card(CHANNEL, ts).all_text()
    bot.approve(request_id, ts, BOB)

    final = bot.fake.wait_text("chat.postMessage", ":white_check_mark: Incident rotation done", timeout=180)
    new_password = parse_env(sandbox.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]
    secret_registry.register(new_password, "DB_PASSWORD (rotated)")
    secret_registry.register_key(sandbox.env_key(), "PANEL_ENCRYPTION_KEY (rotated)")

    assert new_password != old_password
    assert 200 == sandbox.health()[0] and [] == sandbox.php_check_all()
    last = _checklists(bot, ts)[-1].text
    assert ":white_check_mark: database password: done, verified" in last
    assert ":white_check_mark: encryption key: done, verified" in last
    assert "agent tokens: skipped · no [agents] section in the profile" in last
    assert "user `" + sandbox.db.user + "`" in final.text
    assert [] == secret_registry.scan(json.dumps([c.params for c in bot.fake.calls], ensure_ascii=False))


def test_card_checklist_and_summary_stay_within_slack_limits_whatever_the_plan(make_bot: MakeBot) -> None:
    """500 agents, 60 secret-looking keys with long names, a long DB user and long errors: the
    strict fake Web API accepts every card, checklist and summary (Slack refuses the whole
    message otherwise)."""
    host = _engine(incident_stopped_at_key)
    plan = incident_plan_result(agents=tuple(f"agent-{i:03d}.eu-west-1.compute.internal" for i in range(500)))
    plan["manual"] += [{"name": f"VENDOR_{'X' * 100}_{i}_SECRET", "action": "rotate at its issuer"} for i in range(60)]
    plan["db_user"] = "u" * 300
    plan["parts"][0]["db_user"] = "u" * 300
    host.plan_result = plan
    bot = make_bot(engine=host)
    request_id, ts = _request(bot)
    bot.approve(request_id, ts, BOB)

    bot.fake.wait_text("chat.postMessage", ":warning: Incident rotation stopped")
    wait_until(lambda: bot.state(request_id) == "failed")
    sent = [c for c in bot.fake.calls if c.method in ("chat.postMessage", "chat.update")]
    assert [] == [c.response.get("error") for c in sent if not c.ok]
    assert "… and 47 more keys: rotate at their issuers" in bot.fake.latest_card(CHANNEL, ts).all_text()
    # 500 long names would not fit one request line: the run names them by the plan hash alone
    assert ([], None) == (host.refusals, host.ops("rotate-incident")[-1].agents)
