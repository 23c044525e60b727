"""The agent rotation's edges without a network: quoting, credentials, redaction, settings."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.errors import AgentError, ProfileError
from engine.events import Emitter
from engine.ops.agents.batch import AgentSteps, Run
from engine.ops.agents.remote import last_line, render_bootstrap, route_from_panel
from engine.ops.agents.rows import ServerRow
from engine.profile import profile_from_dict

SERVER = ServerRow(id=7, name="srv-7", host="10.0.0.7", port=2222, user="oscam", credential=None)


HOSTILE_NAMES = [
    "o'hare edge (4)", 'say "hi" now', "$(touch /tmp/pwned-by-name)", "`id`", "x; rm -rf ~; echo '",
    "ünïcødé 名前 ✓", "-rf", "--name", "a\nb", "back\\slash\\", "!bang !!", "*glob?[a]", "~tilde",
    "$HOME ${PATH}", "%s {} {agent_id}", " leading and trailing ", "&& | > < #",
]
ECHO = [
    sys.executable, "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['ROTATOR_AGENT_NAME']]))"
]
SHELLS = [s for s in ("/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/zsh") if os.path.exists(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_bootstrap_parameters_reach_the_bootstrap_as_data(shell: str, tmp_path: Path) -> None:
    """Any name the panel accepts (quotes, spaces, parentheses, $(...), backticks, semicolons,
    unicode, a leading dash, a newline) reaches the bootstrap byte for byte, as its argument and
    in ROTATOR_AGENT_NAME, through a real shell, as sshd runs the command (`$SHELL -c`); nothing
    in it runs."""
    args = " --panel {panel_url} --id={agent_id} --name={agent_name} {agent_name}"
    template = " ".join(shlex.quote(a) for a in ECHO) + args
    for name in HOSTILE_NAMES:
        command = render_bootstrap(template, panel_url="https://panel.example/x?a=1&b=2", agent_id=7, agent_name=name)
        done = subprocess.run([shell, "-c", command], capture_output=True, text=True, cwd=tmp_path, check=True,
                              env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
        assert json.loads(done.stdout) == [
            ["--panel", "https://panel.example/x?a=1&b=2", "--id=7", f"--name={name}", name], name
        ], name
    assert not os.path.exists("/tmp/pwned-by-name") and list(tmp_path.iterdir()) == []


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
        profile_from_dict({"panel_root": "/srv/panel", "escrow": "none", "agents": agents})

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
        profile_from_dict({"panel_root": "/srv/panel", "escrow": "none", "agents": {"bootstrap_command": template}})

    assert "agents.bootstrap_command" in caught.value.message and problem in caught.value.message


@pytest.mark.parametrize(
    "template",
    ['boot --name={agent_name} "--x" {agent_id}', "echo 'a b' && boot {panel_url} --name {agent_name}"],
)
def test_a_template_with_bare_placeholders_is_accepted(template: str) -> None:
    profile = profile_from_dict(
        {"panel_root": "/srv/panel", "escrow": "none", "agents": {"bootstrap_command": template}}
    )

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


def test_the_counts_say_what_is_proven_never_0_rotated_when_tokens_changed() -> None:
    """Four agents re-registered with new tokens (proven); the old-token check ran for one and
    could not run for three (the heartbeat route answers 404): the message counts what is
    proven, per agent and in total."""
    from engine.ops.agents.outcome import AgentOutcome, run_result

    done = AgentOutcome("a-1", id=1, ok=True, outcome="rotated", state="DONE", new_fingerprint="n1")
    unverified = [
        AgentOutcome(f"a-{i}", id=i, outcome="unverified", state="REREGISTERED", new_fingerprint=f"n{i}",
                     failed_step="old_revoked", error="could not verify: 404")
        for i in (2, 3, 4)
    ]
    data = run_result("r-1", "prod", [done, *unverified], dry_run=False, duration_ms=1)

    assert data["message"].startswith(
        "4 of 4 agents have a new token proven by re-registration; old token: refused for 1, could not verify for 3; "
    )
    assert (data["new_token_proven"], data["old_token_refused"], data["old_token_unverified"]) == (4, 1, 3)
    assert [(a["new_token"], a["old_token"]) for a in data["agents"]] == [
        ("proven by re-registration", "refused"), *[("proven by re-registration", "could not verify")] * 3
    ]
    assert "0 of 4" not in data["message"] and "0 rotated" not in data["message"]
