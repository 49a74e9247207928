"""The :class:`Context` of one attempt of one invocation, its :class:`Cookies`, and its records.

A Context mirrors Netlify's v2 ``context`` (request id, params, ip, geo, site, deploy, account,
server, url, cookies, ``waitUntil``, ``json``, ``log``) with Python names, plus what a background
function needs: the ``attempt`` number (1-based; every attempt shares the request id), the
``deadline`` on the injected ``clock``, and a ``sleep`` that never oversleeps that deadline.

Netlify's platform fills ip, geo, site, deploy and account from ``x-nf-*`` request headers. A
client can send those headers too, so :meth:`Context.from_request` reads them only when the host
says a trusted proxy is in front (``trust_proxy=True``); a client's ``x-nf-request-id`` is never
used, since the library makes every request id. Netlify gives background functions no Identity
``clientContext``; bgfunctions has no identity data at all, so no Context carries any.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.cookies import CookieError, Morsel, SimpleCookie
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from bgfunctions._slots import copier
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.datastructures import Headers
from bgfunctions.errors import DeadlineExceeded
from bgfunctions.requests import Request, parse_cookie_header
from bgfunctions.responses import Response
from bgfunctions.steps import Steps

__all__ = [
    "Account",
    "Context",
    "Cookies",
    "Country",
    "Deploy",
    "Geo",
    "Server",
    "Site",
    "Subdivision",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Country:
    """A country of :class:`Geo`."""

    code: str | None = None
    """ISO 3166 code, such as ``"PT"``."""
    name: str | None = None
    """English name, such as ``"Portugal"``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Subdivision:
    """A country subdivision (state, region) of :class:`Geo`."""

    code: str | None = None
    """ISO 3166-2 code without the country, such as ``"CA"``."""
    name: str | None = None
    """English name, such as ``"California"``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Geo:
    """Where the client is, as the platform's ``x-nf-geo`` header says (all fields optional)."""

    city: str | None = None
    """City name."""
    country: Country = Country()
    """Country code and name (fields ``None`` when unknown)."""
    postal_code: str | None = None
    """Postal code."""
    subdivision: Subdivision = Subdivision()
    """Subdivision code and name (fields ``None`` when unknown)."""
    latitude: float | None = None
    """Latitude in degrees."""
    longitude: float | None = None
    """Longitude in degrees."""
    timezone: str | None = None
    """IANA time zone name, such as ``"Europe/Lisbon"``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """The site the function belongs to."""

    id: str | None = None
    """Site id (``x-nf-site-id`` behind a trusted proxy)."""
    name: str | None = None
    """Site name, when the host supplies it."""
    url: str | None = None
    """Site URL, when the host supplies it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deploy:
    """The deploy that serves the function (empty strings when unknown, as on Netlify)."""

    context: str = ""
    """Deploy context: ``"production"``, ``"deploy-preview"``, ``"dev"``, ..."""
    id: str = ""
    """Deploy id."""
    published: bool = False
    """Whether this deploy is the published one (header value ``"1"``)."""
    skew_protection_token: str | None = None
    """Skew protection token, when the host supplies one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The account that owns the site."""

    id: str | None = None
    """Account id (``x-nf-account-id`` behind a trusted proxy)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """The server running the function."""

    region: str | None = None
    """Region name, when the host supplies it."""


_SAME_SITE = {"strict": "Strict", "lax": "Lax", "none": "None"}
# Attribute values are written verbatim into Set-Cookie: a ';' or a control character would add
# attributes or headers of the caller's choosing.
_BAD_ATTRIBUTE = re.compile(r"[;\x00-\x1f\x7f]")
_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_LOCALHOST = SplitResult("http", "localhost", "/", "", "")


def _attribute(cookie: str, key: str, value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or _BAD_ATTRIBUTE.search(value)):
        raise ValueError(
            f"cookie {cookie!r}: {key} must be a str without ';' or control characters, "
            f"found {value!r}"
        )
    return value


class Cookies:
    """The request's cookies, and the cookies a handler sets or deletes for its response.

    ``get`` reads the request's cookies, updated by this attempt's own ``set``/``delete``
    calls. ``set_cookie_headers()`` gives the ``Set-Cookie`` values that the App appends to a
    synchronous function's response (a background function's response is never sent, so its
    cookie changes have no effect). Setting the same (name, domain, path) again replaces the
    earlier value.
    """

    __slots__ = ("_changes", "_parsed", "_source")

    def __init__(self, request_cookies: Mapping[str, str] | None = None) -> None:
        """Start from the request's cookies (see ``Request.cookies``)."""
        self._parsed: dict[str, str] | None = dict(request_cookies or {})
        self._source: Headers | None = None
        # (name, domain, path) -> (new value or None when deleted, Set-Cookie value)
        self._changes: dict[tuple[str, str | None, str | None], tuple[str | None, str]] = {}

    @classmethod
    def _of(cls, request: Request) -> Cookies:
        """The cookies of ``request``, its ``Cookie`` header parsed on first read (most
        attempts read none)."""
        cookies = _new_cookies(cls)
        cookies._parsed = None
        # The headers, not the request: a Context kept between attempts must not keep the
        # body (a durable journal holds it meanwhile).
        cookies._source = request.headers
        cookies._changes = {}
        return cookies

    @property
    def _request(self) -> dict[str, str]:
        """The request's cookies (parsed once, never changed after)."""
        if self._parsed is None:
            assert self._source is not None
            self._parsed = parse_cookie_header("; ".join(self._source.get_list("cookie")))
            self._source = None
        return self._parsed

    def get(self, name: str) -> str | None:
        """The cookie's value: the last one set here, else the request's; None when absent."""
        for (changed, _, _), (value, _) in reversed(self._changes.items()):
            if changed == name:
                return value
        return self._request.get(name)

    def set(
        self,
        name: str,
        value: str,
        *,
        expires: datetime | str | None = None,
        max_age: int | None = None,
        domain: str | None = None,
        path: str | None = None,
        secure: bool = False,
        http_only: bool = False,
        same_site: str | None = None,
    ) -> None:
        """Set a cookie on the response.

        ``expires`` is an aware ``datetime`` (a naive one is taken as UTC) or an HTTP date
        string; ``max_age`` is in seconds; ``same_site`` is ``"Strict"``, ``"Lax"`` or ``"None"``
        (any case; ``"None"`` needs ``secure=True``, or browsers drop the cookie). The value is
        quoted as :mod:`http.cookies` does when it holds characters a cookie cannot.
        """
        if not isinstance(value, str):
            raise TypeError(f"cookie {name!r}: value must be a str, found {type(value).__name__}")
        morsel = _morsel(name, value)
        if isinstance(expires, datetime):
            when = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
            morsel["expires"] = format_datetime(when.astimezone(timezone.utc), usegmt=True)
        elif expires is not None:
            morsel["expires"] = _attribute(name, "expires", expires)
        if max_age is not None:
            if isinstance(max_age, bool) or not isinstance(max_age, int):
                raise ValueError(f"cookie {name!r}: max_age must be an int, found {max_age!r}")
            morsel["max-age"] = str(max_age)
        if same_site is not None:
            normalized = _SAME_SITE.get(str(same_site).lower())
            if normalized is None:
                raise ValueError(
                    f"cookie {name!r}: same_site must be 'Strict', 'Lax' or 'None', "
                    f"found {same_site!r}"
                )
            if normalized == "None" and not secure:
                raise ValueError(f"cookie {name!r}: same_site='None' needs secure=True")
            morsel["samesite"] = normalized
        self._record(name, value, morsel, domain, path, secure=secure, http_only=http_only)

    def delete(self, name: str, *, domain: str | None = None, path: str | None = None) -> None:
        """Expire the cookie in the browser (give the domain and path it was set with)."""
        morsel = _morsel(name, "")
        morsel["expires"] = _EPOCH
        morsel["max-age"] = "0"
        self._record(name, None, morsel, domain, path, secure=False, http_only=False)

    def set_cookie_headers(self) -> list[str]:
        """The ``Set-Cookie`` header values for this attempt's changes, in order."""
        return [header for _, header in self._changes.values()]

    def _record(
        self,
        name: str,
        value: str | None,
        morsel: Morsel[str],
        domain: str | None,
        path: str | None,
        *,
        secure: bool,
        http_only: bool,
    ) -> None:
        if _attribute(name, "domain", domain) is not None:
            morsel["domain"] = domain
        if _attribute(name, "path", path) is not None:
            morsel["path"] = path
        if secure:
            morsel["secure"] = True
        if http_only:
            morsel["httponly"] = True
        key = (name, domain, path)
        # Re-insert so that get() and the header order see the latest change last.
        self._changes.pop(key, None)
        self._changes[key] = (value, morsel.OutputString())

    def __repr__(self) -> str:
        return f"Cookies(request={sorted(self._request)!r}, changed={len(self._changes)})"


