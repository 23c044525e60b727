"""rotate-agent reports only what it proved (issue 11): each test is a case where it did not.

* a bricked agent (the panel holds its new token, nothing heartbeats with it) is not "rotated";
* an old-token check counts only when the same check with the new token is accepted;
* a check that cannot tell is "could not verify" (exit 4), not "failed" and not "rotated";
* no token, whatever its format, reaches events, output or journals.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.agents.world import AGENT_PY, BOOTSTRAP_TEMPLATE, NODES, Agent, AgentWorld, serve
from tests.engine.runner import EngineRun, run_engine


def rotate(world: AgentWorld, *args: str, **agents: Any) -> EngineRun:
    return run_engine(world.profile(**agents), "rotate-agent", *args, "--yes", "--json")


def only(run: EngineRun) -> dict[str, Any]:
    (result,) = run.closing["agents"]
    return dict(result)


def step_detail(run: EngineRun, name: str, state: str = "ok") -> str:
    (detail,) = [e["detail"] for e in run.events if e["type"] == "step" and (e["name"], e["state"]) == (name, state)]
    return str(detail)


def test_a_bricked_agent_is_not_reported_as_rotated(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """11.1: the bootstrap waits 2.5 s (the old agent heartbeats meanwhile), registers, then the
    agent keeps a wrong token: the panel holds the new token, every heartbeat gets 401. That is a
    failure at "reregistered", not a rotation."""
    world, agent = agent_world, installed_agent
    before = world.state(agent)

    run = rotate(world, "agent-1", bootstrap_command="sleep 2.5; " + BOOTSTRAP_TEMPLATE + " --brick",
                 reregister_timeout_s=3)

    after = world.state(agent)
    result = only(run)
    assert after.token not in (None, before.token)  # the panel did issue a new token
    assert (run.returncode, run.closing["ok"], result["outcome"], result["failed_step"]) == (
        1, False, "failed", "reregistered"
    )
    assert result["error"] == (
        f"the agent registered a new token ({after.fingerprint}) but is not working with it: "
        "no proof (a heartbeat signed with it) within 3 s"
    )
    assert run.closing["message"].startswith(
        "0 of 1 agents have a new token proven by re-registration; 1 failed; agent-1 failed at reregistered"
    )
    assert (result["new_token"], result["old_token"]) == ("issued, not proven", "not checked")
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []


def test_a_check_that_cannot_tell_says_could_not_verify(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """11.3: the heartbeat URL answers 404 (a panel without that endpoint). Every token rotated
    and the agent heartbeats with its new one, so this is neither "failed" nor "rotated": it is
    "could not verify", exit 4, with its own count and code. 11.2: an endpoint that refuses
    the engine's signature whatever the token gives the same answer, not "the panel refuses it"."""
    world, agent = agent_world, installed_agent
    before = world.state(agent)
    world.create_tables(NODES)  # /api/nodes/ping: another signature, refuses the engine's

    run = rotate(world, "agent-1", heartbeat_url=f"{world.panel_url}/agents/heartbeat-v2")
    second = rotate(world, "agent-1", heartbeat_url=f"{world.panel_url}/api/nodes/ping")

    result = only(run)
    assert (second.returncode, only(second)["outcome"]) == (4, "unverified")  # not "rotated"
    assert "answered 403 missing or malformed Authorization" in only(second)["error"]
    assert (run.returncode, run.closing["ok"], run.closing["code"]) == (4, False, "agent_unverified")
    assert (run.closing["rotated"], run.closing["unverified"], run.closing["failed"]) == (0, 1, 0)
    assert (result["outcome"], result["failed_step"], result["state"]) == ("unverified", "old_revoked", "REREGISTERED")
    assert result["error"] == (
        f"could not verify: the check with the new token was not accepted either (POST "
        f"{world.panel_url}/agents/heartbeat-v2 answered 404 no route POST /agents/heartbeat-v2), "
        "so a refusal of the old one would prove nothing"
    )
    assert run.closing["message"] == (
        "1 of 1 agents have a new token proven by re-registration; old token: could not verify for 1; "
        f"agent-1 unverified at old_revoked: {result['error']}"
    ), "the token changed and the new one is proven: never \"0 rotated\""
    assert (result["new_token"], result["old_token"]) == ("proven by re-registration", "could not verify")
    assert (run.closing["new_token_proven"], run.closing["old_token_refused"], run.closing["old_token_unverified"]) == (
        1, 0, 1
    )
    assert world.heartbeat(agent.id, before.token)[0] == 401  # it did rotate: the engine just could not tell
    assert world.heartbeat(agent.id, world.state(agent).token or "")[0] == 200
    assert world.leaks(run.stdout, second.stdout, run.stderr, world.everything_written()) == []


def _nodes_world(world: AgentWorld, *names: str) -> list[Agent]:
    world.use(NODES)
    agents = [world.add_agent(name, world.start_host()) for name in names]
    for agent in agents:
        world.install(agent)
    return agents


