"""The agent rotation's edges without a network: quoting, credentials, redaction, settings."""

from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

import pytest

from engine.agents.remote import last_line, render_bootstrap, route_from_panel
from engine.agents.rows import ServerRow
from engine.agents.run import AgentSteps, Run
from engine.errors import AgentError, ProfileError
from engine.events import Emitter
from engine.profile import profile_from_dict

SERVER = ServerRow(id=7, name="srv-7", host="10.0.0.7", port=2222, user="oscam", credential=None)


def test_bootstrap_parameters_are_shell_quoted() -> None:
    """A hostile agent name or URL stays one argument: the remote shell never interprets it."""
    command = render_bootstrap(
        "agent-bootstrap --panel {panel_url} --id {agent_id} --name {agent_name}",
        panel_url="https://panel.example/x?a=1&b=2",
        agent_id=7,
        agent_name="x'; rm -rf ~; echo '",
    )

    assert shlex.split(command) == [
        "agent-bootstrap", "--panel", "https://panel.example/x?a=1&b=2", "--id", "7",
        "--name", "x'; rm -rf ~; echo '",
    ]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", ("key", None)),
        (json.dumps({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nB\n", "passphrase": "pp"}), ("key", "pp")),
        (json.dumps({"password": "s3cret-pw"}), (None, "s3cret-pw")),
        ("plain-password", (None, "plain-password")),
    ],
)
def test_the_panel_credential_is_a_key_or_a_password(stored: str, expected: tuple[str | None, str | None]) -> None:
    """saved_servers.ssh_credential_encrypted decrypts to a private key, a JSON object or a password."""
    route = route_from_panel(SERVER, stored.encode())

    assert ("key" if route.key_text else None, route.password) == expected
    assert (route.host, route.port, route.label) == ("10.0.0.7", 2222, "srv-7 (oscam@10.0.0.7:2222)")
    assert "s3cret" not in repr(route) and "PRIVATE" not in repr(route)


def test_an_unreadable_credential_is_named_without_its_content() -> None:
    with pytest.raises(AgentError) as caught:
        route_from_panel(SERVER, b"{not json")

    assert caught.value.message == "the SSH credential of server srv-7 is not one this engine reads"


def test_bootstrap_output_is_reduced_to_its_last_line_without_tokens() -> None:
    """Whatever the bootstrap echoes, the install token and anything key-like never leave."""
    token = "tok_" + "Ab3" * 12
    output = f"installing\nread {token} from stdin\nkey {'ab12' * 16}\ndone: registered {token}\n"

    assert last_line(output, [token]) == "done: registered [token]"
    assert last_line("x\nkey " + "ab12" * 16 + "\n", []) == "key [redacted-hex]"


@pytest.mark.parametrize(
    ("agents", "problem"),
    [
        ({"bootstrap_command": "boot {panel_url} {token}"}, "unknown placeholder 'token'"),
        ({"panel_url": "ftp://panel"}, "must be an http(s) URL"),
        ({"install_token_provider": "command"}, "needs install_token_command"),
        ({"inventory": {"a": {"port": 22}}}, "agents.inventory.a.host: is required"),
    ],
)
def test_bad_agent_settings_are_refused_when_the_profile_loads(agents: dict[str, object], problem: str) -> None:
    with pytest.raises(ProfileError) as caught:
        profile_from_dict({"panel_root": "/srv/panel", "agents": agents})

    assert problem in caught.value.message


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ('boot --name "{agent_name}"', "puts {agent_name} inside quotes"),
        ("boot --name '{agent_name}'", "puts {agent_name} inside quotes"),
        ("boot --url=\"$X{panel_url}\"", "puts {panel_url} inside quotes"),
        ("boot \\{agent_name}", "puts {agent_name} inside quotes"),
        ("boot {agent_name!r}", "without a conversion or format spec"),
        ("boot {agent_id:>5}", "without a conversion or format spec"),
    ],
)
def test_a_template_that_quotes_a_placeholder_is_refused(template: str, problem: str) -> None:
    """9.11: inside the template's own quotes the shell-quoting of a value is undone, and an agent
    name from the database would run commands on the agent server."""
    with pytest.raises(ProfileError) as caught:
        profile_from_dict({"panel_root": "/srv/panel", "agents": {"bootstrap_command": template}})

    assert "agents.bootstrap_command" in caught.value.message and problem in caught.value.message


@pytest.mark.parametrize(
    "template",
    ['boot --name={agent_name} "--x" {agent_id}', "echo 'a b' && boot {panel_url} --name {agent_name}"],
)
def test_a_template_with_bare_placeholders_is_accepted(template: str) -> None:
    profile = profile_from_dict({"panel_root": "/srv/panel", "agents": {"bootstrap_command": template}})

    assert profile.agents.bootstrap_command == template


def test_a_uuid_token_in_the_bootstrap_output_is_hidden_even_if_unknown() -> None:
    """11.4: a token the engine was not told about, shaped like a UUID, still never leaves."""
    line = "agent 7 registered, token 0f8e3c1a-52b4-4d0e-9a61-3be2f1c9d4a7"

    assert last_line(f"starting\n{line}\n", []) == "agent 7 registered, token [token]"


def test_a_token_the_run_knows_is_hidden_from_every_event_whatever_its_format() -> None:
    """11.4: a lower-case base32 token looks like no key to the generic redaction; once the run
    knows it (old, install or new token), no agent event carries it, in its detail or its data."""
    events: list[dict[str, object]] = []
    run = Run(SimpleNamespace(emitter=Emitter("r-1", [events.append])), None, None, None, None, None, None)  # type: ignore[arg-type]
    token = "mfrggzdfmztwq2lknnwg23tpobyxe43u"
    steps = AgentSteps(run, "agent-1", 1)

    steps.emit("bootstrap", "ok", f"agent 1 registered, token {token}", said=[token])
    run.hide(token)
    steps.emit("bootstrap", "ok", f"agent 1 registered, token {token}", said=[token])

    assert [(e["detail"], e["said"]) for e in events] == [
        (f"agent 1 registered, token {token}", [token]),
        ("agent 1 registered, token [token]", ["[token]"]),
    ]
