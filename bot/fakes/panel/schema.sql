-- The reference panel's schema: the six encrypted columns and the agent tables.
-- One statement per table; tests/support/mariadb.py can leave tables out.

CREATE TABLE oscam_installs (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100),
    webif_password TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE saved_servers (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100),
    host VARCHAR(255),
    port INT,
    ssh_user VARCHAR(64),
    ssh_credential_encrypted TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE email_settings (
    id INT AUTO_INCREMENT PRIMARY KEY,
    smtp_password TEXT NULL,
    mailgun_api_key TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE email_configurations (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100),
    smtp_password TEXT NULL,
    mailgun_api_key TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE agents (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(100) UNIQUE,
    agent_token VARCHAR(128) NULL,
    server_id INT NULL,
    last_seen DATETIME(6) NULL,
    registered_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE agent_install_tokens (
    id INT AUTO_INCREMENT PRIMARY KEY,
    agent_id INT,
    token_sha256 CHAR(64) UNIQUE,
    expires_at DATETIME(6),
    used_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
