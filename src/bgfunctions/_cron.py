"""Cron expressions as Netlify's scheduled functions accept them (used by ``Config.schedule``).

Five fields (minute hour day-of-month month day-of-week) of ``*``, numbers, ranges ``a-b``,
steps ``*/n`` ``a-b/n`` ``a/n`` and lists ``a,b``; month and weekday names (``jan``, ``mon``, any
case); ``?`` in the two day fields; weekday 7 is Sunday; and the macros ``@yearly @monthly
@weekly @daily @midnight @hourly``. Netlify excludes ``@reboot`` and ``@annually``.
"""

from __future__ import annotations

import re

__all__ = ["MACROS", "check_cron"]

MACROS = ("@yearly", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    (
        "month", 1, 12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip
_ITEM = re.compile(r"^(?P<range>\*|\?|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[0-9]+))?$")


def check_cron(expression: str) -> None:
    """Raise ValueError saying which part of ``expression`` is not valid cron."""
    text = expression.strip()
    if text.startswith("@"):
        if text in ("@reboot", "@annually"):
            raise ValueError(
                f"{text} is not supported (Netlify takes the RFC extensions except @reboot and "
                "@annually)" + ("; use @yearly for once a year" if text == "@annually" else "")
            )
        if text not in MACROS:
            raise ValueError(f"Unknown cron macro; expected one of {' '.join(MACROS)}")
        return
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(
            "A cron expression has 5 fields (minute hour day-of-month month day-of-week) "
            f"or is one of {' '.join(MACROS)}; found {len(parts)} field(s)"
        )
    for part, (field, low, high, names) in zip(parts, _FIELDS, strict=True):
        for item in part.lower().split(","):
            _check_item(item, field, low, high, names)


def _check_item(item: str, field: str, low: int, high: int, names: tuple[str, ...]) -> None:
    match = _ITEM.match(item)
    problem = f"Invalid {field} field {item!r} (allowed: {low}-{high}, *, ranges, steps, lists)"
    if match is None:
        raise ValueError(problem)
    if match.group("step") is not None and int(match.group("step")) == 0:
        raise ValueError(f"Invalid {field} field {item!r}: a step must be at least 1")
    spec = match.group("range")
    if spec == "*":
        return
    if spec == "?":
        if field.startswith("day"):
            return
        raise ValueError(problem)
    bounds: list[int] = []
    for token in spec.split("-"):
        if token.isdigit():
            number = int(token)
        elif token in names:
            number = names.index(token) + low
        else:
            raise ValueError(problem)
        if not low <= number <= high:
            raise ValueError(f"Invalid {field} field {item!r}: {number} is outside {low}-{high}")
        bounds.append(number)
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise ValueError(f"Invalid {field} field {item!r}: a range must go from low to high")
