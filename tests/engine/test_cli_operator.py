"""A break-glass run records who ran it, not "cli" (issue 22, item 6)."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from engine.operator import command_line_operator
from tests.engine.runner import run_engine


def test_a_run_through_sudo_is_recorded_under_the_person_who_typed_it(panel_factory):
    """What sudo sets (SUDO_USER) reaches the host's run record and ``status``."""
    if os.geteuid() != 0:
        pytest.skip("the engine runs as root on a panel host; SUDO_USER counts only there")
    panel = panel_factory(rows=2)

    run = run_engine(panel.profile_path, "rotate-key", "--yes", "--json", "--reason", "INC-1",
                     env={"SUDO_USER": "alice", "SUDO_UID": "1000"})
    status = run_engine(panel.profile_path, "status")

    assert run.returncode == 0, run.stderr
    runs = [json.loads(line) for line in (panel.root / "journal" / "runs.jsonl").read_text().splitlines()]
    assert {r["requested_by"] for r in runs if r.get("op") == "rotate-key"} == {"cli:alice via sudo"}
    assert "requested by cli:alice via sudo" in status.stdout


def test_without_sudo_the_account_running_the_engine_is_recorded(panel_factory):
    panel = panel_factory(rows=2)
    me = pwd.getpwuid(os.getuid()).pw_name

    run = run_engine(panel.profile_path, "rotate-key", "--yes", "--json", env={"SUDO_USER": ""})

    assert run.returncode == 0, run.stderr
    runs = [json.loads(line) for line in (panel.root / "journal" / "runs.jsonl").read_text().splitlines()]
    assert {r["requested_by"] for r in runs if r.get("op") == "rotate-key"} == {f"cli:{me}"}


@pytest.mark.parametrize(("env", "uid", "expected"), [
    ({"SUDO_USER": "alice"}, 0, "cli:alice via sudo"),
    ({"SUDO_USER": "alice"}, 1000, "cli:" + (pwd.getpwuid(1000).pw_name if 1000 in {p.pw_uid for p in pwd.getpwall()}
                                             else "uid 1000")),
    ({"SUDO_USER": "root"}, 0, "cli:root"),
    ({"SUDO_USER": "bad name; rm -rf /"}, 0, "cli:root"),
    ({}, 0, "cli:root"),
])
def test_sudo_user_counts_only_for_root_and_only_as_an_account_name(env, uid, expected):
    """An unprivileged user can set SUDO_USER by hand: it is ignored unless the engine runs as root."""
    assert command_line_operator(env, uid=uid) == expected
