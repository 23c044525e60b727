"""Prometheus metrics from the bot, scraped over HTTP as Prometheus does (issue 22, item 3)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bot.local_client import LocalEngineClient
from bot.metrics import PanelChecks, RotatorCollector, metrics_app
from bot.wsgi import HttpServer
from tests.bot.conftest import BOB, MakeBot
from tests.engine.runner import crash_at
from tests.support.secrets_scan import SecretRegistry

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_rotations_durations_pending_and_each_panels_health_are_exposed(
    make_bot: MakeBot, panel_factory: Callable[..., object], secret_registry: SecretRegistry, tmp_path: Path
) -> None:
    sandbox = panel_factory(rows=3)
    broken = tmp_path / "gone.toml"  # prod-us: its engine cannot answer (no profile)
    bot = make_bot(
        engine_clients={"prod-eu": LocalEngineClient(sandbox.profile_path), "prod-us": LocalEngineClient(broken)},
        panels=("prod-eu", "prod-us"),
        profiles={"prod-eu": sandbox.profile_path, "prod-us": broken},
        extra={"max_key_age_days": 90},
    )
    request_id, ts = bot.request_key()
    bot.approve(request_id, ts, BOB)
    bot.fake.wait_text("chat.postMessage", ":white_check_mark: Done", timeout=120)
    secret_registry.register_key(sandbox.env_key(), "rotated key")
    bot.request_key()  # left pending
    room = bot.rotator.home
    checks = PanelChecks(room.engine_clients, room.panels)
    checks.check_all()
    server = HttpServer(bot.rotator.app, bot.rotator.healthy,
                        metrics=metrics_app(RotatorCollector(bot.store, checks, room.max_age_s))).start()
    try:
        metrics = scrape(server.url)
    finally:
        server.stop()

    eu, us = (("panel", "prod-eu"),), (("panel", "prod-us"),)
    assert metrics[("myosicam_rotations_total", (("op", "rotate-key"), ("outcome", "done")))] == 1
    assert metrics[("myosicam_rotation_duration_seconds_count", (("op", "rotate-key"),))] == 1
    assert metrics[("myosicam_requests", (("state", "pending"),))] == 1
    assert metrics[("myosicam_requests", (("state", "running"),))] == 0
    assert (metrics[("myosicam_panel_up", eu)], metrics[("myosicam_panel_up", us)]) == (1, 0)
    assert 0 <= metrics[("myosicam_panel_key_age_seconds", eu)] < 600
    assert metrics[("myosicam_panel_key_max_age_seconds", eu)] == 90 * 86400
    assert abs(metrics[("myosicam_panel_last_successful_rotation_timestamp_seconds", eu)] - time.time()) < 600
    assert metrics[("myosicam_panel_unfinished_runs", eu)] == 0
    assert ("myosicam_panel_key_age_seconds", us) not in metrics
    assert not secret_registry.scan(str(metrics))
    exposed = {name for name, _ in metrics}
    referenced = set(re.findall(r"myosicam_[a-z_]+", ALERTS.read_text()))
    assert referenced and referenced <= exposed, referenced - exposed  # the example alerts use real names


def test_an_interrupted_rotation_shows_as_an_unfinished_run(panel_factory: Callable[..., object]) -> None:
    sandbox = panel_factory(rows=3)
    assert crash_at(sandbox.profile_path, "state:REENCRYPTED", "rotate-key", "--yes", "--json").returncode == -9
    checks = PanelChecks(lambda panel: LocalEngineClient(sandbox.profile_path), ["prod-eu"])
    checks.check_all()
    collector = RotatorCollector(_EmptyStore(), checks, lambda panel: 86400.0)

    unfinished = {s.labels["panel"]: s.value for f in collector.collect() for s in f.samples
                  if s.name == "myosicam_panel_unfinished_runs"}

    assert unfinished == {"prod-eu": 1}


class _EmptyStore:
    """A store with no requests (the panel checks are what this test is about)."""

    class _Tx:
        def all(self, sql: str) -> list[tuple[str, str]]:
            return []

    def transaction(self):  # type: ignore[no-untyped-def]
        import contextlib

        return contextlib.nullcontext(self._Tx())


def test_the_documented_json_log_line_is_what_the_formatter_writes() -> None:
    """docs/operations.md shows a ``--log-format json`` line; it parses and has the formatter's fields."""
    import json

    from bot.__main__ import _parser

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    sample = next(line for line in guide.splitlines() if line.startswith('{"ts": '))
    fields = json.loads(sample)
    assert ["ts", "level", "logger", "message"] == list(fields)[:4]
    assert _parser().parse_args(["--log-format", "json", "--metrics"]).log_format == "json"
