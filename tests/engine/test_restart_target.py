"""The restart target is checked before anything is written (issue 10, item 6).

No systemd runs on these machines, so a stand-in ``systemctl`` (a script put first
on the engine's PATH) answers ``cat`` and ``list-unit-files`` for the units a test
names, and turns ``restart``/``stop``/``start`` into the reference panel's own
``ctl.py``: the lookups are faked, the panel that gets restarted is real. The
machine's real ``systemctl`` is used where a test says so.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.engine.runner import run_engine
from tests.support.panel import PanelSandbox
from tests.support.secrets_scan import register_secret

STAND_IN = """#!/bin/sh
# systemctl stand-in for tests: knows the units {units}; no systemd runs here.
verb=$1; shift
case "$verb" in
  cat)
    for u in {units}; do
      if [ "$1" = "$u" ] || [ "$1" = "$u.service" ]; then echo "# /lib/systemd/system/$u.service"; exit 0; fi
    done
    echo "No files found for $1." >&2; exit 1;;
  list-unit-files)
    for u in {units}; do echo "$u.service enabled enabled"; done; exit 0;;
  restart) exec {ctl} restart --state-dir {state};;
  stop) exec {ctl} stop-app --state-dir {state};;
  start) exec {ctl} start-app --state-dir {state};;
esac
echo "unknown command $verb" >&2; exit 1
"""


def _stand_in(panel: PanelSandbox, units: list[str]) -> dict[str, str]:
    """An engine environment whose PATH finds the stand-in systemctl first."""
    folder = panel.root / "fake-bin"
    folder.mkdir(exist_ok=True)
    script = folder / "systemctl"
    ctl = " ".join(panel.server.ctl_argv("status")[:2])
    script.write_text(STAND_IN.format(units=" ".join(units) or '""', ctl=ctl, state=panel.state_dir))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}


def _unchanged(panel: PanelSandbox) -> tuple[bytes, dict[str, str | None]]:
    return panel.env_path.read_bytes(), panel.stored_values()


@pytest.mark.parametrize("args", [("probe",), ("plan",), ("rotate-key", "--dry-run"), ("rotate-key", "--yes")])
def test_a_missing_unit_is_refused_before_anything_is_written(panel_factory, args):
    """The vendor's php8.3-fpm on a host that runs php8.2-fpm: every entry point refuses,
    naming the unit, and nothing changes."""
    panel = panel_factory(rows=2)
    profile = panel.write_profile(restart_command=["systemctl", "restart", "php8.3-fpm"])
    env = _stand_in(panel, ["php8.2-fpm"])
    before = _unchanged(panel)

    run = run_engine(profile, *args, "--json", env=env)

    assert run.returncode != 0
    assert run.closing["code"] == "hook_failed"
    assert "restart target php8.3-fpm does not exist on this host" in run.closing["message"]
    assert "No files found for php8.3-fpm." in run.closing["message"]
    assert _unchanged(panel) == before
    assert not (panel.root / "journal" / "rotation.json").exists()


def test_a_missing_restart_program_is_refused_by_probe(panel_factory):
    panel = panel_factory(rows=1)
    profile = panel.write_profile(restart_command=[str(panel.root / "no-such-restart")])

    run = run_engine(profile, "probe", "--json")

    assert run.returncode != 0
    assert "is not found on this host" in run.closing["message"]


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (apt systemd)")
@pytest.mark.parametrize("args", [("probe",), ("rotate-key", "--dry-run")])
def test_the_real_systemctl_without_systemd_is_refused_clearly(panel_factory, args):
    """This machine's real systemctl, with no systemd running: a restart could not work, so
    probe and the dry run say so instead of failing after .env was written. It is a
    settings problem (the profile's restart_command), so exit status 2, as the table says."""
    panel = panel_factory(rows=1)
    profile = panel.write_profile(restart_command=["systemctl", "restart", "php8.2-fpm"])

    run = run_engine(profile, *args, "--json")

    assert run.returncode == 2, run.stderr
    assert "systemctl cannot reach systemd on this host" in run.closing["message"]


def test_auto_finds_the_one_php_fpm_unit_and_restarts_it(panel_factory):
    """``restart_command = "auto"`` with one php*-fpm unit: the rotation restarts that unit
    (stop, commit, start) and the panel shows every credential under the new key."""
    panel = panel_factory(rows=3, server=True)
    profile = panel.write_profile(restart_command="auto")
    env = _stand_in(panel, ["php8.2-fpm", "nginx"])

    run = run_engine(profile, "rotate-key", "--yes", "--json", env=env)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    assert panel.env_key() != panel.initial_key
    assert panel.php_check_all() == []
    assert [lbl for lbl, shown in panel.credentials().items() if shown is False] == []
    assert "systemctl" in run.step("restart")["detail"]


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ([], 'restart_command = "auto" found no php*-fpm unit on this host'),
        (["php8.2-fpm", "php8.3-fpm"], 'found 2 php-fpm units (php8.2-fpm, php8.3-fpm)'),
    ],
)
def test_auto_refuses_none_or_several_units(panel_factory, units, expected):
    panel = panel_factory(rows=1)
    profile = panel.write_profile(restart_command="auto")
    before = _unchanged(panel)

    run = run_engine(profile, "rotate-key", "--yes", "--json", env=_stand_in(panel, units))

    assert run.returncode != 0
    assert expected in run.closing["message"]
    assert _unchanged(panel) == before


def test_only_auto_is_accepted_as_a_string(tmp_path: Path):
    from engine.errors import ProfileError
    from engine.profile import profile_from_dict

    with pytest.raises(ProfileError, match="restart_command"):
        profile_from_dict({"panel_root": str(tmp_path), "escrow": "none", "restart_command": "systemctl restart php"})
    auto = profile_from_dict({"panel_root": str(tmp_path), "escrow": "none", "restart_command": "auto"})
    assert auto.restart_command == ["auto"]


def test_doctor_shows_a_missing_unit_through_probe(panel_factory):
    """The bot's doctor asks the engine for probe: the missing unit is its finding."""
    from bot import doctor
    from bot.local_client import LocalEngineClient

    panel = panel_factory(rows=1)
    profile = panel.write_profile(restart_command=["systemctl", "restart", "php8.3-fpm"])
    client = LocalEngineClient(profile, env={**os.environ, **_stand_in(panel, ["php8.2-fpm"])})

    checks = list(doctor._panel_checks("prod-eu", client))

    failed = [c for c in checks if not c.ok]
    assert len(failed) == 1 and failed[0].subject.startswith("panel prod-eu")
    assert "restart target php8.3-fpm does not exist on this host" in failed[0].finding
