"""Frozen, checked settings objects: the small part of pydantic the panel profile needs.

Why not pydantic: the engine runs as an SSH forced command, so every rotation pays its
start-up. Importing pydantic and building the profile's models took 120-250 ms of the
~0.5 s a 1k-value rotation takes (``python -X importtime -I -m engine``); this module
takes about a millisecond and imports nothing the engine does not already load.

A settings class declares its fields as annotations, the way a dataclass does::

    class Server(Settings):
        host: str
        port: Annotated[int, Range(ge=1, le=65535)] = 22
        password: str | None = setting(default=None, repr=False)

The annotation is the check. ``str``, ``int`` (never a bool), ``float`` (an int is
fine), ``bool``, ``Path`` (from a string), ``Literal[...]``, ``X | None`` and other
unions, ``list[X]``, ``dict[str, X]`` and nested ``Settings`` classes (from a dict,
as TOML gives them) are understood; ``Annotated`` adds ``Match``, ``Range``,
``MinLen``, ``Check`` (a function run on the converted value) and ``Before`` (one run
on the raw value). Checks across fields go in ``_cross_checks``. Names starting with
``_`` and ``ClassVar`` annotations are not settings.

Every problem is collected, not only the first, as ``(dotted.path, message)``
(``inventory.web1.port``, ``columns.1.table``); messages say what is expected and
never repeat the value given, which may be a password.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePath
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Self,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
    get_type_hints,
)

Location = tuple[str | int, ...]


class SettingsError(ValueError):
    """Settings refused; ``problems`` holds every one as ``(location, message)``."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in self.described()))

    def described(self) -> list[tuple[str, str]]:
        """The problems with their location as a dotted path (``database.port``)."""
        return [(".".join(str(p) for p in loc) or "(top level)", message) for loc, message in self.problems]


# -- checks added with Annotated[...] ------------------------------------------------------


class Match:
    """The whole string matches ``pattern``; ``meaning`` says what that is, for people."""

    def __init__(self, pattern: str, meaning: str) -> None:
        self.pattern = re.compile(pattern)
        self.meaning = meaning

    def problem(self, value: str) -> str | None:
        return None if self.pattern.fullmatch(value) else f"must be {self.meaning}"


class Range:
    """A number within bounds: ``ge``/``le`` inclusive, ``gt`` exclusive."""

    def __init__(self, *, ge: float | None = None, le: float | None = None, gt: float | None = None) -> None:
        self.ge, self.le, self.gt = ge, le, gt

    def problem(self, value: float) -> str | None:
        if self.gt is not None and not value > self.gt:
            return f"must be greater than {self.gt:g}"
        if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
            if self.ge is not None and self.le is not None:
                return f"must be from {self.ge:g} to {self.le:g}"
            return f"must be at least {self.ge:g}" if self.ge is not None else f"must be at most {self.le:g}"
        return None


class MinLen:
    """A list with at least ``n`` items."""

    def __init__(self, n: int) -> None:
        self.n = n

    def problem(self, value: list[Any]) -> str | None:
        return None if len(value) >= self.n else f"must list at least {self.n} item{'s' if self.n > 1 else ''}"


class Check:
    """``func(value)`` on the converted value: returns it (possibly normalised) or raises ValueError."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class Before:
    """``func(raw)`` before the type is checked, e.g. to accept a shorthand; raises ValueError to refuse."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


# -- fields --------------------------------------------------------------------------------

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<required>"})()


class _Setting:
    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, repr: bool) -> None:
        self.default, self.default_factory, self.repr = default, default_factory, repr


def setting(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    """A field's default made fresh each time (``default_factory``) or hidden from ``repr``."""
    return _Setting(default, default_factory, repr)


class _Field:
    def __init__(self, name: str, hint: Any, declared: Any) -> None:
        self.name, self.hint = name, hint
        spec = declared if isinstance(declared, _Setting) else _Setting(declared, None, True)
        self.default, self.default_factory, self.repr = spec.default, spec.default_factory, spec.repr

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default


_FIELDS: dict[type, dict[str, _Field]] = {}


def _fields(cls: type[Settings]) -> dict[str, _Field]:
    """The class's fields, from its annotations, worked out once (on first use: the
    annotations may name classes defined after it)."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = get_type_hints(cls, include_extras=True)
        known = {
            name: _Field(name, hint, getattr(cls, name, _MISSING))
            for name, hint in hints.items()
            if not name.startswith("_") and get_origin(hint) is not ClassVar
        }
        _FIELDS[cls] = known
    return known


# -- the base class ------------------------------------------------------------------------


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(setting,))
class Settings:
    """A frozen settings object, checked when made; ``SettingsError`` lists every problem."""

    def __init__(self, **values: Any) -> None:
        problems: list[tuple[Location, str]] = []
        _build(type(self), values, (), problems, into=self)
        if problems:
            raise SettingsError(problems)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(_fields(cls))

    @property
    def fields_set(self) -> frozenset[str]:
        """The settings given explicitly, as opposed to left at their default."""
        given: frozenset[str] = self.__dict__["_given"]
        return given

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and checked; private (``_``) attributes are kept."""
        values = {name: getattr(self, name) for name in _fields(type(self))} | changes
        problems: list[tuple[Location, str]] = []
        copy: Self = _build(type(self), values, (), problems)
        if problems:
            raise SettingsError(problems)
        for name, value in self.__dict__.items():
            if name.startswith("_") and name != "_given":
                object.__setattr__(copy, name, value)
        object.__setattr__(copy, "_given", self.fields_set | changes.keys())
        return copy

    def _cross_checks(self) -> Iterator[tuple[str, str]]:
        """Checks across fields, run once every field is valid: yields ``(field, message)``."""
        return iter(())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} cannot be changed (settings are frozen; use replace())")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} cannot be deleted (settings are frozen)")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _fields(type(self)))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Settings)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in _fields(type(self)).values() if f.repr)
        return f"{type(self).__qualname__}({shown})"


