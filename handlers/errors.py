"""The handlers' errors: each carries a code and a message safe to show the person who acted.

    UserFacingError        (user_error)
    ├── PlanError          (plan_failed, or the engine's code): no plan, said in the user's words
    └── DirectoryUnavailable (directory_unavailable): Slack's member lists are too old to decide on

``new_reference`` ties an error message in Slack to its log line.
"""

from __future__ import annotations

import secrets


class UserFacingError(Exception):
    """An error whose message may be shown to the person who acted (no secret, no trace)."""

    code = "user_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code

    def __str__(self) -> str:
        return self.message


class PlanError(UserFacingError):
    """The engine could not produce a plan; ``message`` says why in the user's words."""

    code = "plan_failed"


class DirectoryUnavailable(UserFacingError):
    """Slack could not list a user group, and what the bot last saw is too old to trust."""

    code = "directory_unavailable"


def new_reference() -> str:
    """A short id that ties an error message in Slack to its log line."""
    return secrets.token_hex(2)
