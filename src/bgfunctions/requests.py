"""The :class:`Request` a handler receives: a small, immutable, fully-buffered HTTP request.

A Request is cheap to build in a test (``Request("POST", "/process", json={"a": 1})``), carries
its whole body as bytes (background payloads are small: 256 KB at most), and turns into a
JSON-able dict and back (``to_dict`` / ``from_dict``) so a journal can store it and a worker
process can receive it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json as _json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

from bgfunctions.datastructures import Headers, HeadersInit, QueryParams
from bgfunctions.errors import InvalidJSONError, RequestError

__all__ = ["Request", "parse_content_type_charset", "parse_cookie_header"]


class _Missing:
    """The type of the "json= not given" marker (``None`` is a valid JSON value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Whitespace and control characters never appear in a request target on the wire.
_BAD_URL = re.compile(r"[\x00-\x20\x7f]")
_ABSOLUTE = re.compile(r"(?i)(https?)://([^/?#]+)([^?#]*)")
_DICT_KEYS_ORDER: Final = ("method", "url", "headers", "body", "client")
_DICT_KEYS = frozenset(_DICT_KEYS_ORDER)
# The escapes http.cookies._quote writes inside a quoted cookie value: \ooo octal or \c.
_ESCAPE = re.compile(r"\\(?:([0-3][0-7]{2})|(.))")
_PREVIEW = 40  # bytes of a body quoted in an InvalidJSONError


def parse_content_type_charset(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type value, or None (quotes removed)."""
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').strip() or None
    return None


def parse_cookie_header(header: str) -> dict[str, str]:
    """Parse a Cookie header leniently: ``a=1; b="x y"`` -> ``{"a": "1", "b": "x y"}``.

    Browsers send cookies that ``http.cookies`` rejects (``{}``, ``[]``, spaces), so this does not
    use it: pairs without ``=`` or with an empty name are skipped, surrounding double quotes are
    removed along with the backslash escapes :mod:`http.cookies` writes in them (``\\073`` is
    ``;``), and when a name repeats the first one wins (browsers send the most specific first).
    """
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _ESCAPE.sub(_unescape, value[1:-1])
        cookies.setdefault(name, value)
    return cookies


def _unescape(match: re.Match[str]) -> str:
    octal, char = match.groups()
    return chr(int(octal, 8)) if octal else char


class Request:
    """An HTTP request as a handler sees it: method, URL, headers and the whole body.

    ``url`` is kept exactly as given: a path with an optional query (``/process?x=1``) or an
    absolute ``http``/``https`` URL. ``raw_path`` is its path as given (percent-encoded);
    ``path`` is that path percent-decoded as UTF-8 (as ASGI's ``scope["path"]`` and WSGI's
    ``PATH_INFO`` are). ``query_string`` is the text after ``?`` (without any ``#fragment``) and
    ``query`` the parsed :class:`QueryParams`.

    A Request is immutable. Invalid input (a method that is not an HTTP token, a URL with spaces
    or control characters, a header with CR/LF) raises :class:`~bgfunctions.errors.RequestError`.
    """

    __slots__ = ("_body", "_client", "_headers", "_method", "_query_string", "_raw_path", "_url")

    _method: str
    _url: str
    _raw_path: str
    _query_string: str
    _headers: Headers
    _body: bytes
    _client: str | None

    def __init__(
        self,
        method: str = "GET",
        url: str = "/",
        *,
        headers: HeadersInit | None = None,
        body: bytes | bytearray | memoryview | str | None = None,
        json: object = _MISSING,
        client: str | None = None,
    ) -> None:
        """Build a request.

        ``body`` may be bytes or a str (encoded as UTF-8). ``json=value`` instead serializes
        ``value`` as the body (compact UTF-8 JSON) and sets ``content-type: application/json``
        unless ``headers`` already has a content type. ``client`` is the peer's address.
        """
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            raise RequestError(f"invalid request method {method!r}: expected an HTTP token")
        raw_path, query_string = _split_url(url)
        try:
            hdrs = Headers(headers)
        except ValueError as exc:
            raise RequestError(f"invalid request header: {exc}") from None
        if not isinstance(json, _Missing):
            if body is not None:
                raise TypeError("Request() takes body= or json=, not both")
            data = _encode_json(json)
            if "content-type" not in hdrs:
                hdrs = Headers([*hdrs.raw, ("content-type", "application/json")])
        elif body is None:
            data = b""
        elif isinstance(body, str):
            data = body.encode("utf-8")
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        else:
            raise TypeError(f"Request body must be bytes or str, found {type(body).__name__}")
        if client is not None and not isinstance(client, str):
            raise TypeError(f"Request client must be a str or None, found {client!r}")
        setattr_ = object.__setattr__
        setattr_(self, "_method", method.upper())
        setattr_(self, "_url", url)
        setattr_(self, "_raw_path", raw_path)
        setattr_(self, "_query_string", query_string)
        setattr_(self, "_headers", hdrs)
        setattr_(self, "_body", data)
        setattr_(self, "_client", client)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Request is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Request is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy would restore the slots with setattr, which an immutable Request refuses.
        return (_rebuild, (self._method, self._url, self._headers.raw, self._body, self._client))

    @property
    def method(self) -> str:
        """The method, upper-cased (``"GET"``, ``"POST"``, ...)."""
        return self._method

    @property
    def url(self) -> str:
        """The URL exactly as given: a path with query, or an absolute URL."""
        return self._url

    @property
    def raw_path(self) -> str:
        """The URL's path as given, still percent-encoded."""
        return self._raw_path

    @property
    def path(self) -> str:
        """The URL's path, percent-decoded as UTF-8 (invalid sequences become U+FFFD)."""
        return unquote(self._raw_path)

    @property
    def query_string(self) -> str:
        """The URL's query without the ``?`` (``""`` when there is none)."""
        return self._query_string

    @property
    def query(self) -> QueryParams:
        """The parsed query parameters."""
        return QueryParams(self._query_string)

    @property
    def headers(self) -> Headers:
        """The request headers (immutable, case-insensitive, multi-valued)."""
        return self._headers

    @property
    def body(self) -> bytes:
        """The whole request body."""
        return self._body

    @property
    def client(self) -> str | None:
        """The address of the peer that sent the request, when the host knows it."""
        return self._client

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies of the ``Cookie`` header(s) (a new dict; see :func:`parse_cookie_header`)."""
        return parse_cookie_header("; ".join(self._headers.get_list("cookie")))

    def text(self) -> str:
        """The body decoded with the Content-Type's charset (UTF-8 when none is given).

        Raises :class:`~bgfunctions.errors.RequestError` naming the charset (and the byte offset)
        when the charset is unknown or is not a text encoding, or the bytes do not decode.
        """
        charset = parse_content_type_charset(self._headers.get("content-type")) or "utf-8"
        try:
            codecs.lookup(charset)
            return self._body.decode(charset)
        except LookupError:
            raise RequestError(
                f"cannot decode the request body: the content-type charset {charset!r} is not a "
                "known text encoding"
            ) from None
        except UnicodeError as exc:
            start = getattr(exc, "start", None)
            where = f" at byte offset {start}" if isinstance(start, int) else ""
            reason = getattr(exc, "reason", str(exc))
            raise RequestError(
                f"cannot decode the request body as {charset!r}{where}: {reason}"
            ) from None

    def json(self) -> Any:
        """The body parsed as JSON (decoded as :meth:`text` does).

        Raises :class:`~bgfunctions.errors.InvalidJSONError` with the line and column of the
        error and the first bytes of the body; ``NaN``/``Infinity`` are refused (not JSON).
        """
        text = self.text()
        preview = self._body[:_PREVIEW]
        suffix = "..." if len(self._body) > _PREVIEW else ""
        if not text.strip():
            raise InvalidJSONError("the request body is not JSON: it is empty")
        try:
            return _json.loads(text, parse_constant=_refuse_constant)
        except _json.JSONDecodeError as exc:
            raise InvalidJSONError(
                f"the request body is not JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}; body starts with {preview!r}{suffix}"
            ) from None
        except (ValueError, RecursionError) as exc:
            reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidJSONError(
                f"the request body is not JSON: {reason}; body starts with {preview!r}{suffix}"
            ) from None

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict (the body in base64) that :meth:`from_dict` turns back into this."""
        return {
            "method": self._method,
            "url": self._url,
            "headers": [[k, v] for k, v in self._headers.raw],
            "body": base64.b64encode(self._body).decode("ascii"),
            "client": self._client,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Request:
        """Rebuild a Request from :meth:`to_dict`'s output; a malformed dict is a RequestError."""
        if not isinstance(data, Mapping):
            raise RequestError(f"Request.from_dict expected a mapping, found {data!r}")
        unknown = sorted(set(data) - _DICT_KEYS)
        missing = sorted(_DICT_KEYS - set(data))
        if unknown or missing:
            raise RequestError(
                f"Request.from_dict expected the keys {sorted(_DICT_KEYS)}; "
                f"missing {missing}, unknown {unknown}"
            )
        method, url, headers, body, client = (data[k] for k in _DICT_KEYS_ORDER)
        if not isinstance(method, str) or not isinstance(url, str):
            raise RequestError(f"Request.from_dict: method and url must be str, found {data!r}")
        if not isinstance(body, str):
            raise RequestError(f"Request.from_dict: body must be a base64 str, found {body!r}")
        if client is not None and not isinstance(client, str):
            raise RequestError(f"Request.from_dict: client must be a str or null, found {client!r}")
        if not isinstance(headers, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 for h in headers
        ):
            raise RequestError(
                f"Request.from_dict: headers must be a list of [name, value], found {headers!r}"
            )
        try:
            raw = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise RequestError(
                f"Request.from_dict: body is not valid base64: {body[:40]!r}"
            ) from None
        return cls(method, url, headers=[(h[0], h[1]) for h in headers], body=raw, client=client)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self._method == other._method
            and self._url == other._url
            and self._headers == other._headers
            and self._body == other._body
            and self._client == other._client
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Request({self._method!r}, {self._url!r}, headers={self._headers!r}, "
            f"body=<{len(self._body)} bytes>, client={self._client!r})"
        )


def _rebuild(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes, client: str | None
) -> Request:
    return Request(method, url, headers=headers, body=body, client=client)


def _split_url(url: object) -> tuple[str, str]:
    """Validate a request URL and return its (raw path, query string)."""
    if not isinstance(url, str):
        raise RequestError(f"a request URL must be a str, found {type(url).__name__}: {url!r}")
    bad = _BAD_URL.search(url)
    if bad is not None:
        raise RequestError(
            f"invalid request URL {url!r}: character {bad.group()!r} at index {bad.start()} "
            "(spaces and control characters must be percent-encoded)"
        )
    if url.startswith("/"):
        # Split by hand: urlsplit would read "//x/y" as a host.
        rest = url
    else:
        absolute = _ABSOLUTE.match(url)
        if absolute is None:
            raise RequestError(
                f"invalid request URL {url!r}: expected a path starting with '/' or an absolute "
                "http:// or https:// URL"
            )
        rest = url[absolute.start(3) :] or "/"
    rest = rest.partition("#")[0]
    raw_path, _, query_string = rest.partition("?")
    return raw_path or "/", query_string


def _encode_json(value: object) -> bytes:
    try:
        text = _json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Request(json=...) needs a JSON-serializable value: {exc}") from None
    return text.encode("utf-8")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")
