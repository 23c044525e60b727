"""``python -m bot``: serve Slack, or read the audit log.

    python -m bot                         Socket Mode (needs SLACK_APP_TOKEN)
    python -m bot --http [--port 3000]    HTTP mode: POST /slack/events, GET /healthz
    python -m bot audit keygen FILE       a new audit key (set ROTATOR_AUDIT_KEY_FILE=FILE)
    python -m bot audit export [--since 2026-11-26T00:00:00] [--output FILE]
    python -m bot audit export --incident ID --format markdown [--output FILE]
    python -m bot audit verify [--file EXPORT.jsonl] [--anchor SEQ:DIGEST ...] [--slack]
    python -m bot people list-offboarded | restore USER_ID --reason WHY
    python -m bot demo | doctor           (when bot.demo / bot.doctor are installed)

    python -m bot serve [--http ...]      serve Slack, never the demo (the systemd unit's form)
    python -m bot serve --port 3000       Socket Mode, with GET /healthz on that port

With no settings at all (none of SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET,
SLACK_APP_TOKEN, ROTATOR_CONFIG in the environment, not even empty), plain
``python -m bot`` plays the demo instead of serving Slack, except under systemd,
where an empty EnvironmentFile is an error. Any of them set: the others that are
missing are named and start-up stops.

Settings come from the environment and ``ROTATOR_CONFIG`` (see
``bot.settings``). A bad setting stops start-up with a message that names it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from bot.errors import BotError

log = logging.getLogger("bot")

# any of these in the environment (even empty) means "serve Slack", never the demo
SETTINGS_VARIABLES = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "ROTATOR_CONFIG",
    "ROTATOR_AUDIT_KEY_FILE",
    "ROTATOR_AUDIT_KEY",
)

_TOKEN_PATTERN = re.compile(r"\b(xox[abeoprs]|xapp)-[A-Za-z0-9-]{8,}")


class RedactingFilter(logging.Filter):
    """A last line of defence: known secret values and Slack token shapes never reach a log."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return _TOKEN_PATTERN.sub(r"\1-[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(secrets: Sequence[str], level: int = logging.INFO, json_lines: bool = False) -> None:
    """Logs to stderr with every secret redacted; ``json_lines``: one JSON object per line."""
    from bot.activity import JsonLinesFormatter

    handler = logging.StreamHandler(sys.stderr)
    redactor = RedactingFilter(secrets)
    if json_lines:
        handler.setFormatter(JsonLinesFormatter(redactor.clean))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def bare_run(environ: Mapping[str, str]) -> str:
    """What a bare ``python -m bot`` does with ``environ``: ``serve``, ``demo`` or ``refuse``."""
    if any(name in environ for name in SETTINGS_VARIABLES):
        return "serve"
    return "refuse" if environ.get("INVOCATION_ID") else "demo"  # systemd never plays the demo


_BARE_RUN_NOW = {
    "serve": "serve Slack: settings are in the environment",
    "demo": "play the local demo: none of those settings is in the environment",
    "refuse": "stop with an error: no settings in the environment, under systemd",
}


def _description(environ: Mapping[str, str]) -> str:
    paragraphs = [
        "MyOsicam Rotator Slack bot.",
        "A bare `python -m bot` (no command, no option) serves Slack in Socket Mode (needs "
        "SLACK_APP_TOKEN) with the settings from the environment and ROTATOR_CONFIG; with "
        "--http it serves Slack's HTTP mode. When none of these settings is in the environment, "
        f"not even empty ({', '.join(SETTINGS_VARIABLES)}), it plays the local demo instead, "
        "except under systemd, where it stops with an error. `python -m bot serve [options]` "
        "always serves, never the demo.",
        f"Here and now, a bare `python -m bot` would {_BARE_RUN_NOW[bare_run(environ)]}.",
    ]
    return "\n\n".join(textwrap.fill(p, 79) for p in paragraphs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=_description(os.environ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="serve [--http] [--port P]: serve Slack, never the demo (the systemd unit's form)",
    )
    parser.add_argument(
        "--http", action="store_true", help="serve Slack's HTTP mode instead of Socket Mode"
    )
    parser.add_argument(
        "--port", type=int, default=None,
        help="HTTP port (default from settings, 3000); in Socket Mode: serve /healthz on it",
    )
    parser.add_argument("--address", default=None, help="HTTP bind address (default from settings)")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    parser.add_argument(
        "--metrics", action="store_true",
        help="serve Prometheus metrics at /metrics (HTTP mode: beside /slack/events; Socket Mode: on --port)",
    )
    parser.add_argument(
        "--metrics-check-minutes", type=float, default=5.0,
        help="with --metrics: how often to ask each panel's engine for its status (default 5)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("ROTATOR_LOG_FORMAT", "text"),
        help="log lines as text, or one JSON object per line (default: $ROTATOR_LOG_FORMAT or text)",
    )
    sub = parser.add_subparsers(dest="command")
    from bot import audit_cli, people_cli

    audit_cli.add_parser(sub)
    people_cli.add_parser(sub)
    sub.add_parser("demo", help="a local rehearsal (bot.demo)", add_help=False)
    sub.add_parser("doctor", help="check the installation (bot.doctor)", add_help=False)
    return parser


def _audit(args: argparse.Namespace) -> int:
    from bot import audit_cli

    return audit_cli.run(args)


def _delegate(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(f"bot.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bot.{name}":
            raise
        print(
            f"`python -m bot {name}` is not available in this build (no bot/{name}.py).",
            file=sys.stderr,
        )
        return 2
    result: Any = module.main(argv)
    return int(result or 0)


def _open_store(settings: Any, audit_key: Any) -> Any:
    """The store; when the default one (beside ROTATOR_CONFIG) cannot be made, say where to put it."""
    from bot.errors import StoreError
    from bot.settings import DEFAULT_STORE
    from bot.store import open_store

    try:
        return open_store(settings.store_url, audit_key=audit_key)
    except StoreError as exc:
        if settings.config.store.get_secret_value() != DEFAULT_STORE:
            raise
        raise BotError(
            f"{exc.message}. That is the default store, beside ROTATOR_CONFIG: set `store` in "
            'it to a writable place (in the container: store = "sqlite:////data/rotator.db", '
            "on the /data volume)"
        ) from exc


def _serve(args: argparse.Namespace) -> int:
    from bot.app import build_rotator, default_engine_clients
    from bot.audit_key import load_audit_key
    from bot.enrollment_key import load_enrollment_key
    from bot.settings import load_settings

    settings = load_settings()
    audit_key = load_audit_key()  # the audit log is signed with a key kept outside the store
    # step_up = "totp": approvers' TOTP secrets are sealed with a key kept outside the store too
    enrollment_key = load_enrollment_key() if settings.step_up_anywhere else None
    configure_logging(
        [*settings.secrets(), audit_key.hex(), *([enrollment_key.hex()] if enrollment_key else [])],
        logging.DEBUG if args.debug else logging.INFO,
        json_lines=args.log_format == "json",
    )
    if not args.http and not settings.app_token:
        raise BotError(
            "SLACK_APP_TOKEN is not set: set it for Socket Mode, or run `python -m bot --http`"
        )
    if args.metrics and not args.http and not args.port:
        raise BotError("--metrics in Socket Mode needs --port P: /metrics is served on that port")
    store = _open_store(settings, audit_key)
    rotator = build_rotator(
        settings, store, default_engine_clients(settings), enrollment_key=enrollment_key
    )
    rotator.start()
    metrics, checks = _metrics(args, rotator)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.http:
            from bot.wsgi import HttpServer

            address = args.address or settings.config.http_address
            port = args.port or settings.config.http_port
            server = HttpServer(
                rotator.app,
                rotator.healthy,
                address,
                port,
                rotator.gate.acknowledging,
                limits=settings.http_limits,
                metrics=metrics,
            ).start()
            log.info(
                "serving Slack on %s/slack/events (store %s)",
                server.url,
                settings.store_url_redacted,
            )
            try:
                stop.wait()
            finally:
                server.stop()
        else:
            from bot import socket_mode

            assert settings.app_token is not None
            handler = socket_mode.connect(
                rotator.app, settings.app_token, rotator.gate.acknowledging
            )
            log.info("serving Slack in Socket Mode (store %s)", settings.store_url_redacted)
            health = None
            if args.port:  # /healthz for a container or a load balancer; Slack does not post here
                from bot.wsgi import HttpServer

                health = HttpServer(
                    rotator.app,
                    lambda: rotator.healthy() and handler.client.is_connected(),
                    args.address or settings.config.http_address,
                    args.port,
                    rotator.gate.acknowledging,
                    limits=settings.http_limits,
                    metrics=metrics,
                ).start()
                log.info("health check on %s/healthz", health.url)
            try:
                stop.wait()
            finally:
                if health is not None:
                    health.stop()
                handler.close()  # type: ignore[no-untyped-call]
    except KeyboardInterrupt:
        pass
    finally:
        if checks is not None:
            checks.stop()
        rotator.close(wait=False)
        store.close()
    return 0


def _metrics(args: argparse.Namespace, rotator: Any) -> tuple[Any, Any]:
    """With ``--metrics``: the ``/metrics`` app and the thread that checks the panels."""
    if not args.metrics:
        return None, None
    from bot.metrics import PanelChecks, RotatorCollector, metrics_app

    room = rotator.home
    checks = PanelChecks(
        room.engine_clients, room.panels, check_every_s=max(args.metrics_check_minutes, 0.1) * 60
    ).start()
    return metrics_app(RotatorCollector(rotator.store, checks, room.max_age_s)), checks


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and bare_run(os.environ) != "serve":
        if bare_run(os.environ) == "refuse":  # systemd: a service must not play a demo
            print(
                "error: no Slack settings in the environment (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, "
                "ROTATOR_CONFIG): is the unit's EnvironmentFile empty or missing?",
                file=sys.stderr,
            )
            return 2
        print("No Slack settings (SLACK_BOT_TOKEN, ROTATOR_CONFIG): playing the local demo instead.")
        return _delegate("demo", [])
    if argv and argv[0] == "serve":
        argv = argv[1:]
        if argv[:1] and not argv[0].startswith("-"):
            print(f"error: `serve` takes options only, not {argv[0]!r}", file=sys.stderr)
            return 2
    if argv and argv[0] in ("demo", "doctor"):
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "audit":
            return _audit(args)
        if args.command == "people":
            from bot import people_cli

            return people_cli.run(args)
        return _serve(args)
    except BotError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
