"""Commands and checks the profile configures: restart, panel check, escrow, backup.

Commands run without a shell, from an argv list, with an allow-listed
environment (``hook_environ``): whatever else the engine was started with
(a bot's ``SLACK_*`` tokens, say) never reaches a hook. A secret (the new key,
for escrow) is only ever fed on stdin. What a command prints is reduced to its
last line, with anything that looks like key material removed, before it
reaches an event or an exception.

A team's vault CLI needs more than the allow-list (``VAULT_ADDR``, a token, an AWS
profile). The profile says what, and nothing else gets through (``team_environment``):
``hook_environment`` names variables passed on from the engine's own environment (the
break-glass CLI run with them set; ``sudo`` drops them unless told), and
``hook_env_file`` is a ``NAME=value`` file readable by its owner only, owned by root or
the engine's user, for the served engine that sudo starts with a clean environment.
These go to the team's own hooks (escrow, backup, panel check), not to restart commands.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from engine.errors import HookError, PanelCheckError, ProfileError
from engine.protocol import redact

#: What a hook inherits from the engine's environment; everything else is dropped.
ALLOWED_ENV = frozenset({"PATH", "LANG", "LANGUAGE", "HOME", "TZ", "USER", "LOGNAME", "TMPDIR"})
ALLOWED_ENV_PREFIXES = ("LC_",)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hook_environ(
    extra: Mapping[str, str] | None = None,
    *,
    source: Mapping[str, str] | None = None,
    prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """The allow-listed part of ``source`` (this process's environment), plus ``extra``
    (the documented ``ROTATOR_*`` variables a hook is given). ``prefixes`` lets more
    through: the bot starting a local engine passes its ``MYOSICAM_*`` settings."""
    allowed_prefixes = ALLOWED_ENV_PREFIXES + prefixes
    env = {
        name: value
        for name, value in (os.environ if source is None else source).items()
        if name in ALLOWED_ENV or name.startswith(allowed_prefixes)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


class _HookSettings(Protocol):
    """What ``team_environment`` reads from a profile (engine.profile.Profile)."""

    @property
    def hook_environment(self) -> Sequence[str]: ...

    @property
    def hook_env_file(self) -> Path | None: ...


def team_environment(profile: _HookSettings, *, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the profile hands to the team's hooks: ``hook_env_file``'s, then the
    ``hook_environment`` names found in ``source`` (this process's environment)."""
    env = read_hook_env_file(profile.hook_env_file) if profile.hook_env_file else {}
    environ = os.environ if source is None else source
    env.update({name: environ[name] for name in profile.hook_environment if name in environ})
    return env


def read_hook_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines, optional ``export`` and quotes).

    Refused unless only its owner can read it and that owner is root or the engine's
    user: the file holds a vault token, and a group-readable copy is a leaked one.
    The message names the file and the fix, never a value.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ProfileError(f"hook_env_file {path} does not exist") from None
    except OSError as exc:
        raise ProfileError(f"cannot read hook_env_file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ProfileError(f"hook_env_file {path} is not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise ProfileError(f"hook_env_file {path} must be owned by root (chown root:root {path})")
        if info.st_mode & 0o077:
            raise ProfileError(
                f"hook_env_file {path} can be read by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"chmod 600 {path}"
            )
        text = handle.read().decode("utf-8", errors="replace")
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ProfileError(f"hook_env_file {path} line {number} is not NAME=value")
        name, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name] = value
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return redact(lines[-1])[:200] if lines else ""


def describe(argv: list[str]) -> str:
    """A short, readable name for a command: ``systemctl restart php8.3-fpm``,
    ``python ctl.py restart`` (file names, not their folders; at most three words)."""
    return " ".join(os.path.basename(part) if "/" in part else part for part in argv[:3])


def run_command(
    what: str,
    argv: list[str],
    *,
    timeout_s: float,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    team_env: Mapping[str, str] | None = None,
    error: type[HookError] = HookError,
) -> str:
    """Run ``argv``; return its last output line (redacted) or raise ``error``.

    ``team_env`` (``team_environment``) comes under ``env``: a ``ROTATOR_*`` variable is
    always the engine's."""
    full_env = hook_environ({**(team_env or {}), **(env or {})})
    try:
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout_s,
            env=full_env,
            check=False,
        )
    except FileNotFoundError:
        raise error(f"{what} failed: command {argv[0]!r} not found") from None
    except PermissionError:
        raise error(f"{what} failed: command {argv[0]!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what} did not finish within {timeout_s:g} s") from None
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        said = _last_line(err) or _last_line(out)
        raise error(f"{what} failed (exit {proc.returncode})" + (f": {said}" if said else ""))
    return _last_line(out)


#: Answers that say "not ready (yet)", from a proxy in front of a restarting panel.
NOT_READY = frozenset({502, 503, 504})


def check_url(url: str, timeout_s: float, patience_s: float = 0.0) -> str:
    """GET ``url``; a 2xx answer passes. Returns e.g. ``200 OK``.

    ``patience_s``: how long a panel that does not answer yet (a timeout, a refused
    connection, 502/503/504) is asked again, with backoff. A panel just restarted on a loaded
    host may take a while to answer its first request, and no answer is no proof that
    anything is wrong; an answer (another status) is final."""
    if not url.startswith(("http://", "https://")):
        raise PanelCheckError(f"verify_url must be an http(s) URL, not {url.split(':')[0]!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "myosicam-rotator"})  # noqa: S310
    deadline = time.monotonic() + patience_s
    delay, tries = 0.25, 0
    while True:
        tries += 1
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                after = f" (answered on try {tries})" if tries > 1 else ""
                return f"{response.status} {response.reason}{after}"
        except urllib.error.HTTPError as exc:
            if exc.code not in NOT_READY or time.monotonic() >= deadline:
                raise PanelCheckError(
                    f"panel check failed: GET {url} returned {exc.code}{_tries(tries)}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                reason = getattr(exc, "reason", exc)
                raise PanelCheckError(
                    f"panel check failed: GET {url} did not answer ({reason}){_tries(tries)}"
                ) from None
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _tries(tries: int) -> str:
    return f" (asked {tries} times)" if tries > 1 else ""
