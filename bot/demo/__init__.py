"""``python -m bot demo``: a local rehearsal of a key rotation; no Slack, no panel host needed.

    python -m bot demo [--scenario rotate|deny|rollback] [--reason TEXT]

It sets up a sandbox panel (a fresh MariaDB database ``myosicam_demo_*`` on
127.0.0.1:3306, the PHP reference panel on a loopback port, ``config/.env``
with a random key, 50 credentials the panel encrypted), starts the real bot
over HTTP with Slack's Web API played locally, and plays it: @alice asks
``/rotate-key demo <reason>``, her own Approve is refused, @bob approves, the
engine rotates. It prints the card and the thread as Slack would show them,
then the panel's ``/health`` before and after, and cleans everything up, on
Ctrl-C too. No secret is printed: keys appear as fingerprints.

``--scenario deny``: @bob denies with a reason instead; nothing runs and the
card says who denied and why. ``--scenario rollback``: the panel's own check
fails after the switch, and the engine rolls back by itself; the thread says so
and the panel still decrypts every credential under its old key.

Exit status: 0 the scenario ended as it promises (verified), 1 not verified, 2 the demo cannot run here (it says
what is missing), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from bot.demo.play import SCENARIOS, Cleanup, Narrator, play, signals_handled
from bot.errors import DemoUnavailableError

DEFAULT_REASON = "rehearsal: suspected .env disclosure, DEMO-1"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the demo as Ctrl-C does: through the clean-up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot demo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reason", default=DEFAULT_REASON, help="the reason @alice gives")
    parser.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="rotate",
        help="; ".join(f"{name}: {what}" for name, what in SCENARIOS.items()),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    narrator = Narrator(sys.stdout)
    cleanup = Cleanup(narrator)
    status = 2
    with signals_handled(_interrupt, signal.SIGTERM):
        try:
            status = 0 if play(args.reason, narrator, cleanup, args.scenario) else 1
        except DemoUnavailableError as exc:
            print(f"error: the demo cannot run here: {exc.message}", file=sys.stderr)
        except KeyboardInterrupt:
            narrator.say("\nInterrupted.")
            status = 130
        except TimeoutError as exc:
            narrator.say(f"\n✖ {exc}")
            status = 1
        finally:
            if not cleanup.run():
                status = status or 1
    return status
