"""``rotate-incident`` with a real agent: the DB password, then the key, then the agent's token.

The agents part reaches the agent's server with the SSH credential the panel keeps
encrypted, so it proves the key part left every stored credential readable under the
new key, and the DB password part left the panel's login working.
"""

from __future__ import annotations

from bot.fakes.panel.ctl import parse_env
from tests.agents.world import Agent, AgentWorld
from tests.engine.runner import run_engine


def test_an_incident_rotates_the_db_password_the_key_and_the_agent_token_in_order(
    agent_world: AgentWorld, installed_agent: Agent
) -> None:
    """Each part verified before the next: the panel's login takes a new password, every stored
    value opens under the new key, the agent re-registers with a new token; nothing leaks."""
    world, agent = agent_world, installed_agent
    panel = world.panel
    before, old_key = world.state(agent), panel.env_key()
    old_password = parse_env(panel.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]

    run = run_engine(world.profile(), "rotate-incident", "--yes", "--json", "--reason", "INC-9 .env leaked")
    new_password = parse_env(panel.env_path.read_text(encoding="utf-8"))["DB_PASSWORD"]
    world.registry.register(new_password, "DB_PASSWORD (rotated)")
    world.registry.register_key(panel.env_key(), "PANEL_ENCRYPTION_KEY (rotated)")
    after = world.state(agent)

    assert (0, "result", "DONE") == (run.returncode, run.closing["type"], run.closing["state"]), run.stderr
    assert [("db_password", "done"), ("key", "done"), ("agents", "done")] == [
        (p["part"], p["state"]) for p in run.closing["parts"]
    ]
    finished = [e["part"] for e in run.events if e["type"] == "step" and e["name"] == "part" and e["state"] == "ok"]
    assert ["db_password", "key", "agents"] == finished
    assert new_password != old_password and panel.env_key() != old_key
    assert after.token != before.token
    # every fixture value opens under the new key (PHP), and so do the agent servers' credentials
    assert [] == [p for p in panel.php_check_all() if "row the fixtures did not write" not in p]
    check = run_engine(world.profile(), "recover", "--json")
    assert (0, "NOTHING_TO_RECOVER") == (check.returncode, check.closing["state"])
    assert [] == run.leaks()