def _morsel(name: str, value: str) -> Morsel[str]:
    plain, quoted = SimpleCookie().value_encode(value)
    morsel: Morsel[str] = Morsel()
    try:
        morsel.set(name, plain, quoted)
    except CookieError as exc:
        raise ValueError(f"invalid cookie name {name!r}: {exc}") from None
    return morsel


# Frozen, so one empty instance of each serves every Context that has nothing to fill in.
_NO_SITE = Site()
_NO_GEO = Geo()
_NO_DEPLOY = Deploy()
_NO_ACCOUNT = Account()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Context:
    """What a handler knows about one attempt of one invocation (see the module docstring).

    Build one with :meth:`from_request`, or directly: ``Context(request_id="r1",
    function="process")``. ``url`` is a :class:`urllib.parse.SplitResult` of the request's
    absolute URL (``scheme``, ``netloc``, ``path``, ``query``; no fragment).
    """

    request_id: str
    """The invocation's id; the same for every attempt."""
    function: str
    """The function's name."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Route parameters (``:name`` groups, numeric keys for unnamed ones); read-only."""
    ip: str | None = None
    """The client's IP address: the peer, or ``x-nf-client-connection-ip`` behind a proxy."""
    geo: Geo = Geo()
    """Where the client is (``x-nf-geo`` behind a trusted proxy)."""
    site: Site = Site()
    """The site."""
    deploy: Deploy = Deploy()
    """The deploy."""
    account: Account = Account()
    """The account."""
    server: Server = Server()
    """The server."""
    url: SplitResult = _LOCALHOST
    """The request's absolute URL."""
    cookies: Cookies = field(default_factory=Cookies)
    """The request's cookies and the ones this attempt sets."""
    attempt: int = 1
    """Which attempt this is, from 1."""
    deadline: float | None = None
    """When this attempt runs out of time, in epoch seconds on ``clock``; None for no limit."""
    clock: Clock = field(default_factory=SystemClock)
    """The clock the executor runs this attempt on (virtual in tests)."""
    background: bool = False
    """Whether the function is a background function."""
    next_handler: Callable[..., Any] | None = field(default=None, repr=False)
    """What ``next()`` calls, when the host supplies one."""
    rewrite_handler: Callable[..., Any] | None = field(default=None, repr=False)
    """What ``rewrite()`` calls, when the host supplies one."""
    step: Steps = field(default_factory=Steps, repr=False, compare=False)
    """Durable steps: ``context.step.run("charge", charge, order)`` runs once per invocation,
    its result replayed on later attempts (see docs/workflows.md). Executors give each attempt
    one that stores steps in the journal; a Context built by hand keeps them in memory."""
    _log: logging.LoggerAdapter[logging.Logger] | None = field(
        init=False, repr=False, default=None, compare=False
    )
    _pending: list[Awaitable[object]] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        params = _checked(self.attempt, self.deadline, self.params)
        object.__setattr__(self, "params", params)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``bgfunctions.functions.NAME``) whose records carry ``function``,
        ``request_id`` and ``attempt`` as extra attributes."""
        if self._log is None:
            # Made on first use: most attempts never log through it.
            logger = logging.getLogger(f"bgfunctions.functions.{self.function}")
            extra = {
                "function": self.function,
                "request_id": self.request_id,
                "attempt": self.attempt,
            }
            object.__setattr__(self, "_log", logging.LoggerAdapter(logger, extra))
        assert self._log is not None
        return self._log

    @classmethod
    def from_request(
        cls,
        request: Request,
        *,
        request_id: str,
        function: str,
        params: Mapping[str, str] | None = None,
        trust_proxy: bool = False,
        attempt: int = 1,
        deadline: float | None = None,
        clock: Clock | None = None,
        background: bool = False,
        site: Site | None = None,
        next_handler: Callable[..., Any] | None = None,
        rewrite_handler: Callable[..., Any] | None = None,
        step: Steps | None = None,
    ) -> Context:
        """The Context of one attempt of ``request``.

        With ``trust_proxy=True`` the ``x-nf-*`` headers fill ``ip``, ``geo``, ``site.id`` (when
        ``site`` has none), ``deploy`` and ``account``; malformed values are ignored. Otherwise
        ``ip`` is ``request.client`` and those headers are ignored.
        """
        h = request.headers
        site = site or _NO_SITE
        ip, geo, deploy, account = request.client, _NO_GEO, _NO_DEPLOY, _NO_ACCOUNT
        if trust_proxy:
            ip = h.get("x-nf-client-connection-ip") or ip
            geo = _parse_geo(h.get("x-nf-geo"))
            if site.id is None and h.get("x-nf-site-id"):
                site = Site(id=h["x-nf-site-id"], name=site.name, url=site.url)
            deploy = Deploy(
                context=h.get("x-nf-deploy-context", ""),
                id=h.get("x-nf-deploy-id", ""),
                published=h.get("x-nf-deploy-published") == "1",
            )
            account = Account(id=h.get("x-nf-account-id") or None)
        values: tuple[Any, ...] = (
            request_id,
            function,
            _checked(attempt, deadline, params or {}),
            ip,
            geo,
            site,
            deploy,
            account,
            _SERVER,
            _absolute_url(request),
            Cookies._of(request),
            attempt,
            deadline,
            clock if clock is not None else SystemClock(),
            background,
            next_handler,
            rewrite_handler,
            step if step is not None else Steps(),
            None,
            [],
        )
        if cls is not Context:  # a subclass: its own __init__ and fields
            return cls(**dict(zip(_FIELDS[:-2], values[:-2], strict=True)))
        # One per attempt: set slot by slot, as __init__ would, without its object.__setattr__
        # per field (4 % of the instructions of an async no-op's request on the host loop).
        return _fresh(_BLANK_CONTEXT, *values)

    def _for_attempt(self, attempt: int, deadline: float | None, step: Steps) -> Context:
        """This Context for another attempt of the same invocation: the same request data,
        fresh cookie changes, no ``wait_until`` work, no logger yet, ``step`` for its steps.
        For executors; a copy, no re-parsing of the request. A copier rather than
        ``dataclasses.replace``: a retry costs about 50,000 fewer instructions
        (benchmarks/README.md, issue 12)."""
        cookies = _new_cookies(Cookies)
        cookies._parsed = self.cookies._parsed  # never changed once parsed
        cookies._source = self.cookies._source
        cookies._changes = {}
        return _next_attempt(self, cookies, attempt, deadline, None, [], step)

    def remaining_time(self) -> float | None:
        """Seconds left before the deadline (never negative); None when there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock.now())

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the clock (for sync handlers).

        A wait that would pass the deadline waits until the deadline, then raises
        :class:`~bgfunctions.errors.DeadlineExceeded`.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"Context.sleep() needs a number of seconds, found {seconds!r}")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"Context.sleep() needs a finite number >= 0, found {seconds!r}")
        remaining = self.remaining_time()
        if remaining is not None and seconds > remaining:
            self.clock.sleep(remaining)
            raise DeadlineExceeded(
                f"function {self.function!r} (request {self.request_id}, attempt "
                f"{self.attempt}) asked to sleep {seconds:g} s with {remaining:g} s left "
                "before its deadline"
            )
        self.clock.sleep(seconds)

    def wait_until(self, awaitable: Awaitable[object]) -> None:
        """Make this attempt wait for ``awaitable`` as well (Netlify's ``waitUntil``).

        The attempt ends when the handler and every such task have settled, within the same
        time limit; a task that fails is logged and does not make the attempt fail.
        """
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"Context.wait_until() needs an awaitable (a coroutine, task or future), "
                f"found {type(awaitable).__name__}"
            )
        self._pending.append(awaitable)

    def _take_pending(self) -> list[Awaitable[object]]:
        """For executors: the awaitables registered with ``wait_until`` so far, then forget them."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def json(self, value: object) -> Response:
        """``Response.json(value)``: a 200 JSON response."""
        return Response.json(value)

    def next(self, *args: Any, **kwargs: Any) -> Any:
        """Call the host's ``next_handler``; raises NotImplementedError when there is none."""
        if self.next_handler is None:
            raise NotImplementedError(
                "context.next() is an Edge Functions feature; serverless and background "
                f"functions (here {self.function!r}) have no next handler unless the host "
                "supplies next_handler"
            )
        return self.next_handler(*args, **kwargs)

    def rewrite(self, *args: Any, **kwargs: Any) -> Any:
        """Call the host's ``rewrite_handler``; raises NotImplementedError when there is none."""
        if self.rewrite_handler is None:
            raise NotImplementedError(
                "context.rewrite() is a deprecated Edge Functions feature; serverless and "
                f"background functions (here {self.function!r}) cannot rewrite unless the host "
                "supplies rewrite_handler"
            )
        return self.rewrite_handler(*args, **kwargs)


