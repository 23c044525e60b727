"""The Slack app manifests ask for exactly what the code uses.

The scopes are derived from the code: every Slack Web API method the bot and the handlers
call (found in their source), mapped to the bot scopes Slack documents for it, plus
``commands`` for the slash commands they register. Both manifests must request exactly
that set, and declare exactly those commands.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient

from bot.wsgi import EVENTS_PATH

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = {
    "socket-mode": REPO / "deploy" / "slack-manifest.socket-mode.json",
    "http": REPO / "deploy" / "slack-manifest.http.json",
}
# Slack's documented bot scopes per method ("any of" lists name every channel kind the
# bot may be configured with: a rotations channel can be public or private).
SCOPES: dict[str, set[str]] = {
    "auth.test": set(),
    "views.open": set(),
    "views.publish": set(),
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "chat.delete": {"chat:write"},  # the bot's own messages (the enrollment DM)
    "usergroups.users.list": {"usergroups:read"},
    "conversations.info": {"channels:read", "groups:read"},
    "conversations.members": {"channels:read", "groups:read"},
    "conversations.history": {"channels:history", "groups:history"},
    "conversations.replies": {"channels:history", "groups:history"},
    # files_upload_v2: files.getUploadURLExternal + the upload + files.completeUploadExternal
    "files.upload.v2": {"files:write"},
    "files.delete": {"files:write"},  # the bot's own files (the enrollment QR code)
}
WEB_API_METHODS = {
    name for name in dir(WebClient) if not name.startswith("_") and "_" in name and callable(getattr(WebClient, name))
} - {"api_call"}


def _sources() -> list[Path]:
    files = [*(REPO / "bot").rglob("*.py"), *(REPO / "handlers").rglob("*.py")]
    return [f for f in files if "fakes" not in f.parts]


def called_web_api_methods() -> set[str]:
    """``chat.postMessage`` for every ``<anything>.chat_postMessage(...)`` in the code."""
    found = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in WEB_API_METHODS:
                    found.add(node.func.attr.replace("_", "."))
    return found


def _registered(method: str) -> set[str]:
    """Every first argument of ``app.<method>("x")`` in the handlers."""
    found = set()
    for path in (REPO / "handlers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(str(node.args[0].value))
    return found


def registered_commands() -> set[str]:
    """Every ``app.command("/x")`` in the handlers."""
    return _registered("command")


def registered_events() -> set[str]:
    """Every ``app.event("x")`` in the handlers."""
    return _registered("event")


def needed_scopes() -> set[str]:
    methods = called_web_api_methods()
    unknown = methods - set(SCOPES)
    assert not unknown, f"the code calls {sorted(unknown)}: add their scopes from Slack's docs to SCOPES"
    scopes = set().union(*(SCOPES[m] for m in methods))
    return scopes | ({"commands"} if registered_commands() else set())


def load(kind: str) -> dict[str, Any]:
    return dict(json.loads(MANIFESTS[kind].read_text()))


def test_the_code_calls_what_the_scope_table_knows() -> None:
    """The derivation itself finds the calls (a guard against a scan that finds nothing)."""
    assert {"chat.postMessage", "usergroups.users.list", "views.open", "views.publish"} <= called_web_api_methods()
    assert registered_events() == {"app_home_opened"}
    assert registered_commands() == {
        "/rotate-key", "/rotate-agent", "/rotate-incident", "/rotate-db-password", "/rotate-cancel",
        "/rotate-status", "/rotate-help", "/rotate-enroll", "/rotate-offboard",
    }


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_each_manifest_requests_exactly_the_scopes_the_code_uses(kind: str) -> None:
    bot_scopes = load(kind)["oauth_config"]["scopes"]["bot"]
    assert len(bot_scopes) == len(set(bot_scopes))
    assert sorted(bot_scopes) == sorted(needed_scopes())


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_each_manifest_declares_exactly_the_registered_commands(kind: str) -> None:
    commands = [c["command"] for c in load(kind)["features"]["slash_commands"]]
    assert sorted(commands) == sorted(registered_commands())
    assert load(kind)["settings"]["interactivity"]["is_enabled"] is True  # buttons and the deny modal


def test_the_socket_mode_manifest_needs_no_url() -> None:
    manifest = load("socket-mode")
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert "request_url" not in manifest["settings"]["interactivity"]
    assert [c for c in manifest["features"]["slash_commands"] if "url" in c] == []


def test_the_http_manifest_sends_every_command_and_interaction_to_the_events_path() -> None:
    manifest = load("http")
    assert manifest["settings"]["socket_mode_enabled"] is False
    urls = {c["command"]: c.get("url") for c in manifest["features"]["slash_commands"]}
    urls["interactivity"] = manifest["settings"]["interactivity"].get("request_url")
    expected = f"https://rotator.example.com{EVENTS_PATH}"
    assert urls == dict.fromkeys([*registered_commands(), "interactivity"], expected)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_each_manifest_subscribes_to_exactly_the_handled_events_and_shows_the_home_tab(kind: str) -> None:
    """The control room needs the Home tab and ``app_home_opened``; the requester notices
    arrive as direct messages, so the Messages tab stays (read-only)."""
    manifest = load(kind)
    assert sorted(manifest["settings"]["event_subscriptions"]["bot_events"]) == sorted(registered_events())
    app_home = manifest["features"]["app_home"]
    assert (True, True) == (app_home["home_tab_enabled"], app_home["messages_tab_enabled"])
    url = manifest["settings"]["event_subscriptions"].get("request_url")
    assert url == (None if kind == "socket-mode" else f"https://rotator.example.com{EVENTS_PATH}")
