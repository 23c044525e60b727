"""A crash in the middle of an agent's rotation: the next run resumes it from its journal.

The engine stops itself at a named point (``MYOSICAM_ENGINE_FAULT=stop@agent:...``)
and is SIGKILLed there, as a crash would; the same command run again finds
the agent's journal and carries on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.agents.world import Agent, AgentWorld, serve
from tests.engine.runner import REPO, EngineRun, crash_at, finish, run_engine, start_paused
from tests.support.plans import plan_fields

ARGS = ("rotate-agent", "agent-1", "--yes", "--json")


def steps(run: EngineRun) -> list[tuple[str, str, str]]:
    return [(e["name"], e["state"], e["detail"]) for e in run.events if e["type"] == "step"]


def journal_state(world: AgentWorld, agent: Agent) -> dict[str, Any]:
    """The unfinished journal, without its tokens (it holds them, 0600, until the end)."""
    path = world.panel.root / "journal" / "agents" / f"agent-{agent.id}.json"
    data = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    return {"state": data["state"], "has_install_token": bool(data["install_token"])}


def test_a_crash_after_the_bootstrap_resumes_without_a_second_install_token(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """Killed right after the bootstrap ran (the agent re-registered meanwhile): the next run
    sees the new token, issues no install token, checks the old one is dead and finishes."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    before = world.state(agent)

    crashed = crash_at(profile, "agent:bootstrapped", *ARGS)
    journaled = journal_state(world, agent)
    tokens_after_crash = world.install_tokens(agent)
    resumed = run_engine(profile, *ARGS)
    after = world.state(agent)

    assert crashed.returncode == -9 and journaled == {"state": "BOOTSTRAPPED", "has_install_token": True}
    (result,) = resumed.closing["agents"]
    assert (resumed.returncode, result["outcome"], result["resumed_from"]) == (0, "rotated", crashed.events[0]["id"])
    assert (result["old_fingerprint"], result["new_fingerprint"]) == (before.fingerprint, after.fingerprint)
    assert [(name, state) for name, state, _ in steps(resumed)] == [
        ("preflight", "started"), ("preflight", "ok"),
        ("issue_token", "skipped"), ("bootstrap", "skipped"),
        ("reregistered", "started"), ("reregistered", "ok"),  # proven by a heartbeat with the new token
        ("old_revoked", "started"), ("old_revoked", "ok"),
    ]
    assert steps(resumed)[2][2] == "issued before the interruption; no second token"
    assert world.install_tokens(agent) == tokens_after_crash and len(tokens_after_crash) == 2
    assert world.heartbeat(agent.id, before.token)[0] == 401
    assert world.heartbeat(agent.id, after.token)[0] == 200
    assert world.leaks(crashed.stdout, resumed.stdout, resumed.stderr, world.everything_written()) == []
    ages = run_engine(profile, "status", "--json").closing["secret_ages"]
    rotated = {a["agent"]: a["rotated_at"] for a in ages["agents"]}
    assert ages["agents_listed"] and rotated[agent.name] is not None, "status dates the agent's new token"


