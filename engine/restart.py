"""The restart target: resolving ``restart_command = "auto"`` and checking it exists.

A run that fails at the restart has already written ``.env`` and must roll
back; a host whose php-fpm unit has another name than the profile's (Debian 12
ships ``php8.2-fpm``, the vendor's docs say ``php8.3-fpm``) failed exactly so.
So preflight, probe and a dry run check, before anything is written, that each
restart command can run: ``systemctl cat UNIT`` for systemctl commands, the
executable for any other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from engine.errors import HookError, RestartTargetError
from engine.hooks import hook_environ
from engine.profile import AUTO_RESTART, Profile

_FPM_UNIT = re.compile(r"^(php[0-9.]*-fpm)\.service$")
_LOOKUP_TIMEOUT_S = 15.0
#: What systemctl says when no systemd runs (a container, a chroot).
_NO_SYSTEMD = ("has not been booted with systemd", "Failed to connect to bus", "Running in chroot")


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("systemctl", path=hook_environ()["PATH"])
    if program is None:
        raise HookError("systemctl is not found on this host")
    try:
        return subprocess.run(
            [program, *args], capture_output=True, text=True, timeout=_LOOKUP_TIMEOUT_S,
            env=hook_environ({"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}), check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HookError(f"systemctl {args[0]} did not answer: {exc}") from None


def resolve_auto() -> list[str]:
    """``systemctl restart <the one php*-fpm unit>``, or ``HookError`` saying why not."""
    try:
        done = _systemctl("list-unit-files", "--type=service", "--no-legend", "--no-pager", "php*-fpm.service")
    except HookError as exc:
        raise RestartTargetError(
            f'restart_command = "auto" needs systemd: {exc.message}; set restart_command'
        ) from None
    units = sorted(
        {m.group(1) for line in done.stdout.splitlines() if line.split() and (m := _FPM_UNIT.match(line.split()[0]))}
    )
    if not units:
        raise RestartTargetError(
            'restart_command = "auto" found no php*-fpm unit on this host; '
            'set restart_command to the command that restarts the panel'
        )
    if len(units) > 1:
        raise RestartTargetError(
            f'restart_command = "auto" found {len(units)} php-fpm units ({", ".join(units)}); '
            'set restart_command to the one that serves the panel, e.g. '
            f'["systemctl", "restart", "{units[-1]}"]'
        )
    return ["systemctl", "restart", units[0]]


def resolved(profile: Profile) -> Profile:
    """``profile`` with an ``"auto"`` restart command resolved; unchanged when resolution
    fails (``check_target`` then refuses with the reason, before anything is written)."""
    if profile.restart_command != AUTO_RESTART:
        return profile
    try:
        command = resolve_auto()
    except HookError:
        return profile
    return profile.replace(restart_command=command)


def _unit_of(argv: list[str]) -> str | None:
    words = [a for a in argv[1:] if not a.startswith("-")]
    return words[-1] if len(words) >= 2 else None


def check_target(profile: Profile) -> str:
    """Refuse (``HookError``) a restart command whose program or systemd unit is missing.
    Returns a short description of what was checked, for a step line."""
    if profile.restart_command == AUTO_RESTART:
        resolve_auto()  # raises with the reason
    commands = [profile.restart_command, *(profile.restart_halves or ())]
    checked: list[str] = []
    for argv in commands:
        program = argv[0]
        if shutil.which(program, path=hook_environ()["PATH"]) is None:
            raise RestartTargetError(
                f"restart command {program!r} is not found on this host; nothing was changed "
                "(fix restart_command in the profile)"
            )
        unit = _unit_of(argv) if os.path.basename(program) == "systemctl" else None
        if unit is None or unit in checked:
            continue
        done = _systemctl("cat", unit)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [""])[-1][:200]
            if any(sign in done.stderr for sign in _NO_SYSTEMD):
                raise RestartTargetError(
                    f"systemctl cannot reach systemd on this host ({said}), so "
                    f"`{' '.join(argv[1:])}` would fail too; nothing was changed. Set restart_command "
                    "to a command that restarts php-fpm here"
                )
            raise RestartTargetError(
                f"restart target {unit} does not exist on this host (systemctl cat {unit}: "
                f"{said or f'exit {done.returncode}'}); nothing was changed. Set restart_command "
                'to the php-fpm unit this host runs, or to "auto"'
            )
        checked.append(unit)
    return ", ".join(checked) or os.path.basename(profile.restart_command[0])
