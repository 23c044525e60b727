"""Any agent name the panel accepts works (issue 20.9): names travel as data, never as shell text.

The agents below are real logins behind real sshd, with the reference bootstrap; their names
hold quotes, spaces, parentheses, ``$(...)``, backticks, semicolons, unicode and a leading
dash. ``--all`` rotates them, and each bootstrap records the name exactly as it arrived.
"""

from __future__ import annotations

import json

from tests.agents.world import BOOTSTRAP_TEMPLATE, AgentWorld
from tests.engine.runner import run_engine

NAMES = ["o'hare edge (4)", '-x $(touch pwned) `touch pwned2`; echo "ünïcødé 名前" & #']


def test_rotate_all_with_names_full_of_shell_characters(agent_world: AgentWorld) -> None:
    """Every agent rotates, each proven, and each bootstrap got its name byte for byte as its
    argument and in ROTATOR_AGENT_NAME; nothing in a name ran on the agent server."""
    world = agent_world
    agents = [world.add_agent(name, world.start_host()) for name in NAMES]
    for agent in agents:
        world.install(agent)
    profile = world.profile(bootstrap_command=BOOTSTRAP_TEMPLATE + " --name={agent_name}")

    plan = run_engine(profile, "plan", "--all", "--json")
    run = run_engine(profile, "rotate-agent", "--all", "--yes", "--json")

    assert plan.returncode == 0 and plan.closing["problems"] == []
    assert run.returncode == 0, run.stdout[-2000:]
    results = {r["name"]: (r["outcome"], r["new_token"], r["old_token"]) for r in run.closing["agents"]}
    assert results == {name: ("rotated", "proven by re-registration", "refused") for name in NAMES}
    assert run.closing["message"] == (
        "2 of 2 agents rotated: new token proven by re-registration, old token refused"
    )
    for agent in agents:
        assert agent.host is not None
        received = json.loads((agent.host.state_dir / "bootstrap-name.json").read_text())
        assert received == {"argument": agent.name, "environment": agent.name}
        assert not list(agent.host.home.rglob("pwned*")), "nothing in the name ran"
    assert world.leaks(run.stdout, run.stderr, world.everything_written()) == []
