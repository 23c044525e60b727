"""PHP's own AES-256-GCM (bot/fakes/panel/php/crypto.php) from Python, one ``php`` process per batch.

The request, key included, goes over stdin as JSON; the key never appears on
argv, where ``ps`` would show it.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Sequence

from bot.fakes.panel import CRYPTO_PHP


class PhpCryptoError(RuntimeError):
    pass


def php_binary() -> str:
    found = shutil.which("php")
    if not found:
        raise PhpCryptoError("php is not installed (apt-get install php-cli php-mysql)")
    return found


def _run(op: str, scheme: str, key_hex: str, values: list[str | None]) -> list[object]:
    request = json.dumps({"op": op, "scheme": scheme, "key": key_hex, "values": values})
    proc = subprocess.run(
        [php_binary(), "-d", "memory_limit=-1", str(CRYPTO_PHP)],
        input=request.encode(),
        capture_output=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise PhpCryptoError(
            f"crypto.php {op} failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    result = json.loads(proc.stdout)
    if not isinstance(result, list) or len(result) != len(values):
        raise PhpCryptoError(f"crypto.php {op} answered {len(result)} values for {len(values)}")
    return result


def php_encrypt(scheme: str, key_hex: str, plaintexts: Sequence[bytes | None]) -> list[str | None]:
    """Stored strings exactly as the panel writes them (``None`` stays ``None``)."""
    values = [None if p is None else base64.b64encode(p).decode() for p in plaintexts]
    return [None if v is None else str(v) for v in _run("encrypt", scheme, key_hex, values)]


def php_decrypt(
    scheme: str, key_hex: str, stored: Sequence[str | None]
) -> list[bytes | bool | None]:
    """Per value: the plaintext, ``False`` when it does not open, ``None`` for ``None``."""
    out: list[bytes | bool | None] = []
    for value in _run("decrypt", scheme, key_hex, list(stored)):
        if value is None or value is False:
            out.append(value)
        else:
            out.append(base64.b64decode(str(value)))
    return out
