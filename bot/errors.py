"""Every error of the bot, in one place; each has a ``code`` and a user message.

Tree::

    BotError
    ├── SettingsError             a missing or bad setting (names it, never echoes a secret)
    ├── SocketModeError           Socket Mode could not start (app token refused, websocket unreachable)
    ├── EngineClientError         talking to an engine failed
    │   ├── HostUnreachableError  TCP/SSH connect failed or timed out
    │   │   └── ConnectionLostError   the connection dropped and re-attaching failed
    │   ├── AuthRefusedError      the panel host refused our key
    │   ├── HostKeyMismatchError  unknown or changed host key (shows the presented fingerprint)
    │   ├── ProtocolMismatchError hello missing or an unsupported protocol version
    │   ├── EngineCrashedError    the event stream ended without a closing event
    │   ├── RemoteEngineError     the engine answered with an ``error`` event
    │   ├── EngineTimeoutError    no event within the per-event timeout
    │   └── ClientKeyError        the bot's SSH key file is missing or unreadable
    └── (handler-side errors are added below by the bot/handlers code)
"""

from __future__ import annotations

from typing import Any


class BotError(Exception):
    code = "bot_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(BotError):
    code = "bad_settings"


class SocketModeError(BotError):
    code = "socket_mode"


class EngineClientError(BotError):
    code = "engine_client"


class HostUnreachableError(EngineClientError):
    code = "host_unreachable"


class AuthRefusedError(EngineClientError):
    code = "auth_refused"


class HostKeyMismatchError(EngineClientError):
    code = "host_key_mismatch"


class ProtocolMismatchError(EngineClientError):
    code = "protocol_mismatch"
    # what came instead of an engine event (redacted, cut short), e.g. a login shell's refusal
    first_line: str | None = None


class EngineCrashedError(EngineClientError):
    code = "engine_crashed"


class RemoteEngineError(EngineClientError):
    """The engine's own ``error`` event, carried as an exception."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(str(event.get("message", "engine error")))
        self.event = event
        self.code = str(event.get("code", "engine_error"))
        self.rolled_back = event.get("rolled_back")
        self.retryable = bool(event.get("retryable", False))


class ConnectionLostError(HostUnreachableError):
    """The SSH connection dropped before the engine's closing event (and, for a
    rotation, re-attaching did not succeed within the configured attempts)."""

    code = "connection_lost"


class EngineTimeoutError(EngineClientError):
    """No event arrived from the engine within the per-event timeout."""

    code = "engine_timeout"


class ClientKeyError(EngineClientError):
    """The bot's own SSH key file is missing, unreadable or needs another passphrase."""

    code = "client_key"


# --- the bot's own state (bot.store, bot.audit, bot.runner) ---------------------------------
# BotError
# ├── StoreError              the state store is unreachable or refused a statement
# └── AuditIntegrityError     the audit chain does not verify (changed, removed, reordered)


class StoreError(BotError):
    code = "store"


class AuditIntegrityError(BotError):
    code = "audit_broken"


# --- the local demo (bot.demo) ---------------------------------------------------------------
# BotError
# └── DemoUnavailableError    something the demo needs on this machine is missing (says how to get it)


class DemoUnavailableError(BotError):
    code = "demo_unavailable"
