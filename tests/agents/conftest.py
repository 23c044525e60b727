"""Fixtures for agent token rotation: a running reference panel with agent servers.

``agent_world`` is an ``AgentWorld`` (tests/agents/world.py): the PHP panel
under ``php -S``, no agent yet; tests add agent servers (a login and an sshd
each) and agents, and ``install`` them. Everything is stopped and removed at
teardown: agent processes by pid, sshd, the logins, the panel and its database.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agents.world import Agent, AgentWorld, remove_stale_users
from tests.support.panel import PanelSandbox
from tests.support.secrets_scan import SecretRegistry
from tests.support.sshd import SSHD


@pytest.fixture(scope="session", autouse=True)
def _stale_agent_logins() -> None:
    if os.geteuid() == 0:
        remove_stale_users()


@pytest.fixture
def agent_world(
    panel_factory: Callable[..., PanelSandbox], tmp_path: Path, secret_registry: SecretRegistry
) -> Iterator[AgentWorld]:
    if os.geteuid() != 0:
        pytest.skip("agent servers are local logins with their own sshd: needs root")
    assert Path(SSHD).exists(), "openssh-server is not installed (./test.sh installs it)"
    panel = panel_factory(rows=2, server=True)
    world = AgentWorld(panel, tmp_path / "agents", secret_registry)
    world.root.mkdir()
    world.known_hosts.write_text("")
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def installed_agent(agent_world: AgentWorld) -> Agent:
    """One agent on its own server, installed, registered and heartbeating."""
    agent = agent_world.add_agent("agent-1", agent_world.start_host())
    agent_world.install(agent)
    return agent
