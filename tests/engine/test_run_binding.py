"""A run request names the approved plan; the engine re-plans in the same process and
refuses any mismatch before it changes anything. Its own run record keeps every run.

Real engine (``serve`` as a process), real MariaDB, real PHP ciphertexts.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from engine.protocol import fingerprint
from tests.engine.runner import REPO, _env, engine_argv, register_made_secrets, run_engine
from tests.support.secrets_scan import register_secret


def serve(profile: Path, **request: Any) -> list[dict[str, Any]]:
    """One request to ``python -m engine --profile P serve``; its events."""
    line = json.dumps({"v": 1, **request}) + "\n"
    proc = subprocess.run(
        engine_argv(profile, "serve"), input=line, capture_output=True, text=True,
        env=_env(None), cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    register_made_secrets(profile)
    return [json.loads(x) for x in proc.stdout.splitlines()]


def record_path(profile: Path) -> Path:
    from engine.profile import load_profile

    return load_profile(profile).journal_dir / "runs.jsonl"


def read_record(profile: Path) -> list[dict[str, Any]]:
    path = record_path(profile)
    return [json.loads(x) for x in path.read_text().splitlines()]


def add_agents(panel: Any, *names: str) -> None:
    with panel.db.connect() as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(
                "INSERT INTO agents (name, agent_token) VALUES (%s, %s)", (name, "t-" + name)
            )
        conn.commit()


def agent_tokens(panel: Any) -> dict[str, str]:
    with panel.db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT name, agent_token FROM agents ORDER BY name")
        return {str(n): str(t) for n, t in cur.fetchall()}


def test_a_stale_plan_or_a_wrong_key_is_refused_and_nothing_changes(panel_factory):
    """rotate-key naming a stale plan hash (plan_mismatch) or another current key
    (key_mismatch): one error each, .env and every stored value as they were; the run
    that names the plan as it is now rotates. The host's run record has all three."""
    panel = panel_factory(rows=3)
    profile = panel.profile_path
    old_key = panel.env_key()
    plan = serve(profile, id="r-plan", op="plan")[-1]
    assert ("result", fingerprint(old_key)) == (plan["type"], plan["key_fingerprint"])
    env_before, values_before = panel.env_path.read_bytes(), panel.stored_values()
    who = {"requested_by": "U0ALICE", "approved_by": ["U0BOB"], "reason": "INC-1"}

    stale = serve(profile, id="r-stale", op="rotate-key", plan_hash="0" * 64,
                  key_fingerprint=plan["key_fingerprint"], **who)[-1]  # fmt: skip
    wrong_key = serve(profile, id="r-wrongkey", op="rotate-key", plan_hash=plan["plan_hash"],
                      key_fingerprint="0123456789abcdef", **who)[-1]  # fmt: skip

    assert ("error", "plan_mismatch", None) == (stale["type"], stale["code"], stale["rolled_back"])
    assert plan["plan_hash"] == stale["plan"]["plan_hash"], "the refusal carries the plan as it is now"
    assert ("error", "key_mismatch") == (wrong_key["type"], wrong_key["code"])
    assert (env_before, values_before) == (panel.env_path.read_bytes(), panel.stored_values())
    assert [] == panel.php_check_all(old_key)

    done = serve(profile, id="r-good", op="rotate-key", plan_hash=plan["plan_hash"],
                 key_fingerprint=plan["key_fingerprint"], **who)[-1]  # fmt: skip
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert ("result", "DONE") == (done["type"], done["state"])
    record = read_record(profile)
    finished = [(r["rotation_id"], r["ok"], r.get("code")) for r in record if r["event"] == "finished"]
    assert [("r-stale", False, "plan_mismatch"), ("r-wrongkey", False, "key_mismatch"),
            ("r-good", True, None)] == finished  # fmt: skip
    good = [r for r in record if r["rotation_id"] == "r-good"]
    assert [("started", "U0ALICE", ["U0BOB"], "INC-1", plan["plan_hash"])] == [
        (r["event"], r["requested_by"], r["approved_by"], r["reason"], r["plan_hash"])
        for r in good[:1]
    ]
    assert (done["old_fingerprint"], done["new_fingerprint"]) == (
        good[-1]["old_fingerprint"], good[-1]["new_fingerprint"])  # fmt: skip
    assert 0o600 == stat.S_IMODE(record_path(profile).stat().st_mode)
    status = serve(profile, id="r-status", op="status")[-1]
    rotated_at = status["secret_ages"]["key_rotated_at"]
    assert rotated_at is not None and abs(time.time() - rotated_at) < 600, "the key's age comes from its DONE rotation"
    assert (True, []) == (status["secret_ages"]["agents_listed"], status["secret_ages"]["agents"])
    assert ["r-stale", "r-wrongkey", "r-good"] == list(
        dict.fromkeys(r["rotation_id"] for r in status["runs"])
    )
    shown = run_engine(profile, "status").stdout
    assert "r-stale rotate-key: failed (plan_mismatch) · requested by U0ALICE · approved by U0BOB" in shown
    assert f"r-good rotate-key: ok · requested by U0ALICE · approved by U0BOB · plan {plan['plan_hash'][:12]}" in shown


def test_an_agent_list_that_changed_since_approval_is_refused(panel_factory):
    """rotate-agent --all approved for two agents; a third registers: the run names the
    approved two, --all on the host now means three: agents_mismatch, no token touched."""
    panel = panel_factory(rows=1)
    profile = panel.profile_path
    add_agents(panel, "agent-7", "agent-9")
    plan = serve(profile, id="r-aplan", op="plan", all_agents=True)[-1]
    assert ["agent-7", "agent-9"] == sorted(a["name"] for a in plan["agents"])
    add_agents(panel, "agent-11")
    tokens_before = agent_tokens(panel)
    ages = serve(profile, id="r-ages", op="status")[-1]["secret_ages"]
    assert [("agent-11", None), ("agent-7", None), ("agent-9", None)] == [
        (a["agent"], a["rotated_at"]) for a in ages["agents"]
    ], "agents never rotated are listed, their age unknown"

    refused = serve(profile, id="r-agents", op="rotate-agent", all_agents=True,
                    agents=["agent-7", "agent-9"], plan_hash=plan["plan_hash"],
                    requested_by="U0ALICE", approved_by=["U0BOB"])[-1]  # fmt: skip
    renamed = serve(profile, id="r-agents2", op="rotate-agent", agents=["agent-7", "agent-11"],
                    plan_hash=plan["plan_hash"])[-1]  # fmt: skip

    assert ("error", "agents_mismatch") == (refused["type"], refused["code"])
    assert "agents added: agent-11" in refused["differences"]
    assert ("error", "plan_mismatch") == (renamed["type"], renamed["code"])
    assert tokens_before == agent_tokens(panel)
    assert [("r-agents", "agents_mismatch"), ("r-agents2", "plan_mismatch")] == [
        (r["rotation_id"], r["code"]) for r in read_record(profile) if r["event"] == "finished"
    ]
