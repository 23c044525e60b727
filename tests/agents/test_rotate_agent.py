"""``rotate-agent`` on real parts: the PHP panel, agent servers behind real sshd, the engine CLI.

Each agent is installed first (registered, heartbeating with its "old"
token); then the engine runs as a person on the panel host would run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.protocol import AGENT_STEPS
from tests.agents.world import BOOTSTRAP_TEMPLATE, Agent, AgentWorld
from tests.engine.runner import EngineRun, run_engine
from tests.support.panel import free_port


def rotate(world: AgentWorld, *args: str, **agents: Any) -> EngineRun:
    return run_engine(world.profile(**agents), "rotate-agent", *args, "--yes", "--json")


def steps_of(run: EngineRun, agent: str) -> list[tuple[str, str]]:
    return [(e["name"], e["state"]) for e in run.events if e["type"] == "step" and e.get("agent") == agent]


def result_of(run: EngineRun, agent: str) -> dict[str, Any]:
    (found,) = [r for r in run.closing["agents"] if r["name"] == agent]
    return found


def archived(world: AgentWorld, agent: Agent) -> dict[str, Any]:
    """The finished journal of the agent's (one) rotation; no unfinished journal is left."""
    folder = world.panel.root / "journal" / "agents"
    assert not (folder / f"agent-{agent.id}.json").exists()
    (path,) = folder.glob(f"done/*-agent-{agent.id}.json")
    return dict(json.loads(path.read_text()))


ALL_OK = [(step, state) for step in AGENT_STEPS for state in ("started", "ok")]


