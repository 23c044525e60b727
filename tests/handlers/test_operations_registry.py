"""The operations registry (``handlers.ops``) is the one list of what the Slack side can do.

Every operation the engine runs from an approved plan has one module here; every
operation's commands are attached by its own module, declared in both Slack manifests,
listed by ``/rotate-help`` and named in the README; docs/architecture.md names every
operation module; and nothing outside the operation modules branches on an operation's
name (DESIGN.md section 9, rule 9).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import OPERATIONS, RUN_OPS
from handlers import ops

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy").glob("slack-manifest.*.json"))
#: An ``if``/``in`` on an operation's name: ``op == "rotate-key"``, ``request.op in (...)``.
OP_BRANCH = re.compile(r'op ?[!=]= ?"|\.op ?[!=]= ?"|op in \(')


class RecordingApp:
    """Stands in for Bolt's ``App`` at registration: records ``app.<kind>(name)``."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []

    def __getattr__(self, kind: str) -> Callable[..., Callable[[Any], Any]]:
        def decorator_for(name: Any, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            self.registered.append((kind, str(name)))
            return lambda listener: listener

        return decorator_for


class SomeDeps:
    """Registration reads no dependency but the panels; the listeners are never called."""

    panels = ("prod-eu",)

    def __getattr__(self, name: str) -> None:
        return None


def commands_attached_by(operation: ops.Operation) -> list[str]:
    app = RecordingApp()
    if operation.attach is not None:
        operation.attach(app, lambda body, ack: None)  # type: ignore[arg-type]
    else:
        operation.register(app, SomeDeps())  # type: ignore[arg-type]
    return [name for kind, name in app.registered if kind == "command"]


def test_every_operation_the_engine_runs_from_a_plan_has_one_module() -> None:
    """The shared request flow's operations are exactly the protocol's run operations; the
    fleet, a bot-side orchestration, runs them as its legs."""
    flow = {name for name, operation in ops.operations().items() if operation.parse is not None}
    assert flow == set(RUN_OPS)
    assert flow <= set(OPERATIONS)
    assert [o.name for o in ops.operations().values()] == [
        "rotate-key", "rotate-agent", "rotate-incident", "rotate-db-password", "rotate-fleet",
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(ops.operations()))
def test_an_operation_module_attaches_exactly_its_own_commands(name: str) -> None:
    operation = ops.get(name)
    assert commands_attached_by(operation) == list(operation.commands)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_both_manifests_declare_every_operation_command(manifest: Path) -> None:
    declared = {c["command"] for c in json.loads(manifest.read_text())["features"]["slash_commands"]}
    commands = {c for operation in ops.operations().values() for c in operation.commands}
    assert commands - declared == set()


def test_help_and_the_readme_name_every_operation_command() -> None:
    help_text = "\n".join(ops.help_lines())
    readme = (REPO / "README.md").read_text()
    for operation in ops.operations().values():
        for command in operation.commands:
            assert f"`{command}" in help_text, command
            assert f"`{command}" in readme, command


def test_the_architecture_names_every_operation_module() -> None:
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for module in ops.MODULES:
        path = module.replace(".", "/") + ".py"
        assert f"`{path}`" in architecture or f"`{path.rsplit('/', 1)[1]}`" in architecture, path


def test_nothing_outside_the_operation_modules_branches_on_an_operation_name() -> None:
    branches = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for room in ("bot", "handlers")
        for path in sorted((REPO / room).rglob("*.py"))
        if "ops" not in path.relative_to(REPO).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if OP_BRANCH.search(line)
    ]
    assert branches == []
