-- A second agent schema for the reference panel, named and shaped the way another panel
-- might have done it ("edge nodes"): other table and column names, other primary keys,
-- UUID node secrets, an enrolment table of its own. php/panel/nodes.php serves it.
-- Tests create these tables next to schema.sql's (tests/agents/world.py, NODES) and drive
-- the engine to it through the profile alone.

CREATE TABLE node_hosts (
    host_id INT AUTO_INCREMENT PRIMARY KEY,
    title VARCHAR(100),
    address VARCHAR(255),
    ssh_port INT,
    login VARCHAR(64),
    login_secret TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE edge_nodes (
    node_id INT AUTO_INCREMENT PRIMARY KEY,
    label VARCHAR(100) UNIQUE,
    api_secret CHAR(36) NULL,
    previous_secret CHAR(36) NULL,
    keep_previous TINYINT NOT NULL DEFAULT 0,
    pool VARCHAR(32) NOT NULL DEFAULT 'main',
    host_ref INT NULL,
    pinged_at DATETIME(6) NULL,
    enrolled_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE node_enrolments (
    enrol_id INT AUTO_INCREMENT PRIMARY KEY,
    node_ref INT NOT NULL,
    secret_digest CHAR(64) UNIQUE,
    valid_until DATETIME(6) NOT NULL,
    consumed_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
