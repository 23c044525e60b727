"""One list of operations (issue 23, house rule 9): the protocol names them, the engine's
registry maps each name to its code and its command line, and the CLI, ``serve`` and the
docs say the same list. Adding an operation means adding it here, and nowhere a branch."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from engine import ops, protocol, serve
from engine.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("engine.ops.key", "engine.ops.db_password", "engine.ops.agents", "engine.ops.incident")


def _cli_commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_the_registry_implements_exactly_the_protocol_s_operations() -> None:
    assert sorted(ops.IMPLEMENTATIONS) == sorted(protocol.OPERATIONS)
    assert protocol.OPERATIONS == tuple(op.name for op in protocol.REGISTRY)
    assert protocol.MUTATING_OPS <= protocol.BY_NAME.keys() and protocol.RUN_OPS <= protocol.MUTATING_OPS


def test_each_operation_is_run_by_the_engine_or_answered_by_serve_never_both() -> None:
    by_engine = {name for name, impl in ops.IMPLEMENTATIONS.items() if impl.target is not None}
    assert by_engine | serve.ANSWERED_HERE.keys() == set(protocol.OPERATIONS)
    assert by_engine & serve.ANSWERED_HERE.keys() <= {"hello"}  # hello is also an engine op for the CLI
    for name in by_engine:
        assert callable(ops.IMPLEMENTATIONS[name].function()), name


@pytest.mark.parametrize("kind", KINDS)
def test_every_operation_kind_has_the_same_face(kind: str) -> None:
    """plan, run (and recover, but for the incident, whose parts recover by their kinds), and
    for the CLI what a confirmed run names of its plan and how its plan and result print."""
    import importlib
    import inspect
    import pkgutil

    module = importlib.import_module(kind)
    for sub in pkgutil.iter_modules(module.__path__):  # a submodule named like a function hides it
        importlib.import_module(f"{kind}.{sub.name}")
    face = ["plan", "run", "approved", "print_plan", "print_summary"]
    face += ["recover"] if kind != "engine.ops.incident" else []
    assert [name for name in face if not inspect.isfunction(getattr(module, name, None))] == []


def test_plan_can_plan_for_every_rotation_and_each_rotation_has_its_kind() -> None:
    kinds = {name: impl.kind for name, impl in ops.IMPLEMENTATIONS.items() if impl.kind}
    assert sorted(kinds) == sorted(protocol.PLANNABLE_OPS) == sorted(protocol.RUN_OPS)
    assert sorted(kinds.values()) == sorted(KINDS)
    assert all(ops.IMPLEMENTATIONS[name].confirm for name in protocol.RUN_OPS)


def test_the_cli_has_one_subcommand_per_operation_a_person_runs_plus_serve() -> None:
    with_a_command_line = [name for name, impl in ops.IMPLEMENTATIONS.items() if impl.help]
    assert _cli_commands() == [*with_a_command_line, "serve"]
    assert sorted(with_a_command_line) == sorted(set(protocol.OPERATIONS) - {"hello", "attach"})


def test_the_readme_s_engine_line_lists_the_cli_s_subcommands() -> None:
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("| `engine/` |"))
    listed = re.search(r"myosicam-rotator \[--profile PROFILE\.toml\] ([a-z\\|-]+)`", line)
    assert listed is not None, line
    assert sorted(listed.group(1).split("\\|")) == sorted(_cli_commands())


def test_the_architecture_lists_the_protocol_s_operations() -> None:
    """docs/architecture.md §3 names every operation a request line may carry."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## 3. The bot ⇄ engine protocol"):text.index("## 4.")]
    listed = re.search(r"operation \(([^)]*)\)", section.replace("\n", " "))
    assert listed is not None
    names = re.findall(r"`([a-z-]+)`", listed.group(1))
    assert names == list(protocol.OPERATIONS)


def test_no_engine_module_outside_the_registry_branches_on_an_operation_s_name() -> None:
    """``if op == "rotate-…"`` lives nowhere in the engine: the CLI, serve and the
    operations look an operation up. The protocol's own checks are the registry's."""
    branch = re.compile(r'op ?[!=]= ?"|\.op ?[!=]= ?"|op in \(')
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "engine").rglob("*.py"))
        if not path.is_relative_to(ROOT / "engine" / "protocol")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def test_the_journaled_rotations_share_one_skeleton() -> None:
    """Constructor, run under the lock, advance, recover's move: written once (engine.ops.journaled)."""
    import inspect

    from engine.ops.db_password.rotation import DbPasswordRotation
    from engine.ops.journaled import JournaledRotation
    from engine.ops.key.rotation import KeyRotation

    for rotation in (KeyRotation, DbPasswordRotation):
        assert issubclass(rotation, JournaledRotation)
        assert "run" not in vars(rotation) and "advance" not in vars(rotation)
    for module in ("engine.ops.key.converge", "engine.ops.db_password.rotation"):
        source = inspect.getsource(importlib.import_module(module))
        assert "converge(" in source and "acquire_lock()" not in source, module
