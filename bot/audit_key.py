"""The audit log's HMAC key: kept outside the store, so whoever can write the store can't re-sign it.

The key is 32 random bytes, written as 64 hex characters in a key file
(``ROTATOR_AUDIT_KEY_FILE``, made by ``python -m bot audit keygen FILE``, mode
0600) or given directly in ``ROTATOR_AUDIT_KEY`` (for secret stores that
inject environment variables). Nothing shows the key: only its fingerprint
(the first 16 hex of SHA-256 of a label and the key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from bot.errors import SettingsError
from bot.secret_files import refuse_if_others_can_read

KEY_FILE_ENV = "ROTATOR_AUDIT_KEY_FILE"
KEY_ENV = "ROTATOR_AUDIT_KEY"
KEY_BYTES = 32


class AuditKey:
    """An HMAC-SHA256 key; its bytes never appear in ``repr``, ``str`` or an error."""

    __slots__ = ("_key", "fingerprint")

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise SettingsError(f"the audit key must be at least {KEY_BYTES} bytes")
        self._key = key
        self.fingerprint = hashlib.sha256(b"rotator-audit-key:" + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> AuditKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str, where: str) -> AuditKey:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise SettingsError(
                f"{where}: the audit key must be {KEY_BYTES * 2} hex characters"
            ) from None
        if len(key) < KEY_BYTES:
            raise SettingsError(f"{where}: the audit key must be {KEY_BYTES * 2} hex characters")
        return cls(key)

    def mac(self, material: bytes) -> str:
        return hmac.new(self._key, material, hashlib.sha256).hexdigest()

    def hex(self) -> str:
        """The key itself, for writing a key file; never log or print it."""
        return self._key.hex()

    def __repr__(self) -> str:
        return f"AuditKey(fingerprint={self.fingerprint})"

    __str__ = __repr__


def write_key_file(path: Path, key: AuditKey) -> None:
    """Create ``path`` (mode 0600, refusing to overwrite) holding ``key`` as hex."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SettingsError(f"{path} exists already; the audit key is never overwritten") from None
    except OSError as exc:
        raise SettingsError(f"cannot create {path} ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex() + "\n")


def read_key_hex(env: Mapping[str, str], file_env: str, value_env: str) -> tuple[str, str] | None:
    """The hex text of a key kept outside the store, and where it came from, or None if unset.

    From the file named by ``file_env``, else from ``value_env`` itself (the audit key and
    the enrollment key are both given this way).
    """
    path = env.get(file_env)
    if path:
        refuse_if_others_can_read(Path(path), file_env, "a key")
        try:
            text = Path(path).read_text(encoding="ascii")
        except FileNotFoundError:
            raise SettingsError(f"{file_env}: file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a key file"
            raise SettingsError(f"{file_env}: cannot read {path} ({reason})") from None
        return text, f"{file_env} ({path})"
    value = env.get(value_env)
    return (value, value_env) if value else None


def load_audit_key(environ: Mapping[str, str] | None = None) -> AuditKey:
    """The key from ``ROTATOR_AUDIT_KEY_FILE`` or ``ROTATOR_AUDIT_KEY``; a clear error if neither."""
    found = read_key_hex(os.environ if environ is None else environ, KEY_FILE_ENV, KEY_ENV)
    if found:
        return AuditKey.from_hex(*found)
    raise SettingsError(
        f"{KEY_FILE_ENV} is not set: the audit log is signed with a key kept outside the "
        f"store. Create one with `python -m bot audit keygen /etc/myosicam-rotator-bot/audit.key` "
        f"and set {KEY_FILE_ENV} to its path"
    )
