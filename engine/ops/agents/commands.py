"""Commands the profile names, run on the panel host for agent rotation.

The install token provider, the old-token check and the re-registration check
may each be a command (an argv list, never a shell string). Each gets its
secret on stdin, its parameters in ``ROTATOR_*`` variables, and an environment
without the engine's own (only ``PATH``, ``HOME``, locale and time zone pass).
What it prints reaches an event only as its last line, with the given secrets
and anything key-like removed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import AgentError
from engine.protocol import redact

_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class Finished:
    status: int
    stdout: str
    said: str
    """The last non-empty line of stderr (else stdout), secrets removed."""


def hide(text: str, secrets_: Sequence[str | None]) -> str:
    """``text`` without the exact values of ``secrets_``, then without anything key-like."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "[token]")
    return redact(text)


def run(
    what: str,
    argv: Sequence[str],
    *,
    stdin: str = "",
    env: dict[str, str] | None = None,
    secrets_: Sequence[str | None] = (),
    timeout_s: float = 60.0,
) -> Finished:
    """Run ``argv``; raise ``AgentError`` only when it cannot be run or does not finish."""
    base = {k: v for k, v in os.environ.items() if k in _PASSED}
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin.encode(),
            capture_output=True,
            timeout=timeout_s,
            env={**base, **(env or {})},
            check=False,
        )
    except FileNotFoundError:
        raise AgentError(f"{what} failed: command {argv[0]!r} not found") from None
    except PermissionError:
        raise AgentError(f"{what} failed: command {argv[0]!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise AgentError(f"{what} did not finish within {timeout_s:g} s") from None
    out = proc.stdout.decode(errors="replace")
    lines = [x.strip() for x in proc.stderr.decode(errors="replace").splitlines() if x.strip()]
    lines = lines or [x.strip() for x in out.splitlines() if x.strip()]
    said = hide(lines[-1], secrets_)[:200] if lines else ""
    return Finished(proc.returncode, out, said)
