"""The operations registry: one module per operation holds everything about it.

An ``Operation`` says which request ``op`` it owns, which slash commands it answers
(and which it shares with an older operation, e.g. ``/rotate-key --panels``), how its
card and summary read, which panels a request of it touches and what it adds to the
help. The rest of the code asks the registry (``lookup``, ``route``, ``panels_of``,
``approval_refusal``) instead of branching on an operation's name.

The fleet (``handlers.ops.fleet``) is the first operation written this way; the four
older ones still live in ``handlers.commands``, ``blocks``, ``incident`` and
``bot.runner`` until they move here (issue 23). Modules are imported on first use,
so that ``handlers.blocks`` may import this module and an operation module may import
``handlers.blocks``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slack_bolt import App

    from handlers.ports import HandlerDeps, Person, RotationRequest

#: The operation modules, in the order their commands and help lines appear.
MODULES: tuple[str, ...] = ("handlers.ops.fleet",)

Listener = Callable[..., None]


@dataclass(frozen=True)
class Operation:
    """What the rest of the bot needs to know of one operation."""

    #: the ``RotationRequest.op`` this module owns
    name: str
    #: the slash commands it registers itself (``register``)
    commands: tuple[str, ...]
    #: the card and its text fallback: ``card(request, approvers=, approvals_required=,
    #: now=, name_requester=)``, as ``handlers.blocks.request_card``
    card: Callable[..., dict[str, Any]]
    #: the request's headline (``:key: … requested: …``), for its modal, history and card
    headline: Callable[[RotationRequest], str]
    #: the panels a request of this operation touches (for step-up and the Home tab)
    panels: Callable[[RotationRequest], tuple[str, ...]]
    #: its commands' lines in ``/rotate-help``
    help_lines: tuple[str, ...]
    #: attach its own commands to the app
    register: Callable[[App, HandlerDeps], None]
    #: shared commands: command -> (does this text belong to me?, my listener factory)
    shares: Mapping[str, tuple[Callable[[str], bool], Callable[[HandlerDeps], Listener]]] = field(default_factory=dict)
    #: a reason ``person`` may not approve now (e.g. they were offboarded), or None
    approval_refusal: Callable[[HandlerDeps, Person], str | None] = lambda deps, person: None


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
    """The operation that owns requests of ``name``, or None (an operation not moved yet)."""
    return operations().get(name)


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
    """The panels ``request`` touches: its operation's answer, else its one panel."""
    operation = lookup(request.op)
    return operation.panels(request) if operation else (request.panel,)


def approval_refusal(deps: HandlerDeps, person: Person) -> str | None:
    """Why ``person``'s approval may not count, if any operation says so."""
    for operation in operations().values():
        refusal = operation.approval_refusal(deps, person)
        if refusal:
            return refusal
    return None


def help_lines() -> list[str]:
    return [line for operation in operations().values() for line in operation.help_lines]
