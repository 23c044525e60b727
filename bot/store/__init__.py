"""The bot's durable state, one module per job.

    bot.store.sql          Tx: one open transaction, SQL written with ``?`` for both dialects
    bot.store.schema       the tables, per dialect
    bot.store.backends     connections: ``sqlite`` (default, one process), ``mysql`` (replicas)
    bot.store.database     a backend + a clock: transactions, and StoreError translation
    bot.store.requests     rotation requests: compare-and-swap updates, transitions
    bot.store.deliveries   Slack deliveries seen (durable retry dedupe)
    bot.store.reminders    key-age reminders sent (not repeated within their interval)
    bot.store.home_viewers who opened the App Home tab (refreshed after each run, any replica)
    bot.store.fleets       fleet runs (a row per panel)
    bot.store.offboarded   the people offboarded: marked, asked, listed, restored
    bot.store.enrollments  approvers' TOTP enrollments (sealed secrets), used steps, failures
    bot.store.audit_chain  the audit log's hash chain as stored (verify/export: ``bot.audit``)

``Store`` puts the rooms together behind one object; ``open_store(url)`` picks
the backend from the URL and creates the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bot.audit_key import AuditKey
from bot.errors import StoreError
from bot.store.audit_chain import AuditRows
from bot.store.backends import Backend
from bot.store.deliveries import DELIVERY_TTL_S, DeliveryRows
from bot.store.enrollments import EnrollmentRows
from bot.store.fleets import FleetRows
from bot.store.home_viewers import HomeViewerRows
from bot.store.offboarded import OffboardedRows
from bot.store.reminders import ReminderRows
from bot.store.requests import RequestRows
from bot.store.sql import Tx

__all__ = ["DELIVERY_TTL_S", "Store", "Tx", "open_backend", "open_store"]


class Store(
    RequestRows, DeliveryRows, AuditRows, ReminderRows, EnrollmentRows, HomeViewerRows, FleetRows,
    OffboardedRows,
):
    """The bot's state: requests, their transitions, Slack deliveries seen, the audit log,
    reminders sent, TOTP enrollments, Home tab viewers, fleet runs, offboarded people."""


def open_store(
    url: str, clock: Callable[[], float] = time.time, *, audit_key: AuditKey | None = None
) -> Store:
    """``sqlite:///abs/path.db``, ``sqlite://relative.db`` or ``mysql://user:pw@host:port/db``.

    ``audit_key`` (``bot.audit_key``) signs the audit log; a store opened without
    it reads everything but refuses to append (so it cannot write a request).
    """
    return Store(open_backend(url), clock, audit_key).migrate()


def open_backend(url: str) -> Backend:
    """The backend for a store URL, not yet migrated (``open_store`` migrates)."""
    backend: Backend
    if url.startswith("sqlite://"):
        from bot.store.backends.sqlite import SQLiteBackend

        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = "/" + path.lstrip("/")
        backend = SQLiteBackend(Path(path))
    elif url.startswith(("mysql://", "mysql+pymysql://")):
        from bot.store.backends.mysql import MySQLBackend

        backend = MySQLBackend(url)
    else:
        raise StoreError("the store URL must start with sqlite:// or mysql://")
    return backend