def test_a_crash_before_the_bootstrap_reuses_the_journaled_install_token(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """Killed after the install token was journaled and stored, before the bootstrap: the next
    run bootstraps with that same token rather than issuing another."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    before = world.state(agent)

    crashed = crash_at(profile, "agent:token_issued", *ARGS)
    journaled = journal_state(world, agent)
    tokens_after_crash = world.install_tokens(agent)
    resumed = run_engine(profile, *ARGS)

    assert journaled == {"state": "TOKEN_ISSUED", "has_install_token": True}
    assert tokens_after_crash[1:] == [{"id": 2, "used": False, "alive": True}]
    assert resumed.closing["ok"] is True
    issue = [(state, detail) for name, state, detail in steps(resumed) if name == "issue_token"]
    assert issue == [
        ("started", "checking the journaled install token"),
        ("ok", "reusing the install token issued before the interruption"),
    ]
    assert world.install_tokens(agent)[1:] == [{"id": 2, "used": True, "alive": True}]
    assert world.state(agent).token != before.token
    assert world.leaks(crashed.stdout, resumed.stdout, resumed.stderr, world.everything_written()) == []


def test_a_crash_before_the_token_is_stored_stores_the_journaled_one(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """The journal is written before the panel knows the token: a run killed in between finds a
    journaled token the panel does not have yet, stores that one, and uses it."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    crashed = crash_at(profile, "agent:token_issued", *ARGS)
    world.sql("DELETE FROM agent_install_tokens WHERE id = 2")  # as if killed before the INSERT

    resumed = run_engine(profile, *ARGS)

    assert crashed.returncode == -9 and resumed.closing["ok"] is True
    assert [d for n, s, d in steps(resumed) if n == "issue_token" and s == "ok"] == [
        "journaled before the interruption, stored now · no second token"
    ]
    assert [t["used"] for t in world.install_tokens(agent)] == [True, True]


def test_a_dry_run_with_an_interrupted_rotation_only_reports_it(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """A dry run never resumes: it checks the agent and says a real run would resume the journal."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    crashed = crash_at(profile, "agent:token_issued", *ARGS)
    tokens = world.install_tokens(agent)

    events = serve(profile, op="rotate-agent", agents=["agent-1"], dry_run=True)

    ok_detail = [e["detail"] for e in events if e.get("name") == "preflight" and e["state"] == "ok"]
    assert ok_detail[0].endswith(f"rotation {crashed.events[0]['id']} stopped at TOKEN_ISSUED: a run resumes it")
    assert events[-1]["agents"][0]["outcome"] == "ready"
    assert journal_state(world, agent) == {"state": "TOKEN_ISSUED", "has_install_token": True}
    assert world.install_tokens(agent) == tokens


def test_a_dropped_connection_does_not_stop_the_rotation(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """The bot's connection goes away after the first event: the engine carries on to the end,
    and its event log (what ``attach`` replays) holds the closing result."""
    world, agent = agent_world, installed_agent
    before = world.state(agent)
    named = plan_fields(world.profile(), "rotate-agent", agents=["agent-1"])
    line = json.dumps({"v": 1, "id": "drop-1", "op": "rotate-agent", **named}) + "\n"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "--profile", str(world.profile()), "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line.encode())
    proc.stdin.close()
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()  # the connection drops
    proc.wait(timeout=120)

    log = world.panel.root / "journal" / "events" / "drop-1.events.jsonl"
    closing = json.loads(log.read_text().splitlines()[-1])
    assert first["type"] == "hello"
    assert (closing["type"], closing["ok"], closing["agents"][0]["outcome"]) == ("result", True, "rotated")
    assert world.state(agent).token != before.token
    assert world.heartbeat(agent.id, before.token)[0] == 401
    assert world.leaks(log.read_text(), world.everything_written()) == []



def test_status_reports_and_recover_closes_an_interrupted_agent_rotation(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """Killed right after its install token was stored: status shows the agent still holds its
    old token and the install token is usable; recover revokes that token and closes the
    journal, so nothing usable is left and status is clean again."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    before = world.state(agent)

    crashed = crash_at(profile, "agent:token_issued", *ARGS)
    status = run_engine(profile, "status", "--json")
    recovered = run_engine(profile, "recover", "--json")
    status_after = run_engine(profile, "status", "--json")
    text = run_engine(profile, "status")

    rotation_id = crashed.events[0]["id"]
    (pending,) = status.closing["unfinished_agents"]
    assert {k: pending[k] for k in ("rotation_id", "agent", "state", "token", "install_token")} == {
        "rotation_id": rotation_id, "agent": "agent-1", "state": "TOKEN_ISSUED", "token": "old",
        "install_token": "usable",
    }
    (closed,) = recovered.closing["agents"]
    assert (recovered.returncode, closed["install_token"], closed["token"]) == (0, "revoked", "old")
    assert world.install_tokens(agent)[1:] == [{"id": 2, "used": False, "alive": False}]
    assert status_after.closing["unfinished_agents"] == []
    assert "UNFINISHED agent" not in text.stdout
    assert world.state(agent).token == before.token
    done = world.panel.root / "journal" / "agents" / "done" / f"{rotation_id}-agent-{agent.id}.json"
    assert json.loads(done.read_text())["error"] == (
        "interrupted at TOKEN_ISSUED; closed by recover: the agent holds the old token, install token revoked"
    )
    assert world.leaks(crashed.stdout, status.stdout, recovered.stdout, world.everything_written()) == []


def test_a_crash_mid_journal_write_leaves_no_token_after_recover(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """Killed while the agent's journal is written (its temporary file holds the new install
    token, not yet renamed into place): status says so (exit 3), recover removes the file, and
    no file in the journal folder holds the token afterwards."""
    world, agent = agent_world, installed_agent
    profile = world.profile()
    agents_dir = world.panel.root / "journal" / "agents"

    crashed = crash_at(profile, f"write:agent-{agent.id}.json", *ARGS)
    (temp,) = sorted(agents_dir.glob(f".agent-{agent.id}.json.rotator-*.tmp"))
    token = json.loads(temp.read_text())["install_token"]
    status = run_engine(profile, "status")
    recovered = run_engine(profile, "recover", "--json")
    status_after = run_engine(profile, "status")

    assert crashed.returncode == -9 and token
    assert status.returncode == 3 and "UNFINISHED 1 temporary file a killed run left" in status.stdout
    assert recovered.returncode == 0, recovered.stderr
    journal = world.panel.root / "journal"
    holding = [str(p) for p in sorted(journal.rglob("*")) if p.is_file() and token.encode() in p.read_bytes()]
    assert holding == [] and sorted(journal.rglob("*.tmp")) == []
    assert status_after.returncode == 0
    assert world.leaks(crashed.stdout, status.stdout, recovered.stdout, world.everything_written()) == []
    assert token not in status.stdout + recovered.stdout


def test_status_during_a_live_agent_rotation_says_running(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """Paused mid-rotation (the install token journaled): RUNNING with the pid, operation and
    step, exit 0, no UNFINISHED agent line beside it."""
    world = agent_world
    profile = world.profile()
    proc = start_paused(profile, "agent:token_issued", *ARGS)
    try:
        text = run_engine(profile, "status")
    finally:
        done = finish(proc)
    assert text.returncode == 0
    assert f"RUNNING: rotate-agent {done.events[0]['id']} (pid {proc.pid}), step " in text.stdout
    assert "journaled at TOKEN_ISSUED" in text.stdout and "UNFINISHED" not in text.stdout
    assert done.returncode == 0
