"""The panel profile: documented defaults, and errors that name the bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ProfileError
from engine.profile import (
    DEFAULT_COLUMNS,
    AgentSettings,
    ColumnSpec,
    engine_command,
    load_profile,
    profile_from_dict,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_operator_documentation():
    profile = profile_from_dict({"panel_root": "/var/www/myosicam", "escrow": "none"})
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
        ({"panel_root": "/x", "escrow": "none", "ciphertext": "rot13"}, "ciphertext"),
        ({"panel_root": "/x", "escrow": "none", "env_mode": "0666"}, "env_mode"),
        ({"panel_root": "/x", "escrow": "none", "columns": ["no_dot"]}, "columns"),
        ({"panel_root": "/x", "escrow": "none", "columns": ["t.c; DROP TABLE x"]}, "columns"),
        ({"panel_root": "/x", "escrow": "none", "restart_command": "systemctl restart php"}, "restart_command"),
        ({"panel_root": "/x", "escrow": "none", "database": {"port": 70000}}, "database.port"),
        ({"panel_root": "/x", "escrow": "none", "unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_a_bad_setting_is_named(settings, named):
    with pytest.raises(ProfileError) as caught:
        profile_from_dict(settings, source="panel.toml")
    assert named in str(caught.value)
    assert str(caught.value).startswith("panel.toml has bad settings")


def test_a_password_in_the_profile_is_never_echoed():
    with pytest.raises(ProfileError) as caught:
        profile_from_dict(
            {"panel_root": "/x", "escrow": "none", "database": {"password": "hunter2-secret", "port": "x"}}
        )
    assert "hunter2-secret" not in str(caught.value)


def test_invalid_toml_is_reported_with_the_file_name(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("panel_root = \n")
    with pytest.raises(ProfileError, match=r"broken\.toml is not valid TOML"):
        load_profile(path)


def problems_of(settings: dict[str, object]) -> list[str]:
    """The problems a refused profile lists, in order."""
    with pytest.raises(ProfileError) as caught:
        profile_from_dict({"panel_root": "/x", "escrow": "none", **settings}, source="panel.toml")
    prefix = "panel.toml has bad settings: "
    assert str(caught.value).startswith(prefix)
    return str(caught.value)[len(prefix):].split("; ")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"panel_root": None}, "panel_root: must be a path (a string), not nothing"),
        ({"nmae": "p"}, "nmae: is not a known setting (did you mean name?)"),
        ({"database": {"prot": 3306}}, "database.prot: is not a known setting (did you mean port?)"),
        ({"database": {"port": 0}}, "database.port: must be from 1 to 65535"),
        ({"database": {"port": "3306"}}, "database.port: must be a whole number, not a string"),
        ({"database": {"port": True}}, "database.port: must be a whole number, not true/false"),
        ({"database": {"connect_timeout_s": 0}}, "database.connect_timeout_s: must be greater than 0"),
        ({"database": {"env_keys": {"host": 1}}}, "database.env_keys.host: must be a string, not a whole number"),
        ({"database": "db.example"}, "database: must be a table of settings, not a string"),
        ({"batch_size": 0}, "batch_size: must be from 1 to 100000"),
        ({"batch_size": 5.0}, "batch_size: must be a whole number, not a number"),
        ({"restart_split": "yes"}, "restart_split: must be true/false, not a string"),
        ({"verify_command": "curl x"}, "verify_command: must be a list of strings, not a string"),
        ({"verify_command": ["curl", 1]}, "verify_command.1: must be a string, not a whole number"),
        ({"restart_stop_command": [], "restart_start_command": ["x"]},
         "restart_stop_command: must list at least 1 item"),
        ({"columns": [{"table": "t", "column": "c", "pk": "id"}]}, "columns.0.pk: is not a known setting"),
        ({"columns": ["t.c", "t.c-1"]},
         "columns.1.column: must be an SQL name: a letter or _, then letters, digits or _ (64 at most)"),
        ({"columns": ["t.c", "u.v", "t.c"]}, "columns: lists the same table.column twice (t.c)"),
        ({"restart_stop_command": ["systemctl", "stop", "php"]},
         "restart_start_command: restart_stop_command and restart_start_command go together: give both or neither"),
        ({"agents": {"ssh_source": "ldap"}}, 'agents.ssh_source: must be "panel" or "inventory"'),
        ({"agents": {"agent_name_pattern": "(["}}, "agents.agent_name_pattern: is not a valid regular expression"),
        ({"agents": {"all_filter_value": 1.5, "all_filter_column": "c"}},
         "agents.all_filter_value: must be a string, a whole number or true/false, not a number"),
        ({"agents": {"all_filter_column": "enabled"}},
         "agents.all_filter_value: all_filter_column and all_filter_value go together: give both or neither"),
        ({"agents": {"old_token_check": "command"}},
         'agents.old_token_check_command: old_token_check = "command" needs old_token_check_command'),
        ({"agents": {"inventory": {"web1": {"host": "10.0.0.1", "port": 70000}}}},
         "agents.inventory.web1.port: must be from 1 to 65535"),
        ({"agents": {"inventory": {"web1": {"host": "10.0.0.1", "port": True}}}},
         "agents.inventory.web1.port: must be a whole number, not true/false"),
        ({"agents": {"inventory": {"web1": {"hots": "10.0.0.1"}}}},
         "agents.inventory.web1.hots: is not a known setting (did you mean host?)"),
    ],
)
def test_every_kind_of_refusal_names_its_field_and_what_is_expected(settings, expected):
    """Each problem is ``dotted.path: what is wrong``, so a person finds the line to fix."""
    assert any(problem.startswith(expected) for problem in problems_of(settings)), problems_of(settings)


def test_every_problem_is_reported_not_only_the_first():
    assert problems_of({
        "database": {"port": 0, "password": 7},
        "batch_size": "many",
        "flavour": "blue",
        "agents": {"inventory": {"web1": {"port": 22}}},
    }) == [
        "flavour: is not a known setting",
        "database.port: must be from 1 to 65535",
        "database.password: must be a string, not a whole number",
        "batch_size: must be a whole number, not a string",
        "agents.inventory.web1.host: is required",
    ]


def test_toml_numbers_are_taken_where_they_fit():
    """A whole number is fine where a number is expected; strings become paths."""
    agents = {"all_filter_column": "enabled", "all_filter_value": True,
              "inventory": {"web1": {"host": "h", "key_file": "/k"}}}
    profile = profile_from_dict({"panel_root": "/x", "escrow": "none", "restart_timeout_s": 30, "agents": agents})
    assert (profile.restart_timeout_s, type(profile.restart_timeout_s)) == (30.0, float)
    assert profile.agents.all_filter_value is True
    assert profile.agents.inventory["web1"].key_file == Path("/k")
    assert (profile.agents.inventory["web1"].port, profile.agents.inventory["web1"].user) == (22, None)


def test_a_profile_is_frozen_and_replace_makes_a_checked_copy(tmp_path):
    path = tmp_path / "panel.toml"
    path.write_text('panel_root = "/x"\nescrow = "none"\n')
    profile = load_profile(path)

    with pytest.raises(AttributeError, match="frozen"):
        profile.batch_size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        profile.agents.inventory_token_ttl_s = 1  # type: ignore[attr-defined]
    changed = profile.replace(restart_command=["systemctl", "restart", "php8.2-fpm"])
    with pytest.raises(ValueError, match="batch_size: must be from 1 to 100000"):
        profile.replace(batch_size=0)

    assert changed.restart_command == ["systemctl", "restart", "php8.2-fpm"]
    assert profile.restart_command == ["systemctl", "restart", "php8.3-fpm"]
    assert (profile.fields_set, changed.fields_set) == (
        {"panel_root", "escrow"}, {"panel_root", "escrow", "restart_command"}
    )
    assert engine_command(changed, "status") == engine_command(profile, "status") == (
        f"sudo myosicam-rotator --profile {path} status"
    )


def test_fields_set_tells_an_agents_section_from_the_defaults():
    """incident and probe ask whether ``[agents]`` was written, not what it holds."""
    assert "agents" not in profile_from_dict({"panel_root": "/x", "escrow": "none"}).fields_set
    assert "agents" in profile_from_dict({"panel_root": "/x", "escrow": "none", "agents": {}}).fields_set


def test_the_database_password_stays_out_of_repr():
    profile = profile_from_dict(
        {"panel_root": "/x", "escrow": "none", "database": {"password": "hunter2-secret", "user": "panel"}}
    )
    assert "hunter2-secret" not in repr(profile)
    assert "user='panel'" in repr(profile.database)
    assert profile.database.password == "hunter2-secret"


def test_settings_objects_made_in_code_are_checked_too():
    """``ColumnSpec(...)`` and friends refuse what the TOML would have refused."""
    with pytest.raises(ValueError, match=r"^table: must be an SQL name.*; column: must be a string, not a whole"):
        ColumnSpec(table="t; DROP TABLE x", column=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port: must be from 1 to 65535"):
        AgentSettings.InventoryEntry(host="h", port=0)
    assert ColumnSpec(table="t", column="c") == ColumnSpec(table="t", column="c", primary_key="id")
    assert "inventory" in AgentSettings.field_names() and "PLACEHOLDERS" not in AgentSettings.field_names()


def test_importing_the_profile_and_the_operations_leaves_pydantic_out():
    """The engine is an SSH forced command: pydantic's import alone cost it 120-250 ms a run."""
    probe = f"import sys; sys.path.insert(0, {str(REPO)!r}); import engine.profile, engine.ops; " \
        "print(engine.profile.__file__, 'pydantic' in sys.modules)"
    result = subprocess.run([sys.executable, "-I", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(REPO / "engine" / "profile.py"), "False"]
