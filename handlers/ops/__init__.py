"""The operations registry: one module per operation holds everything about it.

An ``Operation`` says which request ``op`` it owns, which slash commands it answers
(and which it shares with an older operation, e.g. ``/rotate-key --panels``), how its
card and summary read, which panels a request of it touches and what it adds to the
help. The rest of the code asks the registry (``lookup``, ``route``, ``panels_of``,
``refusal``, ``barred``) instead of branching on an operation's name.

Each operation has one module here: ``key``, ``agents``, ``incident``, ``db_password``
and ``fleet``. An operation that uses the shared request flow (``handlers.commands``:
parse, plan, card, approvals, one engine run) gives its ``parse``, the fields of its
plan and run requests, its card's plan lines and its summary; the fleet registers its
own commands and draws its own card. Modules are imported on first use, so that
``handlers.blocks`` may import this module and an operation module may import
``handlers.blocks``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.messages import esc

if TYPE_CHECKING:
    from slack_bolt import App

    from handlers.parsing import Parsed
    from handlers.plan_view import PlanView
    from handlers.ports import HandlerDeps
    from handlers.rotation_request import Person, RotationRequest

#: The operation modules, in the order their commands and help lines appear.
MODULES: tuple[str, ...] = (
    "handlers.ops.key",
    "handlers.ops.agents",
    "handlers.ops.incident",
    "handlers.ops.db_password",
    "handlers.ops.fleet",
)

Listener = Callable[..., None]


def _nothing(*args: Any) -> dict[str, Any]:
    return {}


def _no_commands(app: App, deps: HandlerDeps) -> None:
    """An operation of the shared request flow: ``handlers.commands`` registers its command."""


def one_panel(request: RotationRequest) -> tuple[str, ...]:
    """A request of the shared flow touches its one panel."""
    return (request.panel,)


def one_panel_card(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The shared flow's card (``handlers.blocks`` imports this module: imported on use)."""
    from handlers import blocks

    return blocks.one_panel_card(*args, **kwargs)


def one_panel_headline(request: RotationRequest) -> str:
    from handlers import blocks

    return blocks.headline(request)


@dataclass(frozen=True)
class Operation:
    """What the rest of the bot needs to know of one operation."""

    #: the ``RotationRequest.op`` this module owns
    name: str
    #: the slash commands it registers itself (``register``)
    commands: tuple[str, ...]
    #: its commands' lines in ``/rotate-help``
    help_lines: tuple[str, ...]
    #: the card and its text fallback: ``card(request, approvers=, approvals_required=,
    #: now=, name_requester=)``, as ``handlers.blocks.request_card``; default: one panel's
    card: Callable[..., dict[str, Any]] = one_panel_card
    #: the request's headline (``:key: … requested: …``), for its modal, history and card
    headline: Callable[[RotationRequest], str] = one_panel_headline
    #: the panels a request of this operation touches (for step-up and the Home tab)
    panels: Callable[[RotationRequest], tuple[str, ...]] = one_panel
    #: attach its own commands to the app (the shared request flow's are ``handlers.commands``')
    register: Callable[[App, HandlerDeps], None] = _no_commands
    #: shared commands: command -> (does this text belong to me?, my listener factory)
    shares: Mapping[str, tuple[Callable[[str], bool], Callable[[HandlerDeps], Listener]]] = field(default_factory=dict)
    #: a reason ``person`` may not ``act`` now (``ACTS``: request, approve, deny; e.g. they
    #: were offboarded), or None; the operation audits a refusal it gives
    refusal: Callable[[HandlerDeps, Person, str], str | None] = lambda deps, person, act: None
    #: why ``person`` may do none of ``ACTS`` now, said once where their buttons would be
    #: (the Home tab), or None; asked, not tried: not audited
    barred: Callable[[HandlerDeps, Person], str | None] = lambda deps, person: None

    # --- the shared request flow (``handlers.commands``, ``blocks``, ``bot.runner``) ------
    #: its command's parser: (text, panels) -> ``Parsed``, or the sentence that says what to
    #: fix; None: the operation registers its own commands (``register``)
    parse: Callable[[str, Sequence[str]], Parsed | str] | None = None
    #: attach the shared flow's listener to its command: ``app.command("/rotate-key")(listener)``,
    #: the command written out (``tests/deploy/test_manifests.py`` reads the literals)
    attach: Callable[[App, Listener], None] | None = None
    #: its name on the card ("Key rotation") and its icon while pending
    title: str = ""
    icon: str = ":key:"
    #: what a request of it targets, as the card says it: (panel, agents, all agents, names
    #: shown) -> ``panel prod-eu``
    target: Callable[[str, Sequence[str], bool, int], str] = lambda panel, agents, every, shown: f"panel {esc(panel)}"
    #: a request names agents (the Home modal's agent field, ``RotationRequest.agents``)
    takes_agents: bool = False
    #: offered in the Home tab's request modal under this label (None: not offered)
    modal_label: str | None = None
    #: the engine ``plan`` request's fields for it: (agents, all agents) -> fields
    plan_fields: Callable[[Sequence[str], bool], dict[str, Any]] = _nothing
    #: what it reads of the engine's plan beyond the common fields: result -> ``PlanView`` fields
    plan_extras: Callable[[dict[str, Any]], dict[str, Any]] = _nothing
    #: the run request's fields beyond the common ones (what binds the approved plan)
    run_fields: Callable[[RotationRequest], dict[str, Any]] = _nothing
    #: the card's plan lines
    plan_lines: Callable[[PlanView], str] = lambda plan: ""
    #: the closing summary: its blocks (``on_card``: the card's own lines say who and why)
    #: and its text
    summary_blocks: Callable[..., list[dict[str, Any]]] = lambda request, on_card=False: []
    summary_text: Callable[[RotationRequest], str] = lambda request: ""
    #: the card's (icon, word) when the engine finished but not everything succeeded
    stopped: Callable[[RotationRequest], tuple[str, str]] = lambda request: (":warning:", "finished with failures")
    #: ``/rotate-status``'s few words after the panel (``(3 agents)``)
    status_detail: Callable[[RotationRequest], str] = lambda request: ""
    #: a thread message kept up to date while it runs (``update(event)``, ``message(panel)``),
    #: or None
    progress: Callable[[PlanView], Any] = lambda plan: None
    #: the encryption key's old and new fingerprints in a closing event (a fleet's legs)
    key_fingerprints: Callable[[dict[str, Any]], dict[str, str]] = _nothing


