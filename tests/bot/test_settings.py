"""Settings: every bad or missing setting is named, and no message repeats a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import SettingsError
from bot.settings import load_settings

TOKEN = "xoxb-1234-abcdefghijklmnop-secretpart"
SECRET = "f00dfeedf00dfeedf00dfeed"


def env(config: Path, **overrides: str) -> dict[str, str]:
    values = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "ROTATOR_CONFIG": str(config),
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != ""}


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rotator.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
channels = "C0ROTATE"
approvers = ["S0ONCALL", "T0TEAM/U0BOB"]

[local_panels.lab]
profile = "/etc/myosicam/panel.toml"
"""


def refusal(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return str(caught.value)


def test_good_settings_have_documented_defaults(tmp_path: Path) -> None:
    settings = load_settings(env(config(tmp_path, GOOD)))
    policy = settings.policy
    assert (policy.approvals_required, policy.expiry_s, policy.channels) == (1, 1800, ("C0ROTATE",))
    assert settings.store_url == f"sqlite://{tmp_path.resolve() / 'rotator.db'}"
    assert settings.api_url == "https://slack.com/api/"
    assert settings.config.http_address == "127.0.0.1"
    assert settings.panel_names == ["lab"]
    assert TOKEN not in repr(settings.env) and SECRET not in repr(settings.env)


def test_ssh_panels_come_from_the_inventory(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        GOOD
        + """
[panels.prod-eu]
host = "prod-eu.example.net"
user = "rotator"
key_file = "/etc/rotator/id_ed25519"
known_hosts = "/etc/rotator/known_hosts"
""",
    )
    settings = load_settings(env(path))
    assert settings.panel_names == ["lab", "prod-eu"]
    assert settings.panel_host("prod-eu") == "prod-eu.example.net"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN: is required but not set"),
        ({"SLACK_SIGNING_SECRET": ""}, "SLACK_SIGNING_SECRET: is required but not set"),
        ({"ROTATOR_CONFIG": ""}, "ROTATOR_CONFIG: is required but not set"),
        (
            {"SLACK_BOT_TOKEN": "xoxp-user-token-not-a-bot-secretpart"},
            "SLACK_BOT_TOKEN: must be a bot token",
        ),
        (
            {"SLACK_APP_TOKEN": "xoxb-wrong-kind-secretpart"},
            "SLACK_APP_TOKEN: must be an app-level token",
        ),
        ({"SLACK_SIGNING_SECRET": "abc123"}, "SLACK_SIGNING_SECRET: is too short"),
        ({"SLACK_API_URL": "ftp://slack"}, "SLACK_API_URL: must be an http(s) URL"),
    ],
)
def test_a_bad_environment_names_the_setting_and_not_its_value(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    message = refusal(env(config(tmp_path, GOOD), **overrides))
    assert expected in message
    for value in overrides.values():
        if value:
            assert value not in message
    assert TOKEN not in message and SECRET not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[local_panels.lab]\nprofile = "/x"\n', "approvers: is required but not set"),
        ('channels = ["#rotations"]\n' + GOOD, "not valid TOML"),
        (GOOD.replace('"C0ROTATE"', '"#rotations"'), "channels: channel ids look like C0123ABCD"),
        (GOOD.replace('"S0ONCALL"', '"@secops"'), "approvers: entries are Slack user ids"),
        (
            "approvals_required = 0\n" + GOOD,
            "approvals_required: Input should be greater than or equal to 1",
        ),
        ("colour = 'blue'\n" + GOOD, "colour: Extra inputs are not permitted"),
        (
            'store = "postgres://u:pw-secret-1@h/db"\n' + GOOD,
            "store: must start with sqlite:// or mysql://",
        ),
        (
            'approvers = ["S0ONCALL"]\n',
            "no panels; add a [panels.<name>] or [local_panels.<name>] table",
        ),
        (GOOD + "[panels.prod]\nhost = 'h'\n", "panels.panels.prod.user: is required but not set"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_setting(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = refusal(env(config(tmp_path, text)))
    assert message.startswith("ROTATOR_CONFIG")
    assert expected in message
    assert "pw-secret-1" not in message


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    message = refusal(env(tmp_path / "nope.toml"))
    assert message == f"ROTATOR_CONFIG: file {tmp_path / 'nope.toml'} does not exist"


def test_sqlite_paths_are_absolute_with_three_slashes_and_beside_the_config_with_two(
    tmp_path: Path,
) -> None:
    absolute = load_settings(env(config(tmp_path, 'store = "sqlite:///var/lib/rot/r.db"\n' + GOOD)))
    beside = load_settings(env(config(tmp_path, 'store = "sqlite://state/r.db"\n' + GOOD)))
    assert (absolute.store_url, beside.store_url) == (
        "sqlite:///var/lib/rot/r.db",
        f"sqlite://{tmp_path.resolve() / 'state' / 'r.db'}",
    )


def test_the_store_password_is_a_secret_but_usable(tmp_path: Path) -> None:
    path = config(tmp_path, 'store = "mysql://rot:pw%2Fsecret-2@db:3306/rot"\n' + GOOD)
    path.chmod(0o640)  # a config holding a password that others can read is refused (test_secret_files.py)
    settings = load_settings(env(path))
    assert settings.store_url == "mysql://rot:pw%2Fsecret-2@db:3306/rot"
    assert settings.store_url_redacted == "mysql://rot:***@db:3306/rot"
    assert "pw%2Fsecret-2" not in repr(settings.config)
    assert "pw%2Fsecret-2" in settings.secrets()
