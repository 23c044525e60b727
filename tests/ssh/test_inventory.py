"""The panel inventory the bot's settings embed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.errors import SettingsError
from bot.inventory import Inventory, PanelEntry


def entry(**fields: object) -> dict[str, object]:
    return {"host": "panel.example.net", "user": "rotator", "key_file": "/etc/bot/id_ed25519",
            "known_hosts": "/etc/bot/known_hosts", **fields}  # fmt: skip


def test_panels_are_named_by_their_table_key_with_documented_defaults() -> None:
    """TOML-style settings: the table key names the panel; port 22, `engine serve`."""
    inventory = Inventory.model_validate({"panels": {"prod-eu": entry()}})

    panel = inventory.get("prod-eu")
    expected = ("prod-eu", 22, "engine serve", 10.0, 300.0, 15, 5)
    actual = (panel.name, panel.port, panel.remote_command, panel.connect_timeout_s,
              panel.event_timeout_s, panel.keepalive_s, panel.reconnect_attempts)  # fmt: skip
    assert expected == actual
    assert Path("/etc/bot/id_ed25519") == panel.key_file


def test_an_unknown_panel_names_the_known_ones() -> None:
    """A typo in /rotate-key prod-e: the error lists what exists."""
    inventory = Inventory.model_validate({"panels": {"prod-eu": entry(), "prod-us": entry()}})

    with pytest.raises(SettingsError) as caught:
        inventory.get("prod-e")

    assert "unknown panel 'prod-e'; known panels: prod-eu, prod-us" == str(caught.value)


def test_the_key_passphrase_never_shows() -> None:
    """The passphrase is a SecretStr: not in repr, str or a JSON dump."""
    panel = PanelEntry.model_validate(entry(name="p", key_passphrase="open-sesame-42"))

    shown = repr(panel) + str(panel) + panel.model_dump_json()
    assert "open-sesame-42" not in shown
    assert "open-sesame-42" == panel.key_passphrase.get_secret_value()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [{"port": 0}, {"host": "-oProxyCommand=x"}, {"host": "a b"}, {"name": "../x"}, {"extra": 1}],
)
def test_bad_entries_are_refused(bad: dict[str, object]) -> None:
    """Ports out of range, option-like or spaced hosts, odd names, unknown fields."""
    with pytest.raises(ValidationError):
        PanelEntry.model_validate(entry(name="p") | bad)


def test_backoff_doubles_up_to_its_cap() -> None:
    """Re-attach waits 1, 2, 4, 8 s ... never more than the cap."""
    panel = PanelEntry.model_validate(entry(name="p", reconnect_backoff_max_s=5))

    assert [1.0, 2.0, 4.0, 5.0, 5.0] == [panel.backoff_s(n) for n in range(1, 6)]
