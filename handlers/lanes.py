"""The queues work waits in after an acknowledgement (``HandlerDeps.defer``)."""

from __future__ import annotations

import enum
from collections.abc import Callable


class Lane(enum.Enum):
    """Which queue a piece of work after an acknowledgement waits in.

    The lanes never wait for one another, so however many plans are queued,
    a click or a modal is not behind them.
    """

    PLAN = "plan"  # asks the engine for a plan: seconds, and many may queue
    CLICK = "click"  # a person's decision: a store update and a message or two
    MODAL = "modal"  # opens a modal: Slack's trigger id lives 3 s


def run_now(work: Callable[[], None], lane: Lane = Lane.CLICK) -> None:
    work()
