"""Request ids: ULIDs, sortable by time and unguessable.

A ULID is 26 characters of Crockford base32: a 48-bit millisecond timestamp then 80 random bits
from :mod:`secrets`. Netlify's local dev server makes the same kind of id for ``x-nf-request-id``.
Ids made in the same millisecond by this process increase (the random part is incremented), so
sorting ids sorts invocations by acceptance order even within one millisecond.
"""

from __future__ import annotations

import secrets
import threading

from bgfunctions.clock import Clock, SystemClock

__all__ = ["new_request_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_TIME = (1 << 48) - 1
_RANDOM_BITS = 80

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


# Two base32 characters per 10 bits: 13 lookups encode the 130-bit (zero-padded) ULID.
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))


def _encode(value: int) -> str:
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_request_id(clock: Clock | None = None) -> str:
    """A new ULID whose timestamp is ``clock.now()`` (the system clock when not given).

    Raises ``ValueError`` when the clock reads before 1970 or after the year 10889.
    """
    global _last_ms, _last_random
    now = (clock if clock is not None else SystemClock()).now()
    ms = int(now * 1000)
    if not 0 <= ms <= _MAX_TIME:
        raise ValueError(f"a ULID needs a time from 1970 to 10889, the clock reads {now!r}")
    with _lock:
        if ms == _last_ms and _last_random < (1 << _RANDOM_BITS) - 1:
            # Same millisecond: increment so ids stay strictly increasing.
            random = _last_random + 1
        else:
            # A new millisecond, or (virtual clocks) an earlier one: ids follow that clock.
            random = secrets.randbits(_RANDOM_BITS)
        _last_ms, _last_random = ms, random
    return _encode((ms << _RANDOM_BITS) | random)
