"""The engine as root can't be subverted by the folder it is started from, and never
dumps core while it holds keys (issue 9, items 7 and 14)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.local_client import LocalEngineClient
from engine.protocol import Request
from tests.engine.hostile import HostUser, ensure_user, reachable_dir
from tests.engine.runner import REPO, finish, start_paused
from tests.support.secrets_scan import register_secret

#: Run as the attacker in a folder it owns: modules that leave a mark when imported.
PLANT_MODULES = r"""
import os, sys
here = sys.argv[1]
mark = "open(os.path.join({here!r}, 'IMPORTED-' + __name__), 'w').close()\n".format(here=here)
os.makedirs(os.path.join(here, "engine"), exist_ok=True)
for rel in ("engine/__init__.py", "engine/__main__.py", "json.py", "pydantic.py", "tomllib.py"):
    with open(os.path.join(here, rel), "w") as handle:
        handle.write("import os\n" + mark)
"""


@pytest.fixture
def planted_cwd():
    """A folder another user writes (as www-data writes a panel root), full of its modules."""
    attacker: HostUser = ensure_user()
    with reachable_dir("myo-cwd-") as here:
        import os

        os.chown(here, attacker.uid, attacker.gid)
        here.chmod(0o755)
        attacker.run(PLANT_MODULES, str(here))
        yield here


def _profile(tmp_path: Path) -> Path:
    (tmp_path / "panel" / "config").mkdir(parents=True)
    path = tmp_path / "profile.toml"
    path.write_text(f'panel_root = "{tmp_path / "panel"}"\njournal_dir = "{tmp_path / "journal"}"\nescrow = "none"\n')
    return path


def _marks(here: Path) -> list[str]:
    return sorted(p.name for p in here.glob("IMPORTED-*"))


def test_the_documented_command_ignores_modules_in_the_current_folder(planted_cwd, tmp_path):
    """``python -I -m engine`` run as root from that folder imports none of them; the
    same command without ``-I`` (the control) runs the planted ``engine``."""
    profile = _profile(tmp_path)
    argv = [sys.executable, "-I", "-m", "engine", "--profile", str(profile), "status", "--json"]

    done = subprocess.run(argv, cwd=planted_cwd, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    assert '"type": "result"' in done.stdout or '"type":"result"' in done.stdout
    assert _marks(planted_cwd) == []
    control = [a for a in argv if a != "-I"]
    subprocess.run(control, cwd=planted_cwd, capture_output=True, timeout=60, check=False)
    assert "IMPORTED-engine" in _marks(planted_cwd)


def test_the_bots_local_engine_ignores_modules_in_its_current_folder(
    planted_cwd, tmp_path, monkeypatch
):
    monkeypatch.chdir(planted_cwd)
    events = list(LocalEngineClient(_profile(tmp_path)).run(Request(v=1, id="r-cwd", op="hello")))

    assert [e["type"] for e in events] == ["hello", "result"]
    assert _marks(planted_cwd) == []


def test_every_documented_engine_command_is_isolated():
    """README, docs and deploy files write ``python -I -m engine`` (or a wrapper), never
    a bare ``python -m engine`` that would import from the current folder."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "deploy").iterdir())]
    bare = re.compile(r"python3?(?![^\n`]*\s-I\b)[^\n`]*\s-m engine\b")
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in texts
        if path.is_file()
        for match in bare.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert found == []


def test_a_running_engine_cannot_dump_core(panel_factory):
    """Read from /proc while the engine holds both keys (stopped just after staging)."""
    panel = panel_factory(rows=1)
    engine = start_paused(panel.profile_path, "state:STAGED", "rotate-key", "--yes", "--json")
    try:
        limits = Path(f"/proc/{engine.pid}/limits").read_text()
    finally:
        run = finish(engine)
        register_secret(panel.env_key(), "new key")
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    assert run.returncode == 0, run.stderr


def test_the_engine_start_makes_the_process_non_dumpable():
    """What engine/__main__.py calls first: after it, PR_GET_DUMPABLE is 0."""
    code = (
        "from engine.hardening import dumpable, no_core_dumps\n"
        "before = dumpable(); no_core_dumps(); print(before, dumpable())"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "0"]
