"""How often an invocation is tried, and the limits each attempt runs under.

Both records default to Netlify's values: a background invocation is tried at most three times,
the second attempt 60 s after the first one ended and the third 120 s after the second one ended;
each attempt has 900 s (background) or 60 s (sync); bodies are limited to 256 KiB (background) or
6 MB (sync).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bgfunctions.errors import ConfigError

__all__ = ["Limits", "RetryPolicy", "module_retry"]


def _seconds(owner: str, field: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{owner}.{field}: expected a number of seconds; got {value!r} ({type(value).__name__})"
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        need = "a finite number above 0" if positive else "a finite number of 0 or more"
        raise ConfigError(f"{owner}.{field}: expected {need}; got {value!r}")
    return seconds


def _byte_count(owner: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{owner}.{field}: expected a whole number of bytes >= 0; got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When a failed background invocation is tried again.

    An attempt fails when the handler raises or runs out of time; a returned status never fails
    it. After failed attempt ``n`` the next one starts ``delays[n - 1]`` seconds after attempt
    ``n`` *ended*; after the last delay the invocation is ``failed``.
    """

    delays: Sequence[float] = (60.0, 120.0)
    """Seconds between the end of a failed attempt and the start of the next one, one per retry.
    Default ``(60.0, 120.0)``: Netlify's two retries. ``()`` means a single attempt."""

    def __post_init__(self) -> None:
        if isinstance(self.delays, (str, bytes)) or not isinstance(self.delays, Sequence):
            raise ConfigError(
                f"RetryPolicy.delays: expected a sequence of seconds; got {self.delays!r}"
            )
        delays = tuple(
            _seconds("RetryPolicy", f"delays[{i}]", d, positive=False)
            for i, d in enumerate(self.delays)
        )
        object.__setattr__(self, "delays", delays)

    @property
    def max_attempts(self) -> int:
        """Attempts in all: one more than the number of delays."""
        return len(self.delays) + 1

    def delay_after(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based); None after the last."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1; got {attempt}")
        return self.delays[attempt - 1] if attempt <= len(self.delays) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Time and size limits per attempt; Netlify's values by default."""

    background_timeout: float = 900.0
    """Seconds one attempt of a background function may run before it is timed out (900)."""

    sync_timeout: float = 60.0
    """Seconds a synchronous function may run before the client gets a 500 (60)."""

    background_payload: int = 262_144
    """Largest request body, in bytes, a background function accepts; above it: 413 (256 KiB)."""

    sync_payload: int = 6_000_000
    """Largest request body, in bytes, a synchronous function accepts; above it: 413 (6 MB)."""

    def __post_init__(self) -> None:
        for name in ("background_timeout", "sync_timeout"):
            value = _seconds("Limits", name, getattr(self, name), positive=True)
            object.__setattr__(self, name, value)
        for name in ("background_payload", "sync_payload"):
            _byte_count("Limits", name, getattr(self, name))

    def timeout(self, *, background: bool) -> float:
        """The time limit of one attempt of a background or synchronous function."""
        return self.background_timeout if background else self.sync_timeout

    def payload(self, *, background: bool) -> int:
        """The body limit of a background or synchronous function."""
        return self.background_payload if background else self.sync_payload


def module_retry(value: object, *, file: Path, function: str) -> RetryPolicy | None:
    """A function module's own retry schedule: its module-level ``retry``, when that is a
    :class:`RetryPolicy` (``retry = RetryPolicy(delays=(10, 30, 90))``). None when the module
    has no ``retry``, or when its ``retry`` is a function, class or module it imported or
    defined for itself (a decorator such as ``tenacity.retry``): a helper, not a setting.

    Anything else (a tuple of delays, a number, a dict, the ``RetryPolicy`` class not called)
    is a :class:`~bgfunctions.errors.ConfigError` naming the file, the key and what it found.
    """
    if value is None:
        return None
    if isinstance(value, RetryPolicy):
        return value
    if value is RetryPolicy:
        found = "the RetryPolicy class itself: call it, RetryPolicy(delays=(...))"
    elif inspect.isroutine(value) or inspect.isclass(value) or inspect.ismodule(value):
        return None  # the module's own helper named retry, not a schedule
    else:
        found = f"{value!r} ({type(value).__name__})"
    raise ConfigError(
        f"{file}: function {function!r}: 'retry' must be a bgfunctions.RetryPolicy, e.g. "
        f"retry = RetryPolicy(delays=(10, 30, 90)); found {found}"
    )