def test_one_agent_gets_a_new_token_and_the_old_one_is_refused(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """The bootstrap re-runs with a single-use install token; the agent re-registers with a new
    token, the panel refuses the old one, the install token is used up, the new agent process
    replaced the old one, and no token shows in events, output, logs, journals or argv."""
    world, agent = agent_world, installed_agent
    host = agent.host
    assert host is not None
    before = world.state(agent)
    old_pid = host.agent_pid()

    run = rotate(world, "agent-1")
    after = world.state(agent)

    assert (run.returncode, run.closing["type"], run.closing["ok"]) == (0, "result", True)
    assert steps_of(run, "agent-1") == ALL_OK
    result = result_of(run, "agent-1")
    assert {k: v for k, v in result.items() if k != "duration_ms"} == {
        "name": "agent-1",
        "id": agent.id,
        "server": f"srv-agent-1 ({host.user}@127.0.0.1:{host.port})",
        "ok": True,
        "outcome": "rotated",
        "state": "DONE",
        "failed_step": None,
        "error": None,
        "old_fingerprint": before.fingerprint,
        "new_fingerprint": after.fingerprint,
        "install_token": "used",
        "old_token_valid": None,
        "resumed_from": None,
        "new_token": "proven by re-registration",
        "old_token": "refused",
    }
    assert (run.closing["total"], run.closing["rotated"], run.closing["failed"]) == (1, 1, 0)
    assert after.token != before.token and after.last_seen > before.last_seen
    assert world.heartbeat(agent.id, before.token) == (401, {"ok": False, "error": "bad signature"})
    assert world.heartbeat(agent.id, after.token) == (200, {"ok": True})
    assert [t["used"] for t in world.install_tokens(agent)] == [True, True]  # the install, the rotation
    new_pid = host.agent_pid()
    assert new_pid not in (None, old_pid) and host.agent_processes() == [new_pid]
    assert host.token_file().read_text().strip() == after.token
    assert host.token_file().stat().st_mode & 0o777 == 0o600
    world.wait_for_heartbeat(agent)  # the new agent heartbeats with the new token
    assert archived(world, agent)["state"] == "DONE"
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []


def test_several_agents_one_unreachable_the_others_rotate(agent_world: AgentWorld) -> None:
    """--all with one agent server down: that agent fails at preflight with nothing issued,
    the others rotate (in parallel), and the closing result lists every agent."""
    world = agent_world
    one = world.add_agent("agent-1", world.start_host())
    two = world.add_agent("agent-2", world.start_host())
    dead_port = free_port()
    down = world.add_agent("agent-3", None, port=dead_port)
    for agent in (one, two):
        world.install(agent)
    world.sql("UPDATE agents SET agent_token = %s WHERE id = %s", ("ab" * 32, down.id))  # registered long ago
    before = {a.name: world.state(a) for a in (one, two, down)}

    run = rotate(world, "--all", parallelism=4)

    assert (run.returncode, run.closing["ok"], run.closing["code"]) == (1, False, "agent_failed")
    assert [(r["name"], r["outcome"]) for r in run.closing["agents"]] == [
        ("agent-1", "rotated"), ("agent-2", "rotated"), ("agent-3", "failed")
    ], run.closing["agents"]  # a failure names its code and message (seen once under load)
    failed = result_of(run, "agent-3")
    assert (failed["failed_step"], failed["install_token"], failed["old_token_valid"]) == (
        "preflight", "not issued", True
    )
    assert failed["error"] == (
        f"agent server srv-agent-3 (nobody@127.0.0.1:{dead_port}): connection refused or unreachable"
    )
    assert steps_of(run, "agent-3") == [("preflight", "started"), ("preflight", "failed")]
    assert world.install_tokens(down) == []
    assert world.state(down).token == before["agent-3"].token
    for agent in (one, two):
        assert steps_of(run, agent.name) == ALL_OK
        assert world.state(agent).fingerprint == result_of(run, agent.name)["new_fingerprint"]
        assert world.heartbeat(agent.id, before[agent.name].token)[0] == 401
    assert run.closing["message"] == (
        "2 of 3 agents have a new token proven by re-registration; old token: refused for 2; 1 failed; "
        "agent-3 failed at preflight: " + failed["error"]
    )
    bootstraps = [(e["agent"], e["state"]) for e in run.events if e["type"] == "step" and e["name"] == "bootstrap"]
    assert sorted(bootstraps[:2]) == [("agent-1", "started"), ("agent-2", "started")]  # they overlapped
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []


def test_parallelism_one_rotates_agents_one_after_the_other(agent_world: AgentWorld) -> None:
    """With parallelism = 1, every event of the first agent comes before any of the second."""
    world = agent_world
    agents = [world.add_agent(f"agent-{i}", world.start_host()) for i in (1, 2)]
    for agent in agents:
        world.install(agent)

    run = rotate(world, "agent-1", "agent-2", parallelism=1)

    order = [e["agent"] for e in run.events if e["type"] == "step"]
    assert run.closing["ok"] is True
    assert order == ["agent-1"] * 10 + ["agent-2"] * 10


def test_an_expired_install_token_fails_the_bootstrap_and_changes_nothing(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """The install token expires (1 s) before the slow bootstrap registers: the panel refuses it,
    the bootstrap fails with the panel's reason, and the agent keeps its old, valid token and process."""
    world, agent = agent_world, installed_agent
    assert agent.host is not None
    before = world.state(agent)
    old_pid = agent.host.agent_pid()

    run = rotate(world, "agent-1", install_token_ttl_s=1, bootstrap_command="sleep 2.5; " + BOOTSTRAP_TEMPLATE)

    result = result_of(run, "agent-1")
    assert (run.returncode, result["outcome"], result["failed_step"]) == (1, "failed", "bootstrap")
    assert result["error"] == (
        f"the bootstrap on {result['server']} failed (exit 3): bootstrap: the agent could not register: "
        "refused (401: install token unknown, used or expired)"
    )
    assert (result["install_token"], result["old_token_valid"], result["state"]) == (
        "expired", True, "TOKEN_ISSUED"
    )
    assert steps_of(run, "agent-1")[-2:] == [("bootstrap", "started"), ("bootstrap", "failed")]
    assert world.state(agent).token == before.token
    assert world.install_tokens(agent)[1:] == [{"id": 2, "used": False, "alive": False}]
    assert world.heartbeat(agent.id, before.token) == (200, {"ok": True})
    assert agent.host.agent_pid() == old_pid
    assert archived(world, agent)["failed_step"] == "bootstrap"
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []


def test_an_agent_that_never_reregisters_times_out_with_its_old_token_still_valid(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """The new agent cannot reach the panel (wrong URL): the wait times out and is reported,
    the unused install token is revoked, the old agent keeps heartbeating with its old token,
    and no journal is left half-done."""
    world, agent = agent_world, installed_agent
    assert agent.host is not None
    before = world.state(agent)
    old_pid = agent.host.agent_pid()

    run = rotate(
        world,
        "agent-1",
        panel_url=f"http://127.0.0.1:{free_port()}",
        bootstrap_command=BOOTSTRAP_TEMPLATE.replace("--wait-s 5", "--wait-s 0.5"),
        reregister_timeout_s=2,
    )

    result = result_of(run, "agent-1")
    assert (run.returncode, result["outcome"], result["failed_step"]) == (1, "failed", "reregistered")
    assert result["error"] == "the agent did not re-register within 2 s"
    assert (result["install_token"], result["old_token_valid"], result["state"]) == (
        "revoked", True, "BOOTSTRAPPED"
    )
    assert steps_of(run, "agent-1")[-2:] == [("reregistered", "started"), ("reregistered", "failed")]
    assert world.state(agent).token == before.token
    assert world.install_tokens(agent)[1:] == [{"id": 2, "used": False, "alive": False}]
    world.wait_for_heartbeat(agent)  # the old agent still runs, with the old token
    assert agent.host.agent_pid() == old_pid
    assert world.heartbeat(agent.id, before.token) == (200, {"ok": True})
    assert archived(world, agent)["state"] == "FAILED"
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []


def test_an_unknown_agent_name_is_reported_and_the_named_ones_rotate(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """A name the panel does not know fails on its own; the known agent still rotates."""
    run = rotate(agent_world, "agent-1", "agent-9")

    assert [(r["name"], r["outcome"], r["error"]) for r in run.closing["agents"]] == [
        ("agent-1", "rotated", None),
        ("agent-9", "failed", "no agent named agent-9 on this panel"),
    ]
    assert steps_of(run, "agent-9") == [("preflight", "failed")]


def test_an_agent_server_whose_host_key_is_not_pinned_is_refused(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """A host key that known_hosts does not pin, or pins differently, stops the agent at
    preflight: no install token is issued."""
    world, agent = agent_world, installed_agent
    assert agent.host is not None
    stranger = world.root / "known_hosts.other"
    kind, blob = world.start_host().host_key.public_line.split()[:2]
    stranger.write_text(f"[127.0.0.1]:{agent.host.port} {kind} {blob}\n")
    empty = world.root / "known_hosts.empty"
    empty.write_text("")

    changed = rotate(world, "agent-1", known_hosts=str(stranger))
    unknown = rotate(world, "agent-1", known_hosts=str(empty))

    server = f"agent server srv-agent-1 ({agent.host.user}@127.0.0.1:{agent.host.port})"
    assert result_of(changed, "agent-1")["error"] == (
        f"{server} presented a host key other than the one pinned in {stranger}: refusing"
    )
    assert result_of(unknown, "agent-1")["error"] == f"{server} is not pinned in {empty}: refusing"
    assert len(world.install_tokens(agent)) == 1  # the first install's only


def test_agent_servers_from_the_profile_inventory(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """ssh_source = "inventory": host, user and key file come from the profile, not the panel."""
    world, agent = agent_world, installed_agent
    assert agent.host is not None
    host = agent.host
    world.sql("UPDATE saved_servers SET ssh_credential_encrypted = NULL WHERE id = %s", (agent.server_id,))
    entry = {"host": "127.0.0.1", "port": host.port, "user": host.user, "key_file": str(host.client_key.private_path)}

    run = rotate(world, "agent-1", ssh_source="inventory", inventory={"agent-1": entry})

    assert run.closing["ok"] is True
    assert result_of(run, "agent-1")["server"] == f"agent-1 ({host.user}@127.0.0.1:{host.port})"


def test_the_command_provider_gets_install_tokens_from_a_panel_command(
    agent_world: AgentWorld, installed_agent: Agent, tmp_path: Path
) -> None:
    """install_token_provider = "command": the panel's own command makes the token (here a script
    that stores its hash as the panel would); the revoke command gets it on stdin, not argv."""
    world = agent_world
    db = world.panel.db
    script = tmp_path / "tokens.py"
    script.write_text(
        "import hashlib, os, secrets, sys, pymysql\n"
        f"conn = pymysql.connect(host={db.host!r}, port={db.port}, user={db.user!r}, password={db.password!r},"
        f" database={db.name!r}, autocommit=True)\n"
        "cur = conn.cursor()\n"
        "if sys.argv[1:] == ['revoke']:\n"
        "    token = sys.stdin.readline().strip()\n"
        "    cur.execute('UPDATE agent_install_tokens SET expires_at = UTC_TIMESTAMP(6) WHERE token_sha256 = %s"
        " AND used_at IS NULL', (hashlib.sha256(token.encode()).hexdigest(),))\n"
        f"    open({str(tmp_path / 'revoked')!r}, 'a').write('revoke called\\n')\n"
        "else:\n"
        "    token = secrets.token_urlsafe(24)\n"
        "    cur.execute('INSERT INTO agent_install_tokens (agent_id, token_sha256, expires_at) VALUES"
        " (%s, %s, UTC_TIMESTAMP(6) + INTERVAL 300 SECOND)',"
        " (int(os.environ['ROTATOR_AGENT_ID']), hashlib.sha256(token.encode()).hexdigest()))\n"
        "    print('issued for', os.environ['ROTATOR_AGENT_NAME'])\n"
        "    print(token)\n"
    )
    run = rotate(
        world,
        "agent-1",
        install_token_provider="command",
        install_token_command=[sys.executable, str(script)],
        install_token_revoke_command=[sys.executable, str(script), "revoke"],
    )

    assert run.closing["ok"] is True
    assert result_of(run, "agent-1")["install_token"] == "revoked"  # handed to the revoke command
    assert (tmp_path / "revoked").read_text() == "revoke called\n"
    assert [t["used"] for t in world.install_tokens(installed_agent)] == [True, True]
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []
