"""Every error the engine raises, in one place.

Each error carries a stable ``code`` (sent in the protocol's ``error`` event and
used by the bot to choose its words), a user ``message`` that is safe to show
anywhere (it never contains key material or a credential), and whether the
operation may simply be ``retryable``. The root (``EngineError``) and the protocol's
refusals live in the shared contract, ``engine.protocol.errors``; a code's meaning,
advice, ``retryable`` and exit status are its row in ``engine.protocol.codes``.

Tree::

    EngineError
    ├── ProfileError            bad or missing panel profile setting
    ├── EnvFileError            config/.env missing, malformed, unwritable
    │   └── BadKeyError         PANEL_ENCRYPTION_KEY is not 64 hex characters
    ├── DatabaseError           MySQL unreachable, lost, refused a statement
    │   └── NotTransactionalError  a table's storage engine has no transactions (MyISAM)
    ├── LayoutError             no (or more than one) ciphertext layout opens every value
    ├── UndecryptableError      some stored values do not open with the current key
    ├── LockedError             another engine run holds the panel's lock
    ├── UnfinishedRotationError a journal of an unfinished rotation exists: run recover
    ├── NothingToRecoverError   recover was asked for with no unfinished journal
    ├── KeyReuseError           the new key equals the current or an earlier key
    ├── HookError               restart / verify / escrow / backup command failed
    │   └── PanelCheckError     the panel's own check says credentials do not show
    ├── VerificationError       values do not all open with the key on disk
    ├── RollbackFailedError     rollback itself failed: recover is needed
    ├── AgentError              agent rotation failure (per agent)
    │   └── AgentUnverifiedError  the rotation could not be proven either way ("could not verify")
    ├── ProtocolError           bad request on the serve protocol
    │   └── RequestError        a refused request line (also a ValueError); its code says
    │                           why: bad_request, unknown_operation, unsupported_version,
    │                           request_too_large, request_timeout, plan_required
    └── PlanMismatchError       a run request names a plan that is not the host's now
                                (code plan_mismatch, key_mismatch or agents_mismatch)
"""

from __future__ import annotations

from engine.protocol.codes import EXIT_FAILED, EXIT_USAGE
from engine.protocol.errors import EngineError as EngineError
from engine.protocol.errors import PlanMismatchError as PlanMismatchError
from engine.protocol.errors import ProtocolError as ProtocolError
from engine.protocol.errors import RequestError as RequestError


class ProfileError(EngineError):
    code = "bad_profile"


class EnvFileError(EngineError):
    code = "bad_env_file"

    @property
    def exit_status(self) -> int:
        # the profile names a file or user that isn't right (nothing changed: a usage error),
        # or writing it failed during a rotation that was then rolled back (or not)
        return EXIT_USAGE if self.rolled_back is None else EXIT_FAILED


class BadKeyError(EnvFileError):
    code = "bad_key"


class DatabaseError(EngineError):
    code = "database"


class CredentialsRefusedError(DatabaseError):
    """The server refused the login (MySQL error 1045): which password it accepts matters."""

    code = "credentials_refused"


class NotTransactionalError(DatabaseError):
    code = "not_transactional"


class LayoutError(EngineError):
    code = "layout"


class UndecryptableError(EngineError):
    code = "undecryptable"

    def __init__(self, message: str, locations: list[str]) -> None:
        super().__init__(message)
        self.locations = locations
        # table.column id N of each value (no value itself), so the bot can name them
        self.details["locations"] = list(locations)


class LockedError(EngineError):
    code = "locked"


class UnfinishedRotationError(EngineError):
    code = "unfinished_rotation"


class NothingToRecoverError(EngineError):
    code = "nothing_to_recover"


class KeyReuseError(EngineError):
    code = "key_reuse"


class HookError(EngineError):
    code = "hook_failed"


class RestartTargetError(HookError):
    """The profile's restart command cannot run on this host (no such program or unit, no
    systemd to ask): a settings problem, found before anything changed (exit status 2)."""

    @property
    def exit_status(self) -> int:
        return EXIT_USAGE


class PanelCheckError(HookError):
    code = "panel_check_failed"


class VerificationError(EngineError):
    code = "verification_failed"


class RollbackFailedError(EngineError):
    code = "rollback_failed"


class AgentError(EngineError):
    code = "agent_failed"


class AgentUnverifiedError(AgentError):
    """Not a failure and not a success: the check that would prove the outcome could not tell."""

    code = "agent_unverified"
