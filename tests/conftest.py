"""Fixtures shared by every test package, and the secret-leak check on every test.

* ``mysql_db``: a fresh database with the panel schema, dropped afterwards.
* ``panel_factory``: ``panel_factory(**build_panel kwargs) -> PanelSandbox``;
  every sandbox is stopped and its database dropped at teardown.
* ``secret_registry``: the session-wide registry of secrets; a test registers
  what it creates (``secret_registry.register_key(new_key, "new key")``).

Any test whose captured output contains a registered secret fails
(tests/support/secrets_scan.py).

A skipped test fails the run unless its reason is allowed (``ALLOWED_SKIPS``, or
``MYOSICAM_ALLOWED_SKIPS``: comma-separated parts of reasons, for a developer's
machine without root). A CI without root or a missing tool would otherwise stay
green with a third of the suite skipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from tests.support.mariadb import TestDatabase, create_database, drop_stale_databases
from tests.support.panel import PanelSandbox, build_panel
from tests.support.secrets_scan import REGISTRY, SecretRegistry, check_report


def pytest_sessionstart(session: pytest.Session) -> None:
    # Databases of crashed earlier sessions; live sessions' databases are kept.
    with contextlib.suppress(pymysql.Error):
        drop_stale_databases()


#: Parts of skip reasons that are expected anywhere (none today: every test runs as root in CI).
ALLOWED_SKIPS: tuple[str, ...] = ()
_SKIPPED: list[tuple[str, str]] = []


def _allowed_skips() -> tuple[str, ...]:
    extra = os.environ.get("MYOSICAM_ALLOWED_SKIPS", "")
    return ALLOWED_SKIPS + tuple(part.strip() for part in extra.split(",") if part.strip())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(part in reason for part in _allowed_skips()):
            _SKIPPED.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SKIPPED:
        terminalreporter.section("unexpected skips (they fail the run)", red=True)
        for nodeid, reason in _SKIPPED:
            terminalreporter.write_line(f"{nodeid}: {reason}")
        terminalreporter.write_line(
            "Run as root with every tool installed (./test.sh), or allow a reason with "
            "MYOSICAM_ALLOWED_SKIPS=part-of-reason"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    check_report(outcome.get_result())


@pytest.fixture(scope="session")
def secret_registry() -> SecretRegistry:
    return REGISTRY


@pytest.fixture
def mysql_db() -> Iterator[TestDatabase]:
    db = create_database()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def panel_factory(
    tmp_path_factory: pytest.TempPathFactory, secret_registry: SecretRegistry
) -> Iterator[Callable[..., PanelSandbox]]:
    made: list[PanelSandbox] = []

    def make(**kwargs: Any) -> PanelSandbox:
        kwargs.setdefault("registry", secret_registry)
        sandbox = build_panel(tmp_path_factory.mktemp("panel"), **kwargs)
        made.append(sandbox)
        return sandbox

    yield make
    errors = []
    for sandbox in reversed(made):
        try:
            sandbox.close()
        except Exception as exc:  # clean up the others, then report
            errors.append(f"{sandbox.root}: {exc}")
    if errors:
        pytest.fail("panel cleanup failed: " + "; ".join(errors))
