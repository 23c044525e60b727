"""The reference panel: the smallest PHP panel that behaves like MyOsicam where rotation is concerned.

Files (package data, shipped with the product):

* ``php/panel/index.php``: the panel (``/health``, ``/credentials``, agent
  registration); its workers load ``config/.env`` when they start, as
  php-fpm's do, so a new key only counts after a restart;
* ``php/crypto.php``: the panel's AES-256-GCM, done as a PHP panel does it;
* ``schema.sql``: its tables (``database`` creates them);
* ``ctl.py``: starts, stops and restarts one panel (``php -S``, or php-fpm
  behind nginx); standalone, because a profile hands it to the engine as
  ``restart_command``.

``server.PanelServer`` drives one running panel; ``files`` writes its ``.env``
and the engine's profile.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUTER = HERE / "php" / "panel" / "index.php"
CRYPTO_PHP = HERE / "php" / "crypto.php"
CTL = HERE / "ctl.py"

#: The encrypted columns, as (table, column): what PANEL_ENCRYPTION_KEY protects.
PANEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("oscam_installs", "webif_password"),
    ("saved_servers", "ssh_credential_encrypted"),
    ("email_settings", "smtp_password"),
    ("email_settings", "mailgun_api_key"),
    ("email_configurations", "smtp_password"),
    ("email_configurations", "mailgun_api_key"),
)
