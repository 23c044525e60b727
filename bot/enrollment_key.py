"""The key that encrypts approvers' TOTP secrets in the store; kept outside the store.

Like the audit key (``bot.audit_key``): 32 random bytes as 64 hex characters,
in a file named by ``ROTATOR_ENROLLMENT_KEY_FILE`` (mode 0600; ``python -m bot
audit keygen FILE`` writes one in the same format) or given directly in
``ROTATOR_ENROLLMENT_KEY``. Whoever can read the store's database still cannot
read a TOTP secret, nor move one person's secret onto another: each secret is
sealed with AES-256-GCM, its associated data naming the Slack user it belongs to.
Nothing shows the key; only its fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.audit_key import read_key_hex
from bot.errors import SettingsError, StoreError

KEY_FILE_ENV = "ROTATOR_ENROLLMENT_KEY_FILE"
KEY_ENV = "ROTATOR_ENROLLMENT_KEY"
KEY_BYTES = 32
_NONCE_BYTES = 12


class EnrollmentKey:
    """An AES-256-GCM key; its bytes never appear in ``repr``, ``str`` or an error."""

    __slots__ = ("_aead", "_key", "fingerprint")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SettingsError(f"the enrollment key must be {KEY_BYTES} bytes")
        self._key = key
        self._aead = AESGCM(key)
        self.fingerprint = hashlib.sha256(b"rotator-enrollment-key:" + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> EnrollmentKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str, where: str) -> EnrollmentKey:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise SettingsError(f"{where}: the enrollment key must be {KEY_BYTES * 2} hex characters")
        return cls(key)

    def hex(self) -> str:
        """The key itself (tests register it with the secrets scan); never log or print it."""
        return self._key.hex()

    def seal(self, plaintext: str, owner: str) -> str:
        """``plaintext`` encrypted for ``owner`` (a Slack user id), as hex of nonce || ciphertext."""
        nonce = os.urandom(_NONCE_BYTES)
        return (nonce + self._aead.encrypt(nonce, plaintext.encode(), _aad(owner))).hex()

    def open(self, sealed: str, owner: str) -> str:
        """The plaintext ``seal`` encrypted for ``owner``; ``StoreError`` if it does not open."""
        try:
            raw = bytes.fromhex(sealed)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(owner))
        except (ValueError, InvalidTag):
            raise StoreError(
                f"the TOTP enrollment of {owner} does not open with enrollment key "
                f"{self.fingerprint}: the wrong key is set, or the row was changed; "
                "an admin can reset it with /rotate-enroll reset"
            ) from None
        return plain.decode()

    def __repr__(self) -> str:
        return f"EnrollmentKey(fingerprint={self.fingerprint})"

    __str__ = __repr__


def _aad(owner: str) -> bytes:
    return b"rotator-totp-secret:" + owner.encode()


def load_enrollment_key(environ: Mapping[str, str] | None = None) -> EnrollmentKey:
    """The key from ``ROTATOR_ENROLLMENT_KEY_FILE`` or ``ROTATOR_ENROLLMENT_KEY``; a clear error if neither."""
    found = read_key_hex(os.environ if environ is None else environ, KEY_FILE_ENV, KEY_ENV)
    if found:
        return EnrollmentKey.from_hex(*found)
    raise SettingsError(
        f'step_up = "totp" needs {KEY_FILE_ENV}: approvers\' TOTP secrets are encrypted with a '
        "key kept outside the store. Create one with `python -m bot audit keygen "
        f"/etc/myosicam-rotator-bot/enrollment.key` and set {KEY_FILE_ENV} to its path"
    )