def _build(
    cls: type[Settings], values: dict[str, Any], loc: Location, problems: list[tuple[Location, str]],
    into: Settings | None = None,
) -> Any:
    """Check ``values`` for ``cls`` and set them on ``into`` (a new object by default).
    Problems are appended; the object is only complete when none were added."""
    fields = _fields(cls)
    before = len(problems)
    for name in values:
        if name not in fields:
            problems.append(((*loc, name), _unknown(name, fields)))
    out = object.__new__(cls) if into is None else into
    for name, field in fields.items():
        if name in values:
            value = _convert(field.hint, values[name], (*loc, name), problems)
        elif field.required:
            problems.append(((*loc, name), "is required"))
            continue
        else:
            value = field.make_default()
        object.__setattr__(out, name, value)
    object.__setattr__(out, "_given", frozenset(values) & fields.keys())
    if len(problems) == before:
        problems.extend(((*loc, name), message) for name, message in out._cross_checks())
    return out


def _unknown(name: str, fields: dict[str, _Field]) -> str:
    from difflib import get_close_matches  # only when a profile is wrong

    close = get_close_matches(name, list(fields), n=1)
    return "is not a known setting" + (f" (did you mean {close[0]}?)" if close else "")


_BAD: Any = object()


def _convert(hint: Any, value: Any, loc: Location, problems: list[tuple[Location, str]]) -> Any:
    """``value`` as ``hint`` says, or ``_BAD`` with the problems appended."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _annotated(hint, value, loc, problems)
    if origin in (Union, types.UnionType):
        return _union(hint, value, loc, problems)
    if origin is Literal:
        choices = get_args(hint)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        return _refuse(problems, loc, f"must be {_either(_show(c) for c in choices)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            return _refuse(problems, loc, f"must be {_describe(hint)}, not {_kind(value)}")
        (item,) = get_args(hint)
        items = [_convert(item, v, (*loc, i), problems) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return _refuse(problems, loc, f"must be {_describe(hint)}, not {_kind(value)}")
        key_type, item = get_args(hint)
        assert key_type is str, "settings tables are keyed by strings"
        out: dict[str, Any] = {}
        for key, v in value.items():
            out[key] = _convert(item, v, (*loc, key), problems) if isinstance(key, str) \
                else _refuse(problems, loc, "keys must be strings")
        return _BAD if any(v is _BAD for v in out.values()) else out
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            return _refuse(problems, loc, f"must be a table of settings, not {_kind(value)}")
        before = len(problems)
        built = _build(hint, value, loc, problems)
        return built if len(problems) == before else _BAD
    return _scalar(hint, value, loc, problems)


def _scalar(hint: Any, value: Any, loc: Location, problems: list[tuple[Location, str]]) -> Any:
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str | PurePath):
        return Path(value)
    if hint is Any:
        return value
    if hint not in (str, bool, int, float, Path):
        raise TypeError(f"settings cannot hold {hint!r}")
    return _refuse(problems, loc, f"must be {_describe(hint)}, not {_kind(value)}")


def _annotated(hint: Any, value: Any, loc: Location, problems: list[tuple[Location, str]]) -> Any:
    base, *checks = get_args(hint)
    try:
        for check in checks:
            if isinstance(check, Before):
                value = check.func(value)
    except ValueError as exc:
        return _refuse(problems, loc, str(exc))
    value = _convert(base, value, loc, problems)
    if value is _BAD:
        return _BAD
    for check in checks:
        if isinstance(check, Check):
            try:
                value = check.func(value)
            except ValueError as exc:
                return _refuse(problems, loc, str(exc))
        elif not isinstance(check, Before):
            message = check.problem(value)
            if message:
                return _refuse(problems, loc, message)
    return value


def _union(hint: Any, value: Any, loc: Location, problems: list[tuple[Location, str]]) -> Any:
    options = [o for o in get_args(hint) if o is not type(None)]
    if value is None and len(options) < len(get_args(hint)):
        return None
    if len(options) == 1:  # X | None: X's own problems are the clearest
        return _convert(options[0], value, loc, problems)
    for option in options:
        tried: list[tuple[Location, str]] = []
        converted = _convert(option, value, loc, tried)
        if not tried:
            return converted
    return _refuse(problems, loc, f"must be {_either(_describe(o) for o in options)}, not {_kind(value)}")


def _refuse(problems: list[tuple[Location, str]], loc: Location, message: str) -> Any:
    problems.append((loc, message))
    return _BAD


_NAMES: dict[Any, str] = {
    str: "a string", int: "a whole number", float: "a number", bool: "true/false", Path: "a path (a string)",
}


def _describe(hint: Any) -> str:
    """What a value of ``hint`` is, for people (never the value itself)."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _describe(get_args(hint)[0])
    if origin is list:
        return f"a list of {_plural(get_args(hint)[0])}"
    if origin is dict:
        return "a table"
    if origin is Literal:
        return _either(_show(c) for c in get_args(hint))
    if isinstance(hint, type) and issubclass(hint, Settings):
        return "a table of settings"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    described = _describe(hint)
    return {"a string": "strings", "a whole number": "whole numbers", "a table of settings": "tables"}.get(
        described, described
    )


def _kind(value: Any) -> str:
    """The kind of value given, without the value (it may be a secret)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a " + type(value).__name__


def _either(words: Iterable[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


def _show(choice: object) -> str:
    return f'"{choice}"' if isinstance(choice, str) else repr(choice).lower()
