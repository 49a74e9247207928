"""Fast copies of frozen, slotted dataclass instances with a few fields changed.

Records are copied on every state change of every attempt, and a retry's Context from the
previous attempt's. ``dataclasses.replace`` re-runs ``__init__`` (and its validation) and sets
each field through ``object.__setattr__``; a copier made here is a function written out field
by field for one class and one set of changed fields, which sets each slot through its own
descriptor: several times faster. Kept because it pays on the benchmarks' figures (issue 12,
benchmarks/README.md: "Speed tricks on trial").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace as _replace
from typing import Any, TypeVar

__all__ = ["copier", "evolve"]

_T = TypeVar("_T")

_COPIERS: dict[tuple[type[Any], tuple[str, ...]], Callable[..., Any]] = {}


def copier(cls: type[Any], changed: tuple[str, ...]) -> Callable[..., Any]:
    """``copy(obj, *values)``: a copy of ``obj`` (an instance of the slotted ``cls``) with the
    fields ``changed`` set to ``values``, in that order; no ``__init__``, no validation."""
    slots: tuple[str, ...] = cls.__slots__
    unknown = [name for name in changed if name not in slots]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    args = ", ".join(f"v_{name}" for name in changed)
    lines = [
        f"def build(new_, cls, replace, {', '.join(f'set_{name}' for name in slots)}):",
        f"    def copy(obj, {args}):",
        "        if type(obj) is not cls:  # a subclass: its own __init__ and fields",
        f"            return replace(obj, **dict(zip({changed!r}, ({args},))))",
        "        new = new_(cls)",
    ]
    for name in slots:
        value = f"v_{name}" if name in changed else f"obj.{name}"
        lines.append(f"        set_{name}(new, {value})")
    lines += ["        return new", "    return copy"]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # the class's own field names only
    setters = [cls.__dict__[name].__set__ for name in slots]
    copy: Callable[..., Any] = namespace["build"](object.__new__, cls, _replace, *setters)
    return copy


def evolve(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace(obj, **changes)`` without ``__init__``, through a cached copier."""
    cls = type(obj)
    if "__slots__" not in cls.__dict__:  # a subclass that declares no slots of its own
        return _replace(obj, **changes)  # type: ignore[type-var]
    key = (cls, tuple(changes))
    copy = _COPIERS.get(key)
    if copy is None:
        copy = _COPIERS[key] = copier(*key)
    result: _T = copy(obj, *changes.values())
    return result
