"""rotate-key the way production runs it (issue 16, item 5): php-fpm's workers as
``www-data`` behind nginx, ``config/.env`` owned by ``www-data`` at 0640, the engine as
root with the profile's default ``env_owner``/``env_group``.

Here the chown of the rewritten file is not a no-op: without it the new ``.env`` would
belong to root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.engine.hostile import ensure_user
from tests.engine.runner import rotate
from tests.support.secrets_scan import register_secret


def _fpm_worker_uids(state_dir: Path) -> set[int]:
    master = int((state_dir / "php-fpm.master.pid").read_text())
    uids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["PPid"]) == master:
            uids.add(int(fields["Uid"].split()[0]))
    return uids


def test_rotate_key_with_www_data_workers_and_a_www_data_env(panel_factory):
    www = ensure_user("www-data")
    panel = panel_factory(rows=4, server=True, fpm=True, worker_user="www-data")
    os.chown(panel.env_path.parent, www.uid, www.gid)
    os.chown(panel.env_path, www.uid, www.gid)
    panel.env_path.chmod(0o640)
    profile = panel.write_profile(env_owner=None, env_group=None)  # the defaults: www-data
    assert _fpm_worker_uids(panel.state_dir) == {www.uid}

    run = rotate(profile)
    register_secret(panel.env_key(), "new PANEL_ENCRYPTION_KEY")

    assert run.returncode == 0, run.stderr
    st = os.lstat(panel.env_path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (www.uid, www.gid, 0o640)
    assert "www-data:www-data 0640 (kept)" in run.step("write_env")["detail"]
    assert panel.env_key() != panel.initial_key
    assert panel.php_check_all() == []
    assert _fpm_worker_uids(panel.state_dir) == {www.uid}
    shown = panel.credentials()
    assert [label for label, plain in shown.items() if plain is False] == []
    assert run.leaks() == []
