"""Every error code a closing ``error`` event can carry, with what it means and what to do.

The one table of codes (house rule 10): the engine's errors take their code, their
``retryable`` and their exit status from it (``engine.protocol.errors``); the bot's
Slack summary (``handlers.messages.next_step``), ``doctor`` and the CLI read its
advice and exit status. A code is said one way everywhere.

``origin`` says who sends it: ``engine`` (an operation failed on the panel host),
``request`` (the engine refused the request line before doing anything) or ``transport``
(the bot's engine client: the host, SSH or the engine process failed to answer).

``advice`` is the fix, without the last step; ``then`` is that last step ("request
again"), or None when the advice already says all there is to do. Slack writes
``"{advice}, then {then}."``; ``doctor`` writes the advice and its own last step.

Plain classes, no dataclasses: ``serve`` answers ``hello`` before importing more.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

#: Exit statuses of the engine's CLI (``--help`` prints the table, ``engine.cli.EXIT_STATUS``).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NEEDS_RECOVER, EXIT_UNVERIFIED = 0, 1, 2, 3, 4

REQUEST_AGAIN = "request again"


class Code:
    """One error code: its meaning, the advice for it, and how a run with it ends."""

    __slots__ = ("advice", "exit_status", "meaning", "name", "nothing_changed", "origin", "retryable", "then")

    def __init__(
        self,
        name: str,
        meaning: str,
        advice: str,
        *,
        then: str | None = REQUEST_AGAIN,
        exit_status: int = EXIT_FAILED,
        retryable: bool = False,
        nothing_changed: bool = False,
        origin: str = "engine",
    ) -> None:
        self.name = name
        #: what happened, in a few words (for a reader of the table, the docs, a log)
        self.meaning = meaning
        #: what to do about it, without the last step
        self.advice = advice
        #: the last step once the advice is done ("request again"), or None
        self.then = then
        #: the CLI's exit status for a run that ended with this code (unless the error says)
        self.exit_status = exit_status
        #: asking again, unchanged, may work (the engine's ``retryable`` flag)
        self.retryable = retryable
        #: the panel is known to be exactly as it was (the request was refused up front)
        self.nothing_changed = nothing_changed
        self.origin = origin

    def next_step(self) -> str:
        """The advice as one sentence, with its last step: what Slack says under "Next"."""
        return f"{self.advice}, then {self.then}." if self.then else f"{self.advice}."

    def __repr__(self) -> str:
        return f"Code({self.name!r})"


_TABLE = (
    # -- an operation failed on the panel host --------------------------------------------
    Code("engine_error", "the engine failed", "fix what the engine reports under what failed"),
    Code(
        "bad_profile", "a panel profile setting is bad or missing",
        "fix the panel profile on the panel host (the message names the setting)",
        exit_status=EXIT_USAGE,
    ),
    Code(
        "bad_env_file", "config/.env is missing, malformed or unwritable",
        "check config/.env on the panel host: present, readable by the engine, well formed",
        exit_status=EXIT_USAGE,
    ),
    Code(
        "bad_key", "PANEL_ENCRYPTION_KEY is not 64 hex characters",
        "PANEL_ENCRYPTION_KEY in config/.env must be 64 hex characters: fix it first",
        then=None, exit_status=EXIT_USAGE,
    ),
    Code(
        "database", "the panel's database is unreachable, or lost or refused a statement",
        "check that the panel's database is up and reachable (its settings in config/.env)",
        retryable=True,
    ),
    Code(
        "credentials_refused", "the database refused the login",
        "check the database user and password in config/.env against the database server",
        retryable=True,
    ),
    Code(
        "not_transactional", "a table's storage engine has no transactions (MyISAM)",
        "the tables named under what failed need a transactional engine (InnoDB): convert them",
    ),
    Code(
        "layout", "no single ciphertext layout opens every stored value",
        "run `sudo myosicam-rotator probe` on the panel host and set ciphertext in the panel "
        "profile to the layout the stored values use",
        then=None,
    ),
    Code(
        "undecryptable", "some stored values do not open with the current key",
        "restore those values from a backup, or clear them in the panel so that their owners "
        "enter them again (they do not open with the key in config/.env)",
    ),
    Code(
        "locked", "another engine run holds the panel's lock",
        "another engine run holds the panel's lock; wait for it", retryable=True,
    ),
    Code(
        "unfinished_rotation", "an earlier rotation is unfinished",
        "an earlier rotation is unfinished: run `sudo myosicam-rotator recover` on the panel host first",
        then=None, exit_status=EXIT_NEEDS_RECOVER,
    ),
    Code(
        "rotation_interrupted", "the engine running the rotation stopped before it finished",
        "the engine running the rotation stopped before it finished: run `sudo myosicam-rotator recover` "
        "on the panel host",
        then=None, exit_status=EXIT_NEEDS_RECOVER,
    ),
    Code(
        "nothing_to_recover", "recover was asked for with no unfinished rotation",
        "nothing is unfinished on this panel; nothing to do", then=None, nothing_changed=True,
    ),
    Code(
        "key_reuse", "the new key equals the current or an earlier key",
        "request again; the engine will pick a fresh key", then=None, retryable=True,
    ),
    Code(
        "hook_failed", "a restart, verify, escrow or backup command failed",
        "run the command named under what failed by hand on the panel host, fix it",
    ),
    Code(
        "panel_check_failed", "the panel's own check says credentials do not show",
        "look at the panel's error log",
    ),
    Code(
        "verification_failed", "stored values do not all open with the key on disk",
        "check the panel now", then="run status on the panel host",
    ),
    Code(
        "rollback_failed", "the rollback itself failed",
        "the engine could not roll back by itself: run `sudo myosicam-rotator recover` on the panel host",
        then=None, exit_status=EXIT_NEEDS_RECOVER,
    ),
    Code(
        "agent_failed", "an agent's token rotation failed",
        "see each agent listed here; request again for the agents that failed", then=None,
    ),
    Code(
        "agent_unverified", "agents work with new tokens; whether the old ones still work is unknown",
        "the agents work with new tokens, but the engine could not tell whether the panel still "
        "takes the old ones: check by hand, or set old_token_check for this panel "
        "(docs/agents-contract.md)",
        then=None, exit_status=EXIT_UNVERIFIED,
    ),
    # -- a run request that no longer matches the host (nothing was changed) ---------------
    Code(
        "plan_mismatch", "the plan changed since it was approved",
        "the panel changed since the plan was approved: request again to approve the new plan",
        then=None, nothing_changed=True,
    ),
    Code(
        "key_mismatch", "the key changed since the plan was approved",
        "the key in config/.env changed since the plan was approved: request again",
        then=None, nothing_changed=True,
    ),
    Code(
        "agents_mismatch", "the agents changed since the plan was approved",
        "the agents changed since the plan was approved: request again", then=None, nothing_changed=True,
    ),
    Code(
        "password_mismatch", "the database password changed since the plan was approved",
        "the database password in config/.env changed since the plan was approved: request again",
        then=None, nothing_changed=True,
    ),
    # -- a refused request line (nothing was done) ------------------------------------------
    Code(
        "bad_request", "the engine refused the request line",
        "the bot and the engine disagree on the request: upgrade the older one",
        then=None, nothing_changed=True, origin="request",
    ),
    Code(
        "unknown_operation", "the engine has no such operation",
        "upgrade the engine on the panel host to match the bot", then=None, nothing_changed=True,
        origin="request",
    ),
    Code(
        "unsupported_operation", "this engine serves no operations",
        "upgrade the engine on the panel host to match the bot", then=None, nothing_changed=True,
        origin="request",
    ),
    Code(
        "unsupported_version", "the engine does not speak the request's protocol version",
        "upgrade the engines first, then the bot (the message names the versions)", then=None,
        nothing_changed=True, origin="request",
    ),
    Code(
        "request_too_large", "the request line is too long",
        "the request names too much at once: ask for fewer agents", nothing_changed=True, origin="request",
    ),
    Code(
        "request_timeout", "no request line came within the engine's limit",
        "check the network path to the panel host", nothing_changed=True, origin="request",
    ),
    Code(
        "plan_required", "a run request did not name its approved plan",
        "the bot must send the approved plan with a run: upgrade the bot", then=None,
        nothing_changed=True, origin="request",
    ),
    Code(
        "unknown_rotation", "attach named a rotation this host never ran",
        "the rotation never started on the panel host: run `/rotate-status`", then=None,
        nothing_changed=True, origin="request",
    ),
    # -- the bot's engine client: the host, SSH or the engine process -----------------------
    Code(
        "host_unreachable", "the panel host did not answer",
        "check host/port in [panels] (the bot's settings), that the panel host is up and that "
        "its sshd answers there",
        retryable=True, origin="transport",
    ),
    Code(
        "connection_lost", "the connection to the panel host broke",
        "check host/port in [panels], the network path to the panel host and that its sshd answers",
        retryable=True, origin="transport",
    ),
    Code(
        "engine_timeout", "the engine stopped answering",
        "the engine stopped answering: check the panel host (load, disk, the database)",
        retryable=True, origin="transport",
    ),
    Code(
        "auth_refused", "the panel host refused the bot's SSH key",
        "the panel host refused the bot's SSH key: install it with its forced command "
        "(deploy/setup-panel-host.sh)",
        origin="transport",
    ),
    Code(
        "host_key_mismatch", "the panel host's SSH host key is not the pinned one",
        "the panel host's SSH host key is not the pinned one: stop and find out why before "
        "anything else; update known_hosts only if the key changed on purpose",
        then=None, origin="transport",
    ),
    Code(
        "client_key", "the bot cannot read its own SSH key",
        "check key_file and key_passphrase in [panels]", origin="transport",
    ),
    Code(
        "protocol_mismatch", "the bot and the engine speak different protocol versions",
        "upgrade the engine on the panel host to match the bot (engines first, then the bot)",
        origin="transport",
    ),
    Code(
        "engine_crashed", "the engine ended without a closing event",
        "run the engine by hand on the panel host and read its error", origin="transport",
    ),
    Code(
        "internal", "the engine failed unexpectedly (its log on the panel host says what)",
        "fix what the engine reports under what failed", origin="engine",
    ),
)

CODES: dict[str, Code] = {code.name: code for code in _TABLE}

#: Advice for a code not in the table (a newer engine's): the message says what failed.
UNKNOWN = Code("unknown", "a code this version does not know", "fix what the engine reports under what failed")

#: Codes of a run request refused because it no longer matches the host.
MISMATCH_CODES = frozenset({"plan_mismatch", "key_mismatch", "agents_mismatch", "password_mismatch"})
#: Codes that mean the panel was left exactly as it was (the bot says "nothing changed").
NOTHING_CHANGED_CODES = frozenset(name for name, code in CODES.items() if code.nothing_changed)


def lookup(name: str) -> Code:
    """The code's entry; ``UNKNOWN`` for one this version does not know."""
    return CODES.get(name, UNKNOWN)


def of_origin(origin: str) -> Iterator[Code]:
    return (code for code in _TABLE if code.origin == origin)
