"""podman on these machines (see TESTING-FACTS.md): runc, explicit ulimits, a local base image.

No registry is reachable, so the Dockerfile's base (a Debian bookworm with python3) is
made here with debootstrap from the machine's own apt mirror, imported once and kept:
later runs find it and skip the 70 s.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

BASE_IMAGE = "localhost/rotator-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def ulimits() -> list[str]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return ["--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=32768:32768"]


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS`` (crun refuses this VM's cgroup layout)."""
    result = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (``URIs:`` in a deb822 sources file)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for uri in re.findall(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE):
            if "security" not in uri:
                return uri
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["deb"] and "security" not in line:
            return next(p for p in parts[1:] if p.startswith("http"))
    raise AssertionError("no Debian mirror in /etc/apt/sources*")


def _unmount_below(folder: Path) -> None:
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounted if m.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def ensure_base_image() -> str:
    """The base image, made with debootstrap if this machine does not have it yet."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="rotator-rootfs-") as folder:
        rootfs = Path(folder) / "rootfs"
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                 "bookworm", str(rootfs), apt_mirror()],
                check=True, capture_output=True, timeout=1200,
            )  # fmt: skip
        finally:
            _unmount_below(rootfs)  # an interrupted debootstrap leaves /proc mounted in it
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "--runtime", "runc", "import", "-", BASE_IMAGE],
                                  stdin=tar.stdout, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        assert (tar.wait(), imported.returncode) == (0, 0), imported.stderr
    return BASE_IMAGE
