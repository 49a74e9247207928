"""Helpers shared by several functions.

The leading underscore keeps this file from becoming a function; functions import it with
``from ._shared import ...``.
"""

from __future__ import annotations


def greeting(name: str) -> str:
    """A friendly greeting for ``name``."""
    return f"Hello, {name}!"


def money(cents: int) -> str:
    """``1999`` -> ``"$19.99"``."""
    return f"${cents // 100}.{cents % 100:02d}"
