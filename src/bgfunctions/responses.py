"""The :class:`Response` a synchronous handler returns, and the conversion of return values.

A handler may return a Response, or a shorthand that :meth:`Response.from_return` converts:

- a ``Response``: itself;
- a ``str``: 200, ``content-type: text/plain; charset=utf-8``;
- ``bytes``, ``bytearray`` or ``memoryview``: 200, ``content-type: application/octet-stream``;
- a ``dict`` or a ``list``: 200, compact JSON, ``content-type: application/json``;
- ``None``: 204 with an empty body;
- anything else: ``TypeError`` naming the function, the type and what is accepted.

Streaming bodies (generators, iterators, async iterators) are refused: Netlify does not stream
background responses, and a buffered Response keeps every executor simple.
"""

from __future__ import annotations

import inspect
import json as _json
from collections.abc import AsyncIterable, Iterator

from bgfunctions.datastructures import HeadersInit, MutableHeaders

__all__ = ["Response"]

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_OCTETS = "application/octet-stream"
_ACCEPTED = (
    "a Response, str, bytes, bytearray, memoryview, dict, list or None "
    "(streaming bodies are not supported)"
)


class Response:
    """An HTTP response: ``status`` (100-599), ``headers`` (:class:`MutableHeaders`), ``body``.

    A ``str`` body is encoded as UTF-8 and, when no content type is given, gets
    ``text/plain; charset=utf-8`` (as ``new Response("text")`` does in JavaScript). A bytes body
    gets no content type unless one is given.
    """

    __slots__ = ("_body", "_status", "headers")

    headers: MutableHeaders
    """The response headers; change them in place."""

    def __init__(
        self,
        body: bytes | bytearray | memoryview | str = b"",
        *,
        status: int = 200,
        headers: HeadersInit | None = None,
    ) -> None:
        """Build a response; an invalid status or header is a ``ValueError``."""
        self.headers = MutableHeaders(headers)
        self.status = status
        if isinstance(body, str) and "content-type" not in self.headers:
            self.headers["content-type"] = _TEXT
        self.body = body

    @classmethod
    def _trusted(cls, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """A response from parts the library made itself (valid by construction), without
        re-validating them: the 202 of every background request is built this way."""
        response = cls.__new__(cls)
        response.headers = MutableHeaders._trusted(headers)
        response._status = status
        response._body = body
        return response

    @property
    def status(self) -> int:
        """The status code, an int from 100 to 599."""
        return self._status

    @status.setter
    def status(self, status: int) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"a response status must be an int from 100 to 599, found {status!r}")
        self._status = status

    @property
    def body(self) -> bytes:
        """The whole body (a str assigned here is encoded as UTF-8)."""
        return self._body

    @body.setter
    def body(self, body: bytes | bytearray | memoryview | str) -> None:
        if isinstance(body, str):
            self._body = body.encode("utf-8")
        elif isinstance(body, (bytes, bytearray, memoryview)):
            self._body = bytes(body)
        else:
            raise TypeError(f"a response body must be bytes or str, found {type(body).__name__}")

    @classmethod
    def json(
        cls, data: object, *, status: int = 200, headers: HeadersInit | None = None
    ) -> Response:
        """A response whose body is ``data`` as compact UTF-8 JSON, ``application/json``.

        A value JSON cannot hold (a set, NaN, an object) is a ``TypeError`` naming its type.
        """
        try:
            text = _json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Response.json() needs a JSON-serializable value: {exc}") from None
        response = cls(text.encode("utf-8"), status=status, headers=headers)
        if "content-type" not in response.headers:
            response.headers["content-type"] = _JSON
        return response

    @classmethod
    def text(cls, text: str, *, status: int = 200, headers: HeadersInit | None = None) -> Response:
        """A response whose body is ``text`` in UTF-8, ``text/plain; charset=utf-8``."""
        if not isinstance(text, str):
            raise TypeError(f"Response.text() needs a str, found {type(text).__name__}")
        return cls(text, status=status, headers=headers)

    @classmethod
    def from_return(cls, value: object, *, function: str | None = None) -> Response:
        """Convert a synchronous handler's return value to a Response (see the module table).

        ``function`` names the function in the ``TypeError`` raised for anything else.
        """
        if isinstance(value, Response):
            return value
        if value is None:
            return cls(status=204)
        if isinstance(value, str):
            return cls.text(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(value, headers={"content-type": _OCTETS})
        if isinstance(value, (dict, list)):
            return cls.json(value)
        who = f"function {function!r}" if function else "the handler"
        kind = type(value).__name__
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it so Python does not warn later
            raise TypeError(
                f"{who} returned a coroutine ({kind}); a handler that awaits must be declared "
                f"'async def' (expected {_ACCEPTED})"
            )
        if isinstance(value, (AsyncIterable, Iterator)) or inspect.isasyncgen(value):
            raise TypeError(
                f"{who} returned a streaming body ({kind}); streaming responses are not "
                f"supported, return the whole body instead (expected {_ACCEPTED})"
            )
        raise TypeError(f"{who} returned {kind}: expected {_ACCEPTED}")

    def __repr__(self) -> str:
        return (
            f"Response(status={self._status}, headers={self.headers!r}, "
            f"body=<{len(self._body)} bytes>)"
        )
