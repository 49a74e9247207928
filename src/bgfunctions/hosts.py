"""Which ``Host`` headers a server answers: the guard against DNS rebinding.

A page on ``attacker.example`` can make a browser resolve that name to 127.0.0.1 and then read
what a local server answers. The browser still sends ``Host: attacker.example``: refusing host
names the server does not expect closes that door, as Django's ``ALLOWED_HOSTS`` and
Starlette's ``TrustedHostMiddleware`` do.

Loopback names (``localhost``, ``127.0.0.1``, ``[::1]``) are always allowed, with any port; a
host adds to them. A pattern is one of:

- ``*``: any host at all (the check is off);
- ``example.com``, ``192.168.1.10``, ``[fe80::1]``: that host exactly;
- ``.example.com``: ``example.com`` and every name below it (Django's form);
- ``*.example.com``: every name below ``example.com``, not ``example.com`` itself (Starlette's).

Names compare without case and without one trailing dot. A ``Host`` that is missing, repeated
or malformed is refused unless ``*`` is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from bgfunctions.clock import Clock
from bgfunctions.ids import new_request_id
from bgfunctions.responses import Response

__all__ = ["LOOPBACK_HOSTS", "AllowedHosts", "host_name"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host names every server here answers."""

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:(?P<port>[0-9]{1,5}))?")
_SHOWN = 100  # characters of a refused Host header echoed back


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, without port or trailing dot; None when the
    header is not a host name, an IPv4 address or a bracketed IPv6 address (with a port)."""
    match = _HOST.fullmatch(header.strip().lower())
    if match is None:
        return None
    name = match.group("name")
    if name.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return None
    name = name[:-1] if name.endswith(".") else name
    return name if _NAME.fullmatch(name) else None


def _pattern(raw: str) -> str:
    """A pattern in canonical form; ValueError naming it when it is not one."""
    text = raw.strip().lower()
    if text == "*":
        return text
    for prefix in ("*.", "."):
        if text.startswith(prefix) and _NAME.fullmatch(text[len(prefix) :].rstrip(".")):
            return prefix + text[len(prefix) :].rstrip(".")
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 address such as ::1
    name = host_name(text)
    if name is None or name != text.rstrip("."):
        raise ValueError(
            "allowed_hosts: expected a host name ('example.com'), an address ('10.0.0.5', "
            f"'[::1]'), a domain ('.example.com' or '*.example.com') or '*', without a port; "
            f"got {raw!r}"
        )
    return name


class AllowedHosts:
    """The host names a server answers: :data:`LOOPBACK_HOSTS` plus ``extra`` patterns."""

    __slots__ = ("_any", "_exact", "_suffixes", "patterns")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        """``extra``: patterns (see the module's docstring) added to the loopback names.
        Raises ``ValueError`` naming a pattern that is not one."""
        if isinstance(extra, str):
            raise TypeError("allowed_hosts: expected a list of host patterns, not one string")
        added = [_pattern(raw) for raw in extra]
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys((*LOOPBACK_HOSTS, *added)))
        """Every pattern, loopback names first."""
        self._any = "*" in added
        self._exact = frozenset(p for p in self.patterns if not p.startswith(("*", ".")))
        # ".example.com" matches the domain itself, "*.example.com" only names below it.
        self._suffixes = tuple(p if p.startswith(".") else p[1:] for p in added if p[0] in ".*")
        apex = frozenset(p[1:] for p in added if p.startswith("."))
        self._exact = self._exact | apex

    def allows(self, headers: Iterable[str]) -> bool:
        """Whether a request whose ``Host`` header values are ``headers`` may be answered
        (exactly one value, naming an allowed host)."""
        if self._any:
            return True
        values = list(headers)
        if len(values) != 1:
            return False  # missing, or repeated and ambiguous
        name = host_name(values[0])
        if name is None:
            return False
        return name in self._exact or any(name.endswith(s) for s in self._suffixes)

    def refusal(self, headers: Iterable[str], clock: Clock, *, hint: str) -> Response:
        """The 400 for a request whose ``Host`` is not allowed, with a new request id.
        ``hint`` says how the server's owner allows more hosts."""
        values = list(headers)
        if len(values) == 1:
            found = f"Host {values[0][:_SHOWN]!r} is not allowed here"
        else:
            found = f"{len(values)} Host headers" if values else "no Host header"
        request_id = new_request_id(clock)
        return Response.text(
            f"Bad Request: {found}; expected one of "
            f"{', '.join(self.patterns)} ({hint}) - Request ID: {request_id}\n",
            status=400,
            headers={"x-nf-request-id": request_id},
        )
