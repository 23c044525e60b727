"""The bot's view of an engine: send one request, receive its events.

Two implementations share this interface: ``bot.ssh_client.SSHEngineClient``
(paramiko, the forced command on the panel host) and
``bot.local_client.LocalEngineClient`` (``python -m engine serve`` as a child
process, for tests and single-host installs). Both yield event dicts exactly
as the engine wrote them (``hello`` first, a closing ``result``/``error``
last) and raise ``bot.errors.EngineClientError`` subclasses for transport
problems.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from engine.protocol import Request


class EngineClient(Protocol):
    def run(self, request: Request) -> Iterator[dict[str, Any]]:
        """Send ``request``; yield every event once, in order, as it arrives.

        For mutating operations the client re-attaches after a dropped
        connection, so the caller still sees each event once and the closing
        event last.
        """
        ...

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` of the pinned host key ("local" for a subprocess)."""
        ...