def _checked(attempt: int, deadline: float | None, params: Mapping[str, str]) -> Mapping[str, str]:
    """``params`` as a read-only copy, once ``attempt``, ``deadline`` and ``params`` are valid."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"Context attempt must be an int >= 1, found {attempt!r}")
    if deadline is not None and not math.isfinite(deadline):
        raise ValueError(f"Context deadline must be finite or None, found {deadline!r}")
    for key, value in params.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise ValueError(f"Context params must map str to str, found {key!r}: {value!r}")
    return MappingProxyType(dict(params))


_FIELDS = (
    "request_id", "function", "params", "ip", "geo", "site", "deploy", "account", "server",
    "url", "cookies", "attempt", "deadline", "clock", "background", "next_handler",
    "rewrite_handler", "step", "_log", "_pending",
)  # fmt: skip
_fresh: Callable[..., Context] = copier(Context, _FIELDS)
_BLANK_CONTEXT = Context(request_id="", function="")
_SERVER = _BLANK_CONTEXT.server
_new_cookies = object.__new__
_next_attempt: Callable[
    [Context, Cookies, int, float | None, None, list[Awaitable[object]], Steps], Context
] = copier(Context, ("cookies", "attempt", "deadline", "_log", "_pending", "step"))


def _absolute_url(request: Request) -> SplitResult:
    if request.url.startswith("/"):
        host = request.headers.get("host") or "localhost"
        return SplitResult("http", host, request.raw_path, request.query_string, "")
    parts = urlsplit(request.url)
    return parts._replace(fragment="")


def _text(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _number(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _parse_geo(header: str | None) -> Geo:
    """Decode ``x-nf-geo`` (base64 JSON); anything malformed is ignored, field by field."""
    if not header:
        return Geo()
    try:
        padded = header.strip() + "=" * (-len(header.strip()) % 4)
        data = json.loads(
            base64.b64decode(padded, altchars=b"-_" if "-" in padded or "_" in padded else None)
        )
    except (binascii.Error, ValueError, RecursionError):
        return Geo()
    if not isinstance(data, dict):
        return Geo()
    country = data.get("country")
    country = country if isinstance(country, dict) else {}
    subdivision = data.get("subdivision")
    subdivision = subdivision if isinstance(subdivision, dict) else {}
    return Geo(
        city=_text(data, "city"),
        country=Country(code=_text(country, "code"), name=_text(country, "name")),
        postal_code=_text(data, "postalCode"),
        subdivision=Subdivision(code=_text(subdivision, "code"), name=_text(subdivision, "name")),
        latitude=_number(data, "latitude"),
        longitude=_number(data, "longitude"),
        timezone=_text(data, "timezone"),
    )
