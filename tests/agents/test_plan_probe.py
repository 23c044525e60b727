"""Read-only answers about agents: ``plan`` (what the request card shows), a dry run, ``probe``.

``plan`` and the dry run are asked through ``serve``, as the bot asks them.
"""

from __future__ import annotations

from typing import Any

from tests.agents.world import Agent, AgentWorld, serve
from tests.engine.runner import run_engine
from tests.support.panel import free_port


def unchanged(world: AgentWorld, agents: list[Agent]) -> list[Any]:
    """What a read-only operation must leave as it was."""
    return [(world.state(a).token, world.install_tokens(a)) for a in agents]


def test_plan_lists_the_agents_their_servers_and_last_seen(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """The plan for --all names every agent with its server, last-seen time, token fingerprint and
    how its server is reached; it changes nothing."""
    world, agent = agent_world, installed_agent
    assert agent.host is not None
    dead_port = free_port()
    never = world.add_agent("agent-2", None, port=dead_port)
    before = unchanged(world, [agent, never])

    events = serve(world.profile(), op="plan", all_agents=True)
    state = world.state(agent)

    closing = events[-1]
    assert (closing["type"], closing["op"], closing["total"], closing["problems"]) == ("result", "plan", 2, [])
    assert closing["agents"] == [
        {
            "id": agent.id,
            "name": "agent-1",
            "server": f"srv-agent-1 ({agent.host.user}@127.0.0.1:{agent.host.port})",
            "server_id": agent.server_id,
            "last_seen": closing["agents"][0]["last_seen"],
            "token_fingerprint": state.fingerprint,
            "ssh": "panel credential",
            "unfinished": None,
        },
        {
            "id": never.id,
            "name": "agent-2",
            "server": f"srv-agent-2 (nobody@127.0.0.1:{dead_port})",
            "server_id": never.server_id,
            "last_seen": None,
            "token_fingerprint": None,
            "ssh": "panel credential",
            "unfinished": None,
        },
    ]
    assert closing["agents"][0]["last_seen"][:10] == state.last_seen.date().isoformat()
    assert (closing["install_token_provider"], closing["ssh_source"], closing["unfinished"]) == ("sql", "panel", [])
    assert unchanged(world, [agent, never]) == before
    assert not (world.panel.root / "journal" / "agents").exists()


def test_plan_for_an_unknown_agent_fails_with_its_name(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """A request naming an agent the panel does not have cannot be approved: the plan fails."""
    events = serve(agent_world.profile(), op="plan", agents=["agent-1", "ghost"])

    assert {k: events[-1][k] for k in ("type", "code", "message")} == {
        "type": "error", "code": "agent_failed", "message": "no agent named ghost on this panel"
    }


def test_plan_names_an_agent_whose_server_cannot_be_reached(agent_world: AgentWorld) -> None:
    """An agent without a server, and one whose server has no credential, are problems on the plan."""
    world = agent_world
    world.sql("INSERT INTO agents (name) VALUES ('loose')")
    keyless = world.add_agent("keyless", None)
    world.sql("UPDATE saved_servers SET ssh_credential_encrypted = NULL WHERE id = %s", (keyless.server_id,))

    closing = serve(world.profile(), op="plan", all_agents=True)[-1]

    assert [(a["name"], a["ssh"]) for a in closing["agents"]] == [("loose", "no route"), ("keyless", "no route")]
    assert closing["problems"] == [
        "loose has no server in the panel",
        "server srv-keyless has no SSH credential in the panel",
    ]


def test_a_dry_run_checks_every_agent_and_issues_nothing(agent_world: AgentWorld, installed_agent: Agent) -> None:
    """rotate-agent with dry_run: preflight only (SSH with the pinned key), per agent; no token."""
    world, agent = agent_world, installed_agent
    down = world.add_agent("agent-2", None, port=free_port())
    before = unchanged(world, [agent, down])

    events = serve(world.profile(), op="rotate-agent", all_agents=True, dry_run=True)

    closing = events[-1]
    assert (closing["type"], closing["ok"], closing["dry_run"]) == ("result", False, True)
    assert [(a["name"], a["outcome"], a["install_token"]) for a in closing["agents"]] == [
        ("agent-1", "ready", "not issued"),
        ("agent-2", "failed", "not issued"),
    ]
    assert [e["name"] for e in events if e["type"] == "step"] == ["preflight"] * 4
    assert closing["message"].startswith("1 of 2 agents ready; agent-2 failed at preflight: ")
    assert unchanged(world, [agent, down]) == before


def test_probe_says_the_profile_matches_the_reference_panel(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """probe checks the [agents] settings against the live schema and counts agents and tokens."""
    world = agent_world
    world.add_agent("agent-2", None)

    run = run_engine(world.profile(), "probe", "--json")

    assert run.closing["agents"] == {
        "checked": True,
        "configured": True,  # the profile has an [agents] section: the doctor checks agents
        "ok": True,
        "problems": [],
        "install_token_provider": "sql",
        "ssh_source": "panel",
        "known_hosts": str(world.known_hosts),
        "unfinished": 0,
        "agents": 2,
        "with_token": 1,
        "without_server": 0,
        "usable_install_tokens": 0,
    }


def test_probe_names_each_setting_that_does_not_match(agent_world: AgentWorld) -> None:
    """A token column, install token table and known_hosts file the panel does not have are named."""
    world = agent_world
    missing = world.root / "nowhere"

    run = run_engine(
        world.profile(token_column="token", install_token_table="install_tokens", known_hosts=str(missing)),
        "probe",
        "--json",
    )

    report = run.closing["agents"]
    assert (report["ok"], report["problems"]) == (
        False,
        [
            "agents table agents has no column token",
            "install token table install_tokens does not exist",
            f"known_hosts {missing} is not readable: agent server host keys are pinned there",
        ],
    )
