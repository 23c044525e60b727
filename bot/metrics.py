"""Prometheus metrics of the bot (issue 22, item 3), with ``prometheus-client``.

What is exposed, all computed when scraped (so every replica reports the same numbers and a
restart loses nothing):

* from the store: ``myosicam_rotations_total{op,outcome}`` (requests that reached a final
  state: done, failed, denied, cancelled, expired, voided), ``myosicam_rotation_duration_seconds``
  (a histogram of the runs' durations, by op), ``myosicam_requests{state}`` (pending, approved,
  running now);
* from each panel's engine (``status``, read-only, asked by ``PanelChecks`` every
  ``check_every_s``, never at scrape time): ``myosicam_panel_up`` (1 if the last check
  answered), ``myosicam_panel_key_age_seconds``, ``myosicam_panel_key_max_age_seconds``
  (``max_key_age_days``), ``myosicam_panel_last_successful_rotation_timestamp_seconds``,
  ``myosicam_panel_unfinished_runs`` and ``myosicam_panel_last_check_timestamp_seconds``.

``metrics_app`` is ``make_wsgi_app`` over a registry of its own, mounted at ``/metrics``
beside the Bolt app (bot.wsgi). Example alert rules: deploy/prometheus-alerts.yml.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bot.engine_client import EngineClient
from bot.errors import BotError
from engine.protocol import PROTOCOL_VERSION, Request
from handlers.rotation_request import ACTIVE_STATES, FINAL_STATES

log = logging.getLogger(__name__)

#: seconds; a key rotation takes seconds, a fleet or agent run minutes
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class PanelCheck:
    """What one ``status`` of a panel said, and when."""

    panel: str
    at: float
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def key_rotated_at(self) -> float | None:
        value = ((self.result or {}).get("secret_ages") or {}).get("key_rotated_at")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def last_success(self) -> float | None:
        """The newest successful rotation the host's run record lists (else the key's age)."""
        runs = [r for r in (self.result or {}).get("runs") or () if isinstance(r, dict)]
        done = [
            float(r["ts"]) / 1000 for r in runs
            if r.get("ok") is True and str(r.get("op", "")).startswith("rotate-")
            and isinstance(r.get("ts"), int | float)
        ]
        return max(done) if done else self.key_rotated_at

    @property
    def unfinished(self) -> int:
        result = self.result or {}
        agents = result.get("unfinished_agents")
        return (
            (result.get("unfinished") is not None)
            + (result.get("unfinished_db_password") is not None)
            + (len(agents) if isinstance(agents, list) else 0)
        )


class PanelChecks:
    """Asks each panel's engine for ``status`` every ``check_every_s`` in a thread of its own."""

    def __init__(
        self,
        engine_clients: Callable[[str], EngineClient],
        panels: Sequence[str],
        *,
        check_every_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine_clients = engine_clients
        self.panels = list(panels)
        self.check_every_s = check_every_s
        self.clock = clock
        self._latest: dict[str, PanelCheck] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> list[PanelCheck]:
        with self._lock:
            return [self._latest[p] for p in self.panels if p in self._latest]

    def check_all(self) -> None:
        for panel in self.panels:
            check = self.check(panel)
            with self._lock:
                self._latest[panel] = check

    def check(self, panel: str) -> PanelCheck:
        request = Request(v=PROTOCOL_VERSION, id=f"metrics-{secrets.token_hex(4)}", op="status")
        try:
            for event in self.engine_clients(panel).run(request):
                if event.get("type") == "result":
                    return PanelCheck(panel, self.clock(), result=event)
        except BotError as exc:
            return PanelCheck(panel, self.clock(), error=exc.message)
        return PanelCheck(panel, self.clock(), error="the engine ended without an answer")

    def start(self) -> PanelChecks:
        self._thread = threading.Thread(target=self._loop, name="metrics-panel-checks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_all()
            except Exception:  # a check must never end the thread
                log.exception("metrics: checking the panels failed")
            self._stop.wait(self.check_every_s)


class RotatorCollector(Collector):
    def __init__(
        self,
        store: Any,
        checks: PanelChecks | None,
        max_age_s: Callable[[str], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.checks = checks
        self.max_age_s = max_age_s
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._requests()
        if self.checks is not None:
            yield from self._panels(self.checks.latest())

    def _rows(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        with self.store.transaction() as tx:
            rows = tx.all("SELECT state, body FROM rotation_requests")
        for state, body in rows:
            try:
                data = json.loads(body)
            except ValueError:
                continue
            yield str(state), str(data.get("op") or "?"), data

    def _requests(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], int] = {}
        active: dict[str, int] = {state.value: 0 for state in ACTIVE_STATES}
        durations: dict[str, list[float]] = {}
        final = {state.value for state in FINAL_STATES}
        for state, op, data in self._rows():
            if state in final:
                totals[(op, state)] = totals.get((op, state), 0) + 1
                ms = (data.get("outcome") or {}).get("duration_ms")
                if state in ("done", "failed") and isinstance(ms, int | float):
                    durations.setdefault(op, []).append(float(ms) / 1000)
            elif state in active:
                active[state] += 1
        rotations = CounterMetricFamily(
            "myosicam_rotations", "Requests that reached a final state, by operation and outcome",
            labels=["op", "outcome"],
        )
        for (op, outcome), n in sorted(totals.items()):
            rotations.add_metric([op, outcome], n)
        yield rotations
        histogram = HistogramMetricFamily(
            "myosicam_rotation_duration_seconds", "How long finished runs took, by operation", labels=["op"]
        )
        for op, seconds in sorted(durations.items()):
            buckets = [(str(le), sum(1 for s in seconds if s <= le)) for le in DURATION_BUCKETS]
            buckets.append(("+Inf", len(seconds)))
            histogram.add_metric([op], buckets, sum(seconds))
        yield histogram
        requests = GaugeMetricFamily("myosicam_requests", "Requests not yet final, by state", labels=["state"])
        for state, n in sorted(active.items()):
            requests.add_metric([state], n)
        yield requests

    def _panels(self, checks: list[PanelCheck]) -> Iterator[Metric]:
        now = self.clock()
        families = {
            "up": GaugeMetricFamily("myosicam_panel_up", "1 if the panel's engine answered its last check",
                                    labels=["panel"]),
            "checked": GaugeMetricFamily("myosicam_panel_last_check_timestamp_seconds",
                                         "When the bot last asked the panel's engine", labels=["panel"]),
            "age": GaugeMetricFamily("myosicam_panel_key_age_seconds",
                                     "Age of the panel's encryption key", labels=["panel"]),
            "max": GaugeMetricFamily("myosicam_panel_key_max_age_seconds",
                                     "max_key_age_days of the panel, in seconds", labels=["panel"]),
            "last": GaugeMetricFamily("myosicam_panel_last_successful_rotation_timestamp_seconds",
                                      "When a rotation last succeeded on the panel", labels=["panel"]),
            "unfinished": GaugeMetricFamily("myosicam_panel_unfinished_runs",
                                            "Rotations the panel's journal holds unfinished", labels=["panel"]),
        }
        for check in checks:
            families["up"].add_metric([check.panel], 0 if check.error else 1)
            families["checked"].add_metric([check.panel], check.at)
            families["max"].add_metric([check.panel], self.max_age_s(check.panel))
            if check.error:
                continue
            if check.key_rotated_at is not None:
                families["age"].add_metric([check.panel], max(0.0, now - check.key_rotated_at))
            if check.last_success is not None:
                families["last"].add_metric([check.panel], check.last_success)
            families["unfinished"].add_metric([check.panel], check.unfinished)
        yield from families.values()


def metrics_app(collector: RotatorCollector) -> Callable[..., Iterable[bytes]]:
    """The ``/metrics`` WSGI app: prometheus-client's own, over a registry holding only ours."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return make_wsgi_app(registry)
