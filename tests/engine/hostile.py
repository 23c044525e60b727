"""A real unprivileged user on this host, for tests where another user attacks the engine.

``ensure_user`` makes a system account once (``useradd``, root only); ``as_user``
runs Python code as that account in a child process (``subprocess`` with
``user=``/``group=``/``extra_groups=[]``), so what it plants is planted with its
own rights, exactly as the panel's ``www-data`` could.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ATTACKER = "myosicam-hostile"


@dataclass(frozen=True)
class HostUser:
    name: str
    uid: int
    gid: int

    def run(self, code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``python3 -I -c code args...`` as this user (the system's Python: the test
        venv may sit under root's 0700 home); raises when it fails."""
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        proc = subprocess.run(
            [python, "-I", "-c", code, *args],
            user=self.uid, group=self.gid, extra_groups=[], cwd=cwd,
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        assert proc.returncode == 0, f"code run as {self.name} failed: {proc.stderr[-800:]}"
        return proc


def ensure_user(name: str = ATTACKER) -> HostUser:
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a real unprivileged user")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return HostUser(name, entry.pw_uid, entry.pw_gid)


@contextmanager
def reachable_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder other users can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[bytes, int, int, int]]:
    """Content, owner, group and mode of every regular file under ``root`` outside ``skip``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or path.is_symlink() or not path.is_file():
            continue
        st = path.stat()
        out[str(path)] = (path.read_bytes(), st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return out