NODES_BOOTSTRAP = BOOTSTRAP_TEMPLATE + " --scheme nodes"
NODES_CHECK = [sys.executable, str(AGENT_PY), "check", "--scheme", "nodes"]


def test_a_refusal_without_a_positive_control_is_no_proof(agent_world: AgentWorld) -> None:
    """11.2: a panel that keeps old tokens valid (keep_previous) and signs another way. The
    engine's own heartbeat is refused whatever the token, so it cannot tell: could not verify.
    Asked in the panel's own way (old_token_check = "command"), the old token is found alive:
    failed. Never "the panel refuses it"."""
    world = agent_world
    (agent,) = _nodes_world(world, "node-1")
    world.sql("UPDATE edge_nodes SET keep_previous = 1")
    heartbeat = rotate(world, "node-1", bootstrap_command=NODES_BOOTSTRAP,
                       heartbeat_url=f"{world.panel_url}/api/nodes/ping")
    before = world.state(agent)

    command = rotate(world, "node-1", bootstrap_command=NODES_BOOTSTRAP, old_token_check="command",
                     old_token_check_command=NODES_CHECK, reregister_check_command=NODES_CHECK)

    assert (heartbeat.returncode, only(heartbeat)["outcome"]) == (4, "unverified")
    assert "answered 403 missing or malformed Authorization" in only(heartbeat)["error"]
    assert (command.returncode, only(command)["outcome"], only(command)["failed_step"]) == (1, "failed", "old_revoked")
    assert "· its check command after" in step_detail(command, "reregistered")
    assert only(command)["error"] == "the panel still accepts the old token (the check command exited 0: " \
        "/api/nodes/ping answered 204)"
    assert world.heartbeat(agent.id, before.token)[0] == 204  # indeed still accepted
    assert world.leaks(heartbeat.stdout, command.stdout, command.stderr, world.everything_written()) == []


def test_a_differently_named_panel_rotates_through_the_profile_alone(agent_world: AgentWorld) -> None:
    """The "edge nodes" schema (other tables, columns and keys, UUID tokens, its own signature,
    no last_seen at registration) rotates with nothing but profile settings; --all obeys the
    profile's filter. 11.4: the bootstrap's last line carries the new UUID token; with its
    output forwarded the line shows, the token does not, anywhere."""
    world = agent_world
    one, two = _nodes_world(world, "node-1", "node-2")
    world.sql("UPDATE edge_nodes SET pool = 'spare' WHERE node_id = %s", (two.id,))
    before = {a.name: world.state(a) for a in (one, two)}
    settings = {"bootstrap_command": NODES_BOOTSTRAP + " --say-token", "old_token_check": "command",
                "old_token_check_command": NODES_CHECK, "forward_bootstrap_output": True,
                "all_filter_column": "pool", "all_filter_value": "main"}

    probe = run_engine(world.profile(**settings), "probe", "--json")
    run = rotate(world, "--all", **settings)

    after = world.state(one)
    assert (probe.closing["agents"]["ok"], probe.closing["agents"]["problems"]) == (True, [])
    assert (run.returncode, [(r["name"], r["outcome"]) for r in run.closing["agents"]]) == (0, [("node-1", "rotated")])
    assert len(after.token or "") == 36 and after.token != before["node-1"].token  # a UUID
    assert step_detail(run, "bootstrap").endswith(f"agent {one.id} registered, token [token]")
    assert step_detail(run, "old_revoked").startswith(
        "no row holds it · the panel refuses it (the check command exited 1"
    )
    assert world.heartbeat(one.id, before["node-1"].token)[0] == 403
    assert world.state(two).token == before["node-2"].token  # filtered out of --all
    assert world.leaks(probe.stdout, run.stdout, run.stderr, world.everything_written()) == []


def test_an_opt_in_name_pattern_refuses_other_names_before_any_change(agent_world: AgentWorld) -> None:
    """9.11, now opt-in (issue 20.9): a profile that sets agent_name_pattern refuses a name that
    does not match at preflight; no install token is issued and no bootstrap runs. The plan
    names the problem first, and all_name_pattern narrows --all."""
    world = agent_world
    bad = world.add_agent("x$(touch /tmp/pwned)", None)
    world.add_agent("spare-1", None)
    strict = {"agent_name_pattern": r"[A-Za-z0-9._-]+"}

    plan = serve(world.profile(**strict), op="plan", all_agents=True)[-1]
    narrowed = serve(world.profile(all_name_pattern="spare-.*", **strict), op="plan", all_agents=True)[-1]
    run = rotate(world, "--all", all_name_pattern=r"x\$.*", **strict)

    result = only(run)
    assert (run.returncode, result["outcome"], result["failed_step"]) == (1, "failed", "preflight")
    assert result["error"] == (
        f"agent #{bad.id} has a name the profile's agent_name_pattern refuses: rename it in the "
        "panel, or widen or remove agent_name_pattern in the profile"
    )
    assert world.install_tokens(bad) == []
    assert plan["problems"] == [result["error"]]
    assert [a["name"] for a in narrowed["agents"]] == ["spare-1"]
