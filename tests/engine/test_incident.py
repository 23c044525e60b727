"""``rotate-incident``: one approved plan rotates everything a leaked ``.env`` exposed, in order.

Real engine (``serve`` and the CLI as processes), real MariaDB, real PHP ciphertexts,
the reference panel running.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

from bot.fakes.panel.ctl import parse_env
from engine.protocol import fingerprint
from tests.engine.runner import REPO, _env, engine_argv, run_engine
from tests.engine.test_run_binding import add_agents, agent_tokens
from tests.support.secrets_scan import register_secret, scan_text

EXTRA_SECRETS = {"STRIPE_SECRET": "sk_live_Xq81fe0Ab9", "SENTRY_AUTH_TOKEN": "st_Jw7Qp1Lm0Za"}


def serve_raw(profile: Path, **request: Any) -> tuple[list[dict[str, Any]], str]:
    """One request to ``serve``: its events, and everything it wrote (for the secrets scan)."""
    line = json.dumps({"v": 1, **request}) + "\n"
    proc = subprocess.run(
        engine_argv(profile, "serve"), input=line, capture_output=True, text=True,
        env=_env(None), cwd=REPO, timeout=180, check=False,
    )  # fmt: skip
    return [json.loads(x) for x in proc.stdout.splitlines()], proc.stdout + proc.stderr


def serve(profile: Path, **request: Any) -> list[dict[str, Any]]:
    return serve_raw(profile, **request)[0]


def db_password(panel: Any) -> str:
    return parse_env(panel.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]


def _add_other_secrets(panel: Any) -> None:
    """Secrets of other issuers in .env, and one secret-looking value under a harmless name."""
    for name, value in EXTRA_SECRETS.items():
        register_secret(value, name)
    register_secret("Zq0vN3lk8Rt", "APP_NOTES")
    with panel.env_path.open("a", encoding="utf-8") as env:
        env.write("".join(f"{k}={v}\n" for k, v in EXTRA_SECRETS.items()) + "APP_NOTES=Zq0vN3lk8Rt\n")


def _key_check(panel: Any, tmp_path: Path) -> list[str]:
    """A panel check that fails while the key differs from today's (the key part's verify)."""
    keyline = tmp_path / "keyline"
    keyline.write_text(f"PANEL_ENCRYPTION_KEY={panel.env_key()}\n")
    keyline.chmod(0o600)
    script = tmp_path / "check.sh"
    script.write_text(
        f'#!/bin/sh\ngrep -qxF -f "{keyline}" "{panel.env_path}" && {{ echo "200 OK"; exit 0; }}\n'
        'echo "panel shows blank credentials" >&2\nexit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def _part(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in data["parts"] if p["part"] == name)


def test_the_plan_lists_every_part_and_what_must_be_rotated_elsewhere(panel_factory):
    """plan --incident: key counts per column, the DB user, each agent, then PANEL_LICENSE_KEY
    (support, prefilled message) and every other secret-looking .env key by name; no value
    of any of them in the output."""
    panel = panel_factory(rows=2)
    _add_other_secrets(panel)
    add_agents(panel, "agent-3", "agent-5")
    profile = panel.write_profile(agents={"parallelism": 2})

    run = run_engine(profile, "plan", "--incident", "--json")
    human = run_engine(profile, "plan", "--incident")

    plan = run.closing
    assert (0, "result") == (run.returncode, plan["type"])
    assert panel.db.user == _part(plan, "db_password")["db_user"]
    assert 2 == _part(plan, "key")["columns"]["oscam_installs.webif_password"]
    assert ["agent-3", "agent-5"] == [a["name"] for a in _part(plan, "agents")["agents"]]
    manual = {m["name"]: m for m in plan["manual"]}
    assert ["PANEL_LICENSE_KEY", "STRIPE_SECRET", "SENTRY_AUTH_TOKEN"] == list(manual)
    assert "contact MyOsicam support" == manual["PANEL_LICENSE_KEY"]["action"]
    assert "issue a new one" in manual["PANEL_LICENSE_KEY"]["message"]
    assert "rotate at its issuer" == manual["STRIPE_SECRET"]["action"]
    assert "STRIPE_SECRET: rotate at its issuer" in human.stdout
    assert {"db_password", "key", "agents"} <= {e.get("part") for e in run.events if e["type"] == "step"}
    assert [] == run.leaks() + human.leaks()


def test_the_run_rotates_in_order_each_part_verified_and_the_timeline_is_in_the_result(panel_factory):
    """The approved plan runs: the DB password first (the panel's login takes the new one, the
    old one is refused), then the key (PHP opens every value under the new key); each part has
    start and end times and fingerprints, never a value: neither password is in the output.
    No agents section: agents skipped."""
    panel = panel_factory(rows=3, server=True)
    profile = panel.profile_path
    plan = serve(profile, id="r-iplan", op="plan", incident=True)[-1]
    old_key, old_password = panel.env_key(), db_password(panel)

    events, output = serve_raw(profile, id="r-inc1", op="rotate-incident", plan_hash=plan["plan_hash"],
                               key_fingerprint=plan["key_fingerprint"], agents=[], requested_by="U0ALICE",
                               approved_by=["U0BOB"], reason="INC-1 .env leaked",
                               password_fingerprint=plan["password_fingerprint"])  # fmt: skip
    result = events[-1]
    new_password = db_password(panel)
    register_secret(new_password, "DB_PASSWORD (new)")

    assert ("result", True, "DONE") == (result["type"], result["ok"], result["state"])
    db = _part(result, "db_password")
    assert ("done", panel.db.user) == (db["state"], db["db_user"])
    assert new_password != old_password and db["new_fingerprint"] != db["old_fingerprint"]
    assert db["finished_at"] <= _part(result, "key")["started_at"]
    assert [] == scan_text(output)
    journal = panel.root / "journal"
    records = [*journal.rglob("*.events.jsonl"), *journal.rglob("runs.jsonl")]
    assert records and [] == scan_text("".join(p.read_text(encoding="utf-8") for p in records))
    assert 200 == panel.health()[0]
    key = _part(result, "key")
    assert ("done", fingerprint(old_key), fingerprint(panel.env_key())) == (
        key["state"], key["old_fingerprint"], key["new_fingerprint"])
    assert key["started_at"] <= key["finished_at"]
    assert "skipped" == _part(result, "agents")["state"]
    assert [] == panel.php_check_all()
    assert [] == [p["part"] for p in result["left"]]
    parts_seen = [e["part"] for e in events if e["type"] == "step" and e["name"] == "part" and e["state"] == "ok"]
    assert parts_seen == [p["part"] for p in result["parts"] if p["state"] == "done"]


def test_a_failing_key_part_stops_the_sequence_and_leaves_the_agents_untouched(panel_factory, tmp_path):
    """The key's panel check fails after the switch: the key part rolls back (old key verified),
    the parts before it stay done, the agents part never starts (every token as it was), and the
    result says exactly what is left; the CLI exits 1."""
    panel = panel_factory(rows=2, server=True)
    add_agents(panel, "agent-1")
    profile = panel.write_profile(agents={"parallelism": 1}, verify_command=_key_check(panel, tmp_path))
    old_key, tokens = panel.env_key(), agent_tokens(panel)

    run = run_engine(profile, "rotate-incident", "--yes", "--json", "--reason", "INC-2")

    result = run.closing
    assert (1, "result", False, "STOPPED") == (run.returncode, result["type"], result["ok"], result["state"])
    assert "rolled_back" == _part(result, "key")["state"]
    assert "not_started" == _part(result, "agents")["state"]
    assert "done" == _part(result, "db_password")["state"]  # finished, verified, kept
    assert ["key", "agents"] == [p["part"] for p in result["left"]]
    assert "Not started, untouched: agent tokens." in result["message"]
    assert (old_key, tokens) == (panel.env_key(), agent_tokens(panel))
    assert [] == panel.php_check_all()
    assert [] == run.leaks()


def test_a_run_naming_another_db_password_changes_nothing(panel_factory):
    """The plan binds the DB login's current password (by fingerprint): a run that names
    another is refused with password_mismatch before any part starts."""
    panel = panel_factory(rows=1)
    plan = serve(panel.profile_path, id="r-iplan3", op="plan", incident=True)[-1]
    old_key, old_password = panel.env_key(), db_password(panel)

    events = serve(panel.profile_path, id="r-inc4", op="rotate-incident", plan_hash=plan["plan_hash"],
                   key_fingerprint=plan["key_fingerprint"], agents=[],
                   password_fingerprint="0" * 16)  # fmt: skip

    assert plan["password_fingerprint"] == _part(plan, "db_password")["password_fingerprint"]
    assert ("error", "password_mismatch") == (events[-1]["type"], events[-1]["code"])
    assert [] == [e for e in events if e["type"] == "step" and e["name"] == "part"]
    assert (old_key, old_password) == (panel.env_key(), db_password(panel))


def test_a_run_naming_a_stale_plan_changes_nothing(panel_factory):
    """An agent registers after approval: agents_mismatch (or plan_mismatch when the request
    leaves the agents to the hash) before any part starts."""
    panel = panel_factory(rows=1)
    profile = panel.write_profile(agents={"parallelism": 1})
    add_agents(panel, "agent-1")
    plan = serve(profile, id="r-iplan2", op="plan", incident=True)[-1]
    add_agents(panel, "agent-2")
    old_key = panel.env_key()

    events = serve(profile, id="r-inc3", op="rotate-incident", plan_hash=plan["plan_hash"],
                   key_fingerprint=plan["key_fingerprint"], agents=["agent-1"],
                   password_fingerprint=plan["password_fingerprint"])  # fmt: skip

    unnamed = serve(profile, id="r-inc3b", op="rotate-incident", plan_hash=plan["plan_hash"],
                    key_fingerprint=plan["key_fingerprint"],
                    password_fingerprint=plan["password_fingerprint"])  # fmt: skip

    assert ("error", "agents_mismatch") == (events[-1]["type"], events[-1]["code"])
    # agents left out of the request (too many for one line): the plan hash still binds them
    assert ("error", "plan_mismatch") == (unnamed[-1]["type"], unnamed[-1]["code"])
    assert [] == [e for e in events + unnamed if e["type"] == "step" and e["name"] == "part"]
    assert old_key == panel.env_key()


def test_a_run_request_must_name_the_plan():
    """Over the protocol, rotate-incident without plan_hash and key_fingerprint is refused."""
    from engine.protocol import RequestError, parse_request_line

    line = json.dumps({"v": 1, "id": "r-x", "op": "rotate-incident"}).encode()
    try:
        parse_request_line(line)
    except RequestError as exc:
        assert ("plan_required", True) == (exc.code, "plan_hash" in exc.message and "key_fingerprint" in exc.message)
    else:
        raise AssertionError("a rotate-incident without a plan was accepted")
