"""A heartbeat signed with a token, to ask the panel whether it accepts that token.

The canonical string is the reference panel's (bot/fakes/panel/php/panel/agents.php)::

    POST \\n /agents/heartbeat \\n <agent id> \\n <unix seconds> \\n <nonce> \\n <hex sha256 of body>

HMAC-SHA256 keyed with the agent token, hex, in ``X-Signature``, with
``X-Agent-Id``, ``X-Timestamp`` and ``X-Nonce``. A panel that signs another way
answers this with a refusal whatever the token: that is why a refusal counts
only next to an acceptance of the same request signed with the new token
(``engine.ops.agents.tokencheck``). For such a panel, use ``old_token_check =
"command"``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

from engine.ops.agents.tokencheck import Answer


def canonical(path: str, agent_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    parts = ["POST", path, agent_id, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    return "\n".join(parts).encode()


def signed_headers(path: str, agent_id: int, token: str, body: bytes) -> dict[str, str]:
    agent, ts, nonce = str(agent_id), str(int(time.time())), secrets.token_urlsafe(18)
    mac = hmac.new(token.encode(), canonical(path, agent, ts, nonce, body), hashlib.sha256)
    return {"X-Agent-Id": agent, "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": mac.hexdigest()}


def ask(url: str, agent_id: int, token: str, timeout_s: float) -> Answer:
    """POST a heartbeat signed with ``token``: 2xx accepted, 401/403 refused, else unknown."""
    body = json.dumps({"agent_id": agent_id, "check": "myosicam-rotator"}).encode()
    path = urllib.parse.urlsplit(url).path or "/"
    headers = {"Content-Type": "application/json", "User-Agent": "myosicam-rotator"}
    headers.update(signed_headers(path, agent_id, token, body))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        said = f"POST {url} answered {exc.code} {_reason(exc.read())}".strip()
        return Answer("refused" if exc.code in (401, 403) else "unknown", said)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer("unknown", f"POST {url} did not answer ({reason})")
    if 200 <= status < 300:
        return Answer("accepted", f"POST {url} answered {status}")
    return Answer("unknown", f"POST {url} answered {status}")


def _reason(raw: bytes) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        return ""
    error = value.get("error") if isinstance(value, dict) else None
    return str(error)[:120] if isinstance(error, str) else ""
