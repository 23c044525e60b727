"""Slack's Web API rate limits, for the fake Web API (``bot.fakes.slack_api``).

Slack limits each method per workspace ("tiers": Tier 2 about 20 calls a minute, Tier 3
about 50, Tier 4 about 100, each allowing short bursts), and ``chat.postMessage`` per
channel (about one message a second, short bursts allowed). A call over the limit gets
HTTP 429 with ``Retry-After`` in whole seconds. Each limit here is a token bucket: it
holds ``burst`` calls and refills at ``per_minute``. ``SLACK_LIMITS`` are Slack's published
figures; tests pass tighter ones to provoke 429s on purpose.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int = 1
    #: ``channel``: one bucket per channel (``chat.postMessage``); else one per workspace
    per: str = "workspace"


@dataclass(frozen=True)
class RateLimits:
    """Limits by method; a method not listed is not limited."""

    methods: Mapping[str, Limit] = field(default_factory=dict)


SLACK_LIMITS = RateLimits(
    {
        "chat.postMessage": Limit(60, burst=4, per="channel"),  # "1 per second per channel"
        "chat.update": Limit(50, burst=5),  # Tier 3
        "chat.postEphemeral": Limit(100, burst=10),  # Tier 4
        "views.publish": Limit(100, burst=10),  # Tier 4
        "views.open": Limit(100, burst=10),  # Tier 4
        "usergroups.users.list": Limit(20, burst=3),  # Tier 2
        "conversations.history": Limit(50, burst=5),  # Tier 3
        "conversations.replies": Limit(50, burst=5),  # Tier 3
        "files.getUploadURLExternal": Limit(20, burst=3),  # Tier 2 (files.* writes)
        "files.completeUploadExternal": Limit(20, burst=3),
    }
)


class Limiter:
    """Token buckets over ``limits``; ``take`` answers 0 (go) or the seconds to wait."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, method: str, params: Mapping[str, Any]) -> int:
        limit = self.limits.methods.get(method)
        if limit is None:
            return 0
        scope = str(params.get("channel") or "") if limit.per == "channel" else ""
        key = (method, scope)
        rate = limit.per_minute / 60.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