_REGISTRY: dict[str, Operation] | None = None


def operations() -> dict[str, Operation]:
    """Every registered operation by name (the modules are imported on the first call)."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, Operation] = {}
        for module in MODULES:
            operation: Operation = importlib.import_module(module).OPERATION
            found[operation.name] = operation
        _REGISTRY = found
    return _REGISTRY


def lookup(name: str) -> Operation | None:
    """The operation that owns requests of ``name``, or None (no such operation)."""
    return operations().get(name)


def get(name: str) -> Operation:
    """The operation that owns requests of ``name`` (every stored request has one)."""
    operation = operations().get(name)
    if operation is None:
        raise LookupError(f"no operation {name!r} is registered")
    return operation


def register(app: App, deps: HandlerDeps) -> None:
    """Attach every registered operation's own commands."""
    for operation in operations().values():
        operation.register(app, deps)


def route(command: str, deps: HandlerDeps, fallback: Listener) -> Listener:
    """A listener for ``command`` that hands an invocation to the operation claiming its
    text (``/rotate-key --all-panels …`` belongs to the fleet), else to ``fallback``."""
    claims = [
        (claim, make(deps))
        for operation in operations().values()
        if command in operation.shares
        for claim, make in [operation.shares[command]]
    ]
    if not claims:
        return fallback

    def routed(body: dict[str, Any], ack: Any) -> None:
        text = str(body.get("text", ""))
        for claim, listener in claims:
            if claim(text):
                listener(body, ack)
                return
        fallback(body, ack)

    return routed


def panels_of(request: RotationRequest) -> tuple[str, ...]:
    """The panels ``request`` touches: its operation's answer."""
    return get(request.op).panels(request)


#: what a person does that an operation may refuse: file a request (a command, the Home
#: tab's button and modal), approve one (a click, the code form), deny one
ACTS = ("request", "approve", "deny")


def refusal(deps: HandlerDeps, person: Person, act: str) -> str | None:
    """Why ``person`` may not ``act`` (one of ``ACTS``), if any operation says so: the one
    rule every surface asks after ``AccessPolicy`` (``handlers.commands.request_refusal``,
    ``handlers.actions``)."""
    for operation in operations().values():
        found = operation.refusal(deps, person, act)
        if found:
            return found
    return None


def barred(deps: HandlerDeps, person: Person) -> str | None:
    """Why ``person`` may do none of ``ACTS``, if any operation says so: the Home tab shows
    this instead of its buttons (a click on a stale tab still gets ``refusal``)."""
    for operation in operations().values():
        found = operation.barred(deps, person)
        if found:
            return found
    return None


def modal_kinds() -> dict[str, str]:
    """The operations the Home tab's request modal offers: name -> label."""
    return {o.name: o.modal_label for o in operations().values() if o.modal_label}


def help_lines() -> list[str]:
    return [line for operation in operations().values() for line in operation.help_lines]
