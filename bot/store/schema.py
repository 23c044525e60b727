"""The tables of migration 1 (``bot.store.migrations``), once per dialect: requests, their
transitions, Slack deliveries, the audit log, key-age reminders, TOTP enrollments, Home viewers.

Every statement is idempotent (``IF NOT EXISTS``, ``INSERT ... IGNORE``): a store created before
migrations were versioned adopts version 1 unchanged. ``ADDED_COLUMNS`` are migration 2's (each
added unless the table has it). A schema change is a new migration appended in
``bot.store.migrations``, not an edit here.
"""

from __future__ import annotations

from bot.store.audit_chain import GENESIS

SQLITE = (
    """CREATE TABLE IF NOT EXISTS rotation_requests (
        id VARCHAR(64) PRIMARY KEY,
        state VARCHAR(16) NOT NULL,
        version INTEGER NOT NULL,
        panel VARCHAR(64) NOT NULL,
        requester VARCHAR(80) NOT NULL,
        created_at DOUBLE NOT NULL,
        expires_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL,
        body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rotation_requests_state ON rotation_requests (state, expires_at)",
    """CREATE TABLE IF NOT EXISTS request_transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id VARCHAR(64) NOT NULL,
        event VARCHAR(64) NOT NULL,
        from_state VARCHAR(16),
        to_state VARCHAR(16) NOT NULL,
        version INTEGER NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS request_transitions_request ON request_transitions (request_id)",
    """CREATE TABLE IF NOT EXISTS slack_deliveries (
        delivery_key VARCHAR(191) PRIMARY KEY,
        seen_at DOUBLE NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        kind VARCHAR(64) NOT NULL,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        data TEXT NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash CHAR(64) NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS totp_enrollments (
        user_id VARCHAR(32) PRIMARY KEY,
        sealed_secret TEXT NOT NULL,
        enrolled_at DOUBLE NOT NULL,
        last_step BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS totp_failures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id VARCHAR(32) NOT NULL,
        at DOUBLE NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS totp_failures_user ON totp_failures (user_id, at)",
    f"INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')",
    """CREATE TABLE IF NOT EXISTS key_reminders (
        panel VARCHAR(64) NOT NULL,
        secret VARCHAR(128) NOT NULL,
        sent_at DOUBLE NOT NULL,
        PRIMARY KEY (panel, secret))""",
    """CREATE TABLE IF NOT EXISTS home_viewers (
        user_id VARCHAR(32) NOT NULL PRIMARY KEY,
        team_id VARCHAR(32) NOT NULL,
        seen_at DOUBLE NOT NULL)""",
)

MYSQL = (
    """CREATE TABLE IF NOT EXISTS rotation_requests (
        id VARCHAR(64) PRIMARY KEY,
        state VARCHAR(16) NOT NULL,
        version INT NOT NULL,
        panel VARCHAR(64) NOT NULL,
        requester VARCHAR(80) NOT NULL,
        created_at DOUBLE NOT NULL,
        expires_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL,
        body MEDIUMTEXT NOT NULL,
        INDEX rotation_requests_state (state, expires_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS request_transitions (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        request_id VARCHAR(64) NOT NULL,
        event VARCHAR(64) NOT NULL,
        from_state VARCHAR(16),
        to_state VARCHAR(16) NOT NULL,
        version INT NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL,
        INDEX request_transitions_request (request_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS slack_deliveries (
        delivery_key VARCHAR(191) PRIMARY KEY,
        seen_at DOUBLE NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        ts_ms BIGINT NOT NULL,
        kind VARCHAR(64) NOT NULL,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        data MEDIUMTEXT NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INT PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash CHAR(64) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS totp_enrollments (
        user_id VARCHAR(32) PRIMARY KEY,
        sealed_secret TEXT NOT NULL,
        enrolled_at DOUBLE NOT NULL,
        last_step BIGINT NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS totp_failures (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        user_id VARCHAR(32) NOT NULL,
        at DOUBLE NOT NULL,
        INDEX totp_failures_user (user_id, at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    f"INSERT IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')",
    """CREATE TABLE IF NOT EXISTS key_reminders (
        panel VARCHAR(64) NOT NULL,
        secret VARCHAR(128) NOT NULL,
        sent_at DOUBLE NOT NULL,
        PRIMARY KEY (panel, secret)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS home_viewers (
        user_id VARCHAR(32) NOT NULL PRIMARY KEY,
        team_id VARCHAR(32) NOT NULL,
        seen_at DOUBLE NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)

#: table -> (column, definition) added after the table first shipped; the default describes the
#: rows that existed before: TOTP enrollments made before confirmation and admin approval existed
#: were in use, so they stay ``active``.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("totp_enrollments", "status", "VARCHAR(24) NOT NULL DEFAULT 'active'"),
    ("totp_enrollments", "pending_until", "DOUBLE NOT NULL DEFAULT 0"),
    ("totp_enrollments", "dm_channel", "VARCHAR(32) NOT NULL DEFAULT ''"),
    ("totp_enrollments", "dm_ts", "VARCHAR(32) NOT NULL DEFAULT ''"),
    ("totp_enrollments", "dm_file", "VARCHAR(32) NOT NULL DEFAULT ''"),
    ("totp_enrollments", "approved_by", "VARCHAR(128) NOT NULL DEFAULT ''"),
)


#: Migration 3's tables: a fleet's runs, one row per panel (``bot.store.fleets``), and the
#: people offboarded (their approvals no longer count).
FLEETS_SQLITE = (
    """CREATE TABLE IF NOT EXISTS fleet_panels (
        fleet_id VARCHAR(64) NOT NULL,
        panel VARCHAR(64) NOT NULL,
        position INTEGER NOT NULL,
        state VARCHAR(16) NOT NULL,
        leg INTEGER NOT NULL,
        run_id VARCHAR(64) NOT NULL,
        last_seq BIGINT NOT NULL,
        step VARCHAR(64) NOT NULL,
        old_fp VARCHAR(32) NOT NULL,
        new_fp VARCHAR(32) NOT NULL,
        vals BIGINT NOT NULL,
        code VARCHAR(64) NOT NULL,
        message TEXT NOT NULL,
        started_at DOUBLE,
        finished_at DOUBLE,
        updated_at DOUBLE NOT NULL,
        PRIMARY KEY (fleet_id, panel))""",
    """CREATE TABLE IF NOT EXISTS offboarded_people (
        user_id VARCHAR(32) NOT NULL PRIMARY KEY,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL)""",
)

FLEETS_MYSQL = (
    """CREATE TABLE IF NOT EXISTS fleet_panels (
        fleet_id VARCHAR(64) NOT NULL,
        panel VARCHAR(64) NOT NULL,
        position INT NOT NULL,
        state VARCHAR(16) NOT NULL,
        leg INT NOT NULL,
        run_id VARCHAR(64) NOT NULL,
        last_seq BIGINT NOT NULL,
        step VARCHAR(64) NOT NULL,
        old_fp VARCHAR(32) NOT NULL,
        new_fp VARCHAR(32) NOT NULL,
        vals BIGINT NOT NULL,
        code VARCHAR(64) NOT NULL,
        message TEXT NOT NULL,
        started_at DOUBLE NULL,
        finished_at DOUBLE NULL,
        updated_at DOUBLE NOT NULL,
        PRIMARY KEY (fleet_id, panel)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS offboarded_people (
        user_id VARCHAR(32) NOT NULL PRIMARY KEY,
        request_id VARCHAR(64) NOT NULL,
        actor VARCHAR(128) NOT NULL,
        at DOUBLE NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)


#: Migration 4: each fleet panel's bound plan (its legs, JSON) in its row, so that a running
#: fleet keeps in memory only the panels being run (``bot.fleet_runner``), not every plan.
FLEET_PLAN_COLUMNS = (("fleet_panels", "plan", "TEXT"),)
