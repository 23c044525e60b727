"""The root of every engine error, and the protocol's own refusals.

The contract of an error (house rule 3): a stable ``code`` from the codes table
(``engine.protocol.codes``), a user ``message`` safe to show anywhere, whether it is
``retryable``, whether the run was ``rolled_back`` (None: it never changed anything, or
it is not known), extra non-secret ``details`` for the closing ``error`` event, and the
CLI's ``exit_status``. The engine's own tree (``engine.errors``) grows from
``EngineError``; the bot catches ``RequestError`` and ``PlanMismatchError`` from here
without importing the engine.

Tree::

    EngineError                 (engine.errors holds the rest of the tree)
    ├── ProtocolError           bad request on the serve protocol
    │   └── RequestError        a refused request line (also a ValueError); its code says
    │                           why: bad_request, unknown_operation, unsupported_version,
    │                           request_too_large, request_timeout, plan_required, ...
    └── PlanMismatchError       a run request names a plan that is not the host's now
                                (plan_mismatch, key_mismatch, agents_mismatch, password_mismatch)
"""

from __future__ import annotations

from engine.protocol import codes


class EngineError(Exception):
    """Base of all engine errors. ``str(err)`` is the user message.

    A subclass names its ``code``; ``retryable`` and ``exit_status`` come from the
    code's row in the table unless the class says otherwise.
    """

    code = "engine_error"

    def __init__(self, message: str, *, rolled_back: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rolled_back = rolled_back
        #: extra, non-secret facts for the closing ``error`` event
        self.details: dict[str, object] = {}

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return codes.lookup(self.code).retryable

    @property
    def exit_status(self) -> int:
        """The CLI's exit status: by what the operator must do next, not by where it arose."""
        return codes.lookup(self.code).exit_status

    def event_fields(self) -> dict[str, object]:
        """What the closing ``error`` event says of this error (``protocol.error_event``)."""
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "rolled_back": self.rolled_back,
            "exit_status": self.exit_status,
        }


class ProtocolError(EngineError):
    code = "bad_request"


class RequestError(ProtocolError, ValueError):
    """A request the engine refuses; ``code`` goes into the closing error event.

    Messages name fields, never the values sent (a refused request may hold anything).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PlanMismatchError(EngineError):
    """The run request's plan hash, key fingerprint or agent list is not the host's now.

    ``details`` carries what changed (``differences``) and, once the engine adds it, the
    plan as it is now (``plan``), so the bot can void the approvals and say why.
    """

    code = "plan_mismatch"

    def __init__(self, code: str, message: str, differences: list[str]) -> None:
        super().__init__(message, rolled_back=None)
        self.code = code
        self.differences = differences
        self.details = {"differences": differences}
