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


def _bot_env(tmp_path: Path, fake_slack, slack_secrets) -> dict[str, str]:  # type: ignore[no-untyped-def]
    import os

    from tests.bot.conftest import AUDIT_KEY, write_config

    config = write_config(tmp_path / "rotator.toml", store_url="sqlite://rotator.db")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROTATOR_"))},
        "SLACK_BOT_TOKEN": slack_secrets.bot_token,
        "SLACK_SIGNING_SECRET": slack_secrets.signing_secret,
        "SLACK_API_URL": fake_slack.url,
        "ROTATOR_CONFIG": str(config),
        "ROTATOR_AUDIT_KEY": AUDIT_KEY.hex(),
    }


def test_python_m_bot_metrics_serves_them_beside_slack_and_logs_json(tmp_path, fake_slack, slack_secrets) -> None:
    """``python -m bot --http --metrics --log-format json`` as the unit would start it."""
    import json
    import signal
    import subprocess
    import sys

    from tests.support.panel import free_port

    port = free_port()
    env = _bot_env(tmp_path, fake_slack, slack_secrets)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--http", "--port", str(port), "--metrics", "--log-format", "json",
         "--metrics-check-minutes", "0.01"],
        cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while ("myosicam_panel_up", (("panel", "prod-eu"),)) not in metrics:  # the first check is in
            assert proc.poll() is None and time.monotonic() < deadline, "no panel check exposed"
            try:
                metrics = scrape(f"http://127.0.0.1:{port}")
            except OSError:
                time.sleep(0.1)
        assert metrics[("myosicam_requests", (("state", "pending"),))] == 0
        assert metrics[("myosicam_panel_up", (("panel", "prod-eu"),))] == 0  # no engine behind prod-eu here
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any("serving Slack on" in line["message"] for line in lines)
    assert slack_secrets.bot_token not in stderr


def test_metrics_in_socket_mode_need_a_port(tmp_path, fake_slack, slack_secrets) -> None:
    from tests.support.procs import run_bot

    env = {**_bot_env(tmp_path, fake_slack, slack_secrets), "SLACK_APP_TOKEN": "xapp-1-test"}
    result = run_bot(env, "--metrics")
    assert result.returncode == 2
    assert "--metrics in Socket Mode needs --port P" in result.stderr
