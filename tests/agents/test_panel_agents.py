"""The reference panel's agent side (bot/fakes/panel/php/panel/agents.php), spoken to over HTTP.

Registration consumes a single-use install token, stored only as its SHA-256
with an expiry; heartbeats are HMAC-SHA256 signed over a canonical string with
a timestamp and a nonce, and the panel refuses unknown agents, bad signatures,
old timestamps and replayed nonces. Its second agent side (nodes.php) is
another panel's dialect of the same contract.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.agent.ref_agent import signed_headers
from tests.agents.world import NODES, Agent, AgentWorld, post


@pytest.fixture
def agent(agent_world: AgentWorld) -> Agent:
    """An agent row the panel knows, not registered yet."""
    return agent_world.add_agent("agent-1", None)


def test_registration_consumes_the_install_token_once(agent_world: AgentWorld, agent: Agent) -> None:
    """The first registration gets a fresh 64-hex agent token; the same install token again is refused."""
    install_token = agent_world.issue_install_token(agent)

    first_status, first = agent_world.register(install_token)
    second = agent_world.register(install_token)
    state = agent_world.state(agent)

    assert (first_status, first["ok"], first["agent_id"]) == (200, True, agent.id)
    assert len(first["agent_token"]) == 64 and state.token == first["agent_token"]
    assert state.registered_at is not None and state.last_seen is not None
    assert second == (401, {"ok": False, "error": "install token unknown, used or expired"})
    assert agent_world.install_tokens(agent) == [{"id": 1, "used": True, "alive": True}]


def test_registration_refuses_an_expired_install_token(agent_world: AgentWorld, agent: Agent) -> None:
    """An install token past its expiry registers nothing."""
    expired = agent_world.issue_install_token(agent, ttl_s=-1)

    answer = agent_world.register(expired)

    assert answer == (401, {"ok": False, "error": "install token unknown, used or expired"})
    assert agent_world.state(agent).token is None


def test_a_signed_heartbeat_is_accepted_and_updates_last_seen(agent_world: AgentWorld, agent: Agent) -> None:
    """A heartbeat signed with the agent's token moves ``last_seen`` forward."""
    _, registered = agent_world.register(agent_world.issue_install_token(agent))
    before = agent_world.state(agent).last_seen

    answer = agent_world.heartbeat(agent.id, registered["agent_token"])

    assert answer == (200, {"ok": True})
    assert agent_world.state(agent).last_seen > before


def test_a_replayed_heartbeat_is_refused(agent_world: AgentWorld, agent: Agent) -> None:
    """The exact same signed request sent twice: the second is a replay of a used nonce."""
    _, registered = agent_world.register(agent_world.issue_install_token(agent))
    body = json.dumps({"agent_id": agent.id}).encode()
    headers = signed_headers(agent.id, registered["agent_token"], body)

    first = agent_world.heartbeat(agent.id, "", headers=headers, body=body)
    replay = agent_world.heartbeat(agent.id, "", headers=headers, body=body)

    assert first == (200, {"ok": True})
    assert replay == (401, {"ok": False, "error": "nonce already used"})


@pytest.mark.parametrize(
    ("case", "expected_error"),
    [
        ("unknown agent", "unknown agent"),
        ("another token", "bad signature"),
        ("body changed after signing", "bad signature"),
        ("timestamp 6 minutes old", "timestamp outside the allowed window"),
        ("timestamp 6 minutes ahead", "timestamp outside the allowed window"),
        ("no signature", "missing or malformed signature headers"),
    ],
)
def test_heartbeats_the_panel_refuses(
    agent_world: AgentWorld, agent: Agent, case: str, expected_error: str
) -> None:
    """Each of these is answered 401 with its reason, and ``last_seen`` does not move."""
    _, registered = agent_world.register(agent_world.issue_install_token(agent))
    token = registered["agent_token"]
    body = json.dumps({"agent_id": agent.id}).encode()
    sent_body = body
    agent_id = agent.id
    headers = signed_headers(agent.id, token, body)
    if case == "unknown agent":
        agent_id = agent.id + 1000
        headers = signed_headers(agent_id, token, body)
    elif case == "another token":
        headers = signed_headers(agent.id, "f" * 64, body)
    elif case == "body changed after signing":
        sent_body = json.dumps({"agent_id": agent.id, "extra": 1}).encode()
    elif case.startswith("timestamp"):
        shift = -360 if "old" in case else 360
        headers = signed_headers(agent.id, token, body, timestamp=int(time.time()) + shift)
    elif case == "no signature":
        headers = {k: v for k, v in headers.items() if k != "X-Signature"}
    before = agent_world.state(agent).last_seen

    answer = agent_world.heartbeat(agent_id, token, headers=headers, body=sent_body)

    assert answer == (401, {"ok": False, "error": expected_error})
    assert agent_world.state(agent).last_seen == before


def test_the_nodes_dialect_enrols_once_with_a_uuid_and_only_pings_move_pinged_at(agent_world: AgentWorld) -> None:
    """The second agent side (nodes.php on schema_nodes.sql): an enrolment code works once and
    gives a UUID secret; enrolment leaves pinged_at alone; a ping signed with the secret is
    accepted and moves it, one with another secret or the reference signature is refused."""
    world = agent_world
    world.use(NODES)
    node = world.add_agent("node-1", None)
    code = world.issue_install_token(node)
    enrol = f"{world.panel_url}/api/nodes/enrol"

    first_status, first = post(enrol, json.dumps({"code": code}).encode(), {})
    again = post(enrol, json.dumps({"code": code}).encode(), {})
    secret = str(first.get("secret"))
    world.registry.register(secret, "node secret")
    enrolled = world.state(node)
    wrong = world.heartbeat(node.id, str(uuid.uuid4()))
    reference = world.heartbeat(node.id, secret, headers=signed_headers(node.id, secret, b"{}"), body=b"{}")
    pinged = world.heartbeat(node.id, secret)

    assert (first_status, first["node"], str(uuid.UUID(secret))) == (200, node.id, secret)
    assert again == (403, {"error": "enrolment code not valid"})
    assert (enrolled.token, enrolled.registered_at is not None, enrolled.last_seen) == (secret, True, None)
    assert wrong == (403, {"error": "bad MAC"})
    assert reference == (403, {"error": "missing or malformed Authorization"})
    assert pinged == (204, {})
    assert world.state(node).last_seen is not None
