"""The panel profile: documented defaults, and errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ProfileError
from engine.profile import DEFAULT_COLUMNS, load_profile, profile_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_operator_documentation():
    profile = profile_from_dict({"panel_root": "/var/www/myosicam"})
    assert profile.env_path == Path("/var/www/myosicam/config/.env")
    assert [c.label for c in profile.columns] == list(DEFAULT_COLUMNS)
    assert {c.primary_key for c in profile.columns} == {"id"}
    assert profile.restart_command == ["systemctl", "restart", "php8.3-fpm"]
    assert (profile.env_owner, profile.env_group, profile.env_mode) == ("www-data", "www-data", "0640")
    assert profile.ciphertext == "auto"
    assert profile.database.env_keys["name"] == "DB_DATABASE"


def test_the_shipped_example_profile_is_valid():
    profile = load_profile(REPO / "deploy" / "panel-profile.example.toml")
    assert profile.name == "prod-eu"


def test_uncommenting_the_example_columns_block_sets_the_columns(tmp_path):
    """An operator who uncomments ``columns = [...]`` gets it at the top level, not under a table."""
    lines = (REPO / "deploy" / "panel-profile.example.toml").read_text().splitlines()
    start = lines.index("# columns = [")
    end = lines.index("# ]", start)
    lines[start : end + 1] = [line[2:] for line in lines[start : end + 1]]
    edited = tmp_path / "panel.toml"
    edited.write_text("\n".join(lines) + "\n")
    profile = load_profile(edited)
    assert [c.label for c in profile.columns][-1] == "custom_secrets.value"
    assert profile.columns[-1].primary_key == "secret_id"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "panel_root"),
        ({"panel_root": "/x", "ciphertext": "rot13"}, "ciphertext"),
        ({"panel_root": "/x", "env_mode": "0666"}, "env_mode"),
        ({"panel_root": "/x", "columns": ["no_dot"]}, "columns"),
        ({"panel_root": "/x", "columns": ["t.c; DROP TABLE x"]}, "columns"),
        ({"panel_root": "/x", "restart_command": "systemctl restart php"}, "restart_command"),
        ({"panel_root": "/x", "database": {"port": 70000}}, "database.port"),
        ({"panel_root": "/x", "unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_a_bad_setting_is_named(settings, named):
    with pytest.raises(ProfileError) as caught:
        profile_from_dict(settings, source="panel.toml")
    assert named in str(caught.value)
    assert str(caught.value).startswith("panel.toml has bad settings")


def test_a_password_in_the_profile_is_never_echoed():
    with pytest.raises(ProfileError) as caught:
        profile_from_dict({"panel_root": "/x", "database": {"password": "hunter2-secret", "port": "x"}})
    assert "hunter2-secret" not in str(caught.value)


def test_invalid_toml_is_reported_with_the_file_name(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("panel_root = \n")
    with pytest.raises(ProfileError, match=r"broken\.toml is not valid TOML"):
        load_profile(path)
