"""AES-256-GCM values exactly as the panel stores them.

MyOsicam does not publish its ciphertext layout, so the engine knows the
candidates seen in PHP panels (docs/architecture.md §6) and ``probe`` picks the
one that opens every stored value. A *scheme* is a layout plus a *key reading*:

* ``hex``: the 64 hex characters of ``PANEL_ENCRYPTION_KEY`` decoded to 32 bytes;
* ``ascii32``: what PHP's ``openssl_encrypt`` silently does when handed the
  64-character string: it keeps the first 32 characters, as ASCII bytes.

GCM's tag tells, for every value, whether a key opened it: ``open`` returns
``None`` rather than raising, so callers can classify values (old key, new
key, neither) without exceptions on the hot path.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import BadKeyError

LAYOUTS: dict[str, str] = {
    "iv12_tag_ct": "base64(iv[12]·tag·ciphertext)",
    "iv12_ct_tag": "base64(iv[12]·ciphertext·tag)",
    "iv16_tag_ct": "base64(iv[16]·tag·ciphertext)",
    "json_envelope": "base64(JSON {iv, value, tag})",
}
KEY_READINGS: dict[str, str] = {
    "hex": "key read as hex",
    "ascii32": "key read as its first 32 characters (PHP truncation)",
}
TAG_LEN = 16
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True, order=True)
class Scheme:
    layout: str
    key_reading: str

    @property
    def label(self) -> str:
        return f"{self.layout}/{self.key_reading}"

    @property
    def description(self) -> str:
        return f"{LAYOUTS[self.layout]}, {KEY_READINGS[self.key_reading]}"

    @classmethod
    def parse(cls, text: str) -> Scheme:
        layout, _, reading = text.partition("/")
        reading = reading or "hex"
        if layout not in LAYOUTS or reading not in KEY_READINGS:
            raise ValueError(
                f"unknown ciphertext scheme {text!r}; layouts: {', '.join(LAYOUTS)}; "
                f"key readings: {', '.join(KEY_READINGS)}"
            )
        return cls(layout, reading)


ALL_SCHEMES: tuple[Scheme, ...] = tuple(
    Scheme(layout, reading) for layout in LAYOUTS for reading in KEY_READINGS
)


def validate_key_hex(key_hex: str) -> str:
    """Return the key unchanged if it is 64 hex characters; never echo it."""
    if not _HEX_KEY.match(key_hex):
        raise BadKeyError(
            f"PANEL_ENCRYPTION_KEY must be 64 hex characters (32 bytes); "
            f"the value in .env has {len(key_hex)} characters"
            + ("" if len(key_hex) != 64 else " that are not all hex")
        )
    return key_hex


def key_bytes(key_hex: str, reading: str) -> bytes:
    validate_key_hex(key_hex)
    if reading == "hex":
        return bytes.fromhex(key_hex)
    if reading == "ascii32":
        return key_hex[:32].encode("ascii")
    raise ValueError(f"unknown key reading {reading!r}")


def new_key_hex() -> str:
    """A fresh 256-bit key from the OS CSPRNG, as the panel stores it (lowercase hex)."""
    import secrets

    return secrets.token_hex(32)


class Codec:
    """Open and seal values of one scheme under one key.

    The hot path (a rotation opens and seals every stored value) binds the
    cipher's methods once and draws IVs from a pooled CSPRNG buffer.
    """

    __slots__ = ("_aead", "_ct_tag", "_decrypt", "_encrypt", "_envelope", "_iv_len", "_ivs", "_ivs_at", "scheme")

    def __init__(self, scheme: Scheme, key_hex: str) -> None:
        self.scheme = scheme
        self._aead = AESGCM(key_bytes(key_hex, scheme.key_reading))
        self._decrypt = self._aead.decrypt
        self._encrypt = self._aead.encrypt
        self._iv_len = 16 if scheme.layout == "iv16_tag_ct" else 12
        self._ct_tag = scheme.layout == "iv12_ct_tag"
        self._envelope = scheme.layout == "json_envelope"
        self._ivs = b""
        self._ivs_at = 0

    def __getstate__(self) -> None:
        raise TypeError("a Codec holds a key and is never pickled")

    def _fresh_iv(self) -> bytes:
        """A random IV; drawn from the OS CSPRNG 1,024 at a time (one syscall, not 1,024)."""
        n = self._iv_len
        at = self._ivs_at
        if at >= len(self._ivs):
            self._ivs, at = os.urandom(n * 1024), 0
        self._ivs_at = at + n
        return self._ivs[at : at + n]

    def open(self, stored: str | bytes) -> bytes | None:
        """The plaintext, or ``None`` when this key/scheme does not open ``stored``."""
        try:
            raw = binascii.a2b_base64(stored, strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            return None
        if self._envelope:
            return self._open_envelope(raw)
        n = self._iv_len
        if len(raw) < n + TAG_LEN:
            return None
        body = raw[n:] if self._ct_tag else raw[n + TAG_LEN :] + raw[n : n + TAG_LEN]
        try:
            return self._decrypt(raw[:n], body, None)
        except InvalidTag:
            return None

    def _open_envelope(self, raw: bytes) -> bytes | None:
        try:
            envelope = json.loads(raw)
            iv = base64.b64decode(envelope["iv"], validate=True)
            ct = base64.b64decode(envelope["value"], validate=True)
            tag = base64.b64decode(envelope["tag"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if len(iv) not in (12, 16) or len(tag) != TAG_LEN:
            return None
        try:
            return self._aead.decrypt(iv, ct + tag, None)
        except InvalidTag:
            return None

    def seal(self, plaintext: bytes) -> str:
        """Encrypt with a fresh random IV, in exactly the layout the panel reads."""
        iv = self._fresh_iv()
        sealed = self._encrypt(iv, plaintext, None)
        if self._ct_tag:
            raw = iv + sealed
        elif self._envelope:
            raw = json.dumps(
                {
                    "iv": base64.b64encode(iv).decode(),
                    "value": base64.b64encode(sealed[:-TAG_LEN]).decode(),
                    "tag": base64.b64encode(sealed[-TAG_LEN:]).decode(),
                },
                separators=(",", ":"),
            ).encode()
        else:
            raw = iv + sealed[-TAG_LEN:] + sealed[:-TAG_LEN]
        return binascii.b2a_base64(raw, newline=False).decode("ascii")
