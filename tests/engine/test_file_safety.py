"""Another user who can write ``config/`` (www-data, in production) cannot turn a rotation
run as root into a write anywhere else (issue 9, item 1).

The attacker is a real unprivileged account; what it plants, it plants with its own
rights. The engine runs as root, as in production.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from engine import envfile
from engine.errors import EngineError, EnvFileError
from engine.journal import Journal
from tests.engine.hostile import HostUser, ensure_user, reachable_dir, snapshot
from tests.engine.runner import finish, rotate, start_paused
from tests.support.panel import PanelSandbox, build_panel, failing_once
from tests.support.secrets_scan import register_secret

#: Run as the attacker: a symlink to the victim under every name the engine used to
#: pick for its temporary .env (``..env.rotator-<pid>.tmp``), for a range of pids.
PLANT_PID_LINKS = r"""
import os, sys
config, victim, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for pid in range(first, first + count):
    for name in (f"..env.rotator-{pid}.tmp", f".env.rotator-{pid}.tmp", f".env.{pid}.tmp"):
        try:
            os.symlink(victim, os.path.join(config, name))
        except FileExistsError:
            pass
"""

#: Run as the attacker: replace config/.env with a symlink to a file of root's.
PLANT_ENV_LINK = r"""
import os, sys
config, target = sys.argv[1], sys.argv[2]
os.unlink(os.path.join(config, ".env"))
os.symlink(target, os.path.join(config, ".env"))
"""


@pytest.fixture
def attacker() -> HostUser:
    return ensure_user()


@pytest.fixture
def hostile_panel(attacker):
    """A panel whose ``config/`` and ``.env`` belong to the attacker (as www-data's do),
    with a root-owned victim file beside it; the engine's profile names the attacker as
    ``env_owner``."""
    with reachable_dir("myo-hostile-") as root:
        panel = build_panel(root, rows=3)
        try:
            config = panel.env_path.parent
            os.chown(config, attacker.uid, attacker.gid)
            config.chmod(0o750)
            os.chown(panel.env_path, attacker.uid, attacker.gid)
            panel.env_path.chmod(0o640)
            victim = root / "victim.conf"
            victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
            victim.chmod(0o644)
            yield panel, victim
        finally:
            panel.close()


def _profile(panel: PanelSandbox, attacker: HostUser, **extra: object) -> Path:
    return panel.write_profile(env_owner=attacker.name, env_group=attacker.name, **extra)


def _outside_config(panel: PanelSandbox) -> dict[str, tuple[bytes, int, int, int]]:
    skip = ("journal", "panel-check")
    return snapshot(panel.root, skip=(panel.env_path.parent, *(panel.root / s for s in skip)))


@pytest.mark.parametrize("path", ["forward", "rollback"])
def test_planted_temp_file_symlinks_are_never_followed(hostile_panel, attacker, path):
    """Symlinks to a root file under the next few hundred pids' temp names: the rotation
    (and, when the panel check fails, its rollback) writes only the real .env."""
    panel, victim = hostile_panel
    hooks = panel.root / "panel-check"  # its marker file is expected to change
    hooks.mkdir()
    extra = {"verify_command": failing_once(hooks)} if path == "rollback" else {}
    profile = _profile(panel, attacker, **extra)
    before = _outside_config(panel)
    config = panel.env_path.parent

    engine = start_paused(profile, "state:DB_VERIFIED", "rotate-key", "--yes", "--json")
    try:
        attacker.run(PLANT_PID_LINKS, str(config), str(victim), str(engine.pid - 20), "400")
    except BaseException:
        engine.kill()  # it holds row locks: the database could not be dropped
        engine.communicate()
        raise
    run = finish(engine)
    key = panel.env_key()
    register_secret(key, "PANEL_ENCRYPTION_KEY after the run")

    assert _outside_config(panel) == before, "a file outside config/ changed"
    st = os.lstat(panel.env_path)
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (attacker.uid, attacker.gid, 0o640)
    assert panel.php_check_all() == []
    if path == "forward":
        assert run.returncode == 0, run.stderr
        assert key != panel.initial_key
    else:
        assert run.closing["type"] == "error" and run.closing["rolled_back"] is True, run.stdout[-800:]
        assert key == panel.initial_key
    planted = [p for p in config.iterdir() if p.is_symlink()]
    assert len(planted) == 3 * 400 and all(os.readlink(p) == str(victim) for p in planted)


def test_a_symlinked_env_is_refused_before_any_change(hostile_panel, attacker):
    """.env replaced by a symlink to a root file that looks like it: refused, nothing written."""
    panel, _ = hostile_panel
    profile = _profile(panel, attacker)
    root_copy = panel.root / "root-owned.env"
    root_copy.write_bytes(panel.env_path.read_bytes())
    root_copy.chmod(0o600)
    attacker.run(PLANT_ENV_LINK, str(panel.env_path.parent), str(root_copy))
    before = _outside_config(panel)

    run = rotate(profile)

    assert run.returncode != 0
    assert run.closing["type"] == "error"
    assert "is a symbolic link" in run.closing["message"]
    assert _outside_config(panel) == before
    assert panel.env_path.is_symlink()
    assert panel.php_check_all(panel.initial_key) == []
    assert not (panel.root / "journal" / "rotation.json").exists()


# --- the same rules, one by one (fast) --------------------------------------------------


def _env(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    env = folder / ".env"
    env.write_text(f"PANEL_ENCRYPTION_KEY={'a' * 64}\n")
    env.chmod(0o640)
    return env


def _root_only() -> envfile.Ownership:
    return envfile.Ownership(0, 0, 0o640, frozenset({0}))


def test_a_symlinked_config_folder_is_refused(tmp_path, attacker):
    real = tmp_path / "elsewhere"
    _env(real)
    (tmp_path / "config").symlink_to(real)
    env = tmp_path / "config" / ".env"

    for attempt in (
        lambda: envfile.read(env),
        lambda: envfile.check_writable(env, _root_only()),
        lambda: envfile.write_atomic(env, b"X=1\n", _root_only()),
    ):
        with pytest.raises(EnvFileError, match="is a symbolic link"):
            attempt()
    assert (real / ".env").read_text() == f"PANEL_ENCRYPTION_KEY={'a' * 64}\n"


@pytest.mark.parametrize("foreign", ["env", "folder"])
def test_an_env_or_folder_owned_by_another_user_is_refused(tmp_path, attacker, foreign):
    env = _env(tmp_path / "config")
    os.chown(env if foreign == "env" else env.parent, attacker.uid, attacker.gid)

    with pytest.raises(EnvFileError, match=f"owned by {attacker.name}, not root"):
        envfile.check_writable(env, _root_only())
    with pytest.raises(EnvFileError, match=f"owned by {attacker.name}, not root"):
        envfile.write_atomic(env, b"X=1\n", _root_only())
    assert env.read_text().startswith("PANEL_ENCRYPTION_KEY=")


def test_the_configured_owner_is_accepted_and_kept(tmp_path, attacker):
    """``.env`` owned by env_owner at 0640, the engine as root: the new file keeps that
    owner and group (the production chown really happens)."""
    env = _env(tmp_path / "config")
    os.chown(env, attacker.uid, attacker.gid)
    ownership = envfile.kept_ownership(env, attacker.name, attacker.name, 0o640)

    envfile.write_atomic(env, b"X=1\n", ownership)

    st = os.lstat(env)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (attacker.uid, attacker.gid, 0o640)
    assert env.read_bytes() == b"X=1\n"
    assert ownership.describe() == f"{attacker.name}:{attacker.name} 0640 (kept)"


def test_a_symlinked_or_foreign_journal_folder_is_refused(tmp_path, attacker):
    real = tmp_path / "real-journal"
    real.mkdir(mode=0o700)
    (tmp_path / "journal").symlink_to(real)
    with pytest.raises(EngineError, match="is a symbolic link"):
        Journal(tmp_path / "journal").acquire_lock()
    assert list(real.iterdir()) == []

    foreign = tmp_path / "foreign-journal"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, attacker.uid, attacker.gid)
    with pytest.raises(EngineError, match="not root or this engine's user"):
        Journal(foreign).acquire_lock()
    assert list(foreign.iterdir()) == []


def test_journal_files_are_made_under_random_names(tmp_path):
    """A name planted in advance (even by root) is never reused or followed."""
    journal = Journal(tmp_path / "journal")
    journal.ensure_dir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (journal.dir / ".key-history.json.tmp").symlink_to(victim)

    journal.remember("f" * 16)

    assert victim.read_text() == "keep\n"
    assert json.loads(journal.history_file.read_text()) == ["f" * 16]
    assert stat.S_IMODE(journal.history_file.stat().st_mode) == 0o600


def test_a_symlinked_journal_folder_is_refused_over_the_protocol(panel_factory, tmp_path):
    """The bot's path (``serve``): nothing (no event log, no running marker) is written
    through a symlinked journal_dir, and the error says why."""
    from bot.local_client import LocalEngineClient
    from engine.protocol import Request
    from tests.support.plans import named

    panel = panel_factory(rows=1)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "journal-link").symlink_to(target)
    profile = panel.write_profile(journal_dir=str(tmp_path / "journal-link"))
    client = LocalEngineClient(profile)
    request = Request(v=1, id="r-link", op="rotate-key", requested_by="U1", approved_by=["U2"])

    with pytest.raises(Exception, match="is a symbolic link"):
        list(client.run(named(client, request)))

    assert list(target.iterdir()) == []
    assert panel.env_key() == panel.initial_key
