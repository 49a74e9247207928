"""Response: construction, validation, helpers, and the conversion of handler return values."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from bgfunctions.datastructures import MutableHeaders
from bgfunctions.responses import Response


def test_response_defaults() -> None:
    """Response() is a 200 with an empty body and no headers."""
    r = Response()
    assert (r.status, r.body, r.headers.raw) == (200, b"", [])
    assert isinstance(r.headers, MutableHeaders)


def test_response_str_body_gets_text_content_type() -> None:
    """A str body is UTF-8 and gets text/plain; charset=utf-8 unless a type is given."""
    assert Response("olá").body == "olá".encode()
    assert Response("x").headers["content-type"] == "text/plain; charset=utf-8"
    assert Response("x", headers={"Content-Type": "text/html"}).headers.get_list(
        "content-type"
    ) == ["text/html"]


def test_response_bytes_body_gets_no_content_type() -> None:
    """A bytes body gets no content type by default."""
    assert "content-type" not in Response(b"\x00", status=201).headers


@pytest.mark.parametrize("status", [99, 600, 0, -1, True, 200.0, "200"])
def test_response_refuses_bad_status(status: object) -> None:
    """A status that is not an int from 100 to 599 is a ValueError quoting it."""
    with pytest.raises(ValueError, match="100 to 599"):
        Response(status=status)  # type: ignore[arg-type]


def test_response_status_and_body_can_change() -> None:
    """status and body are settable, with the same validation."""
    r = Response()
    r.status = 418
    r.body = "hi"
    assert (r.status, r.body) == (418, b"hi")
    with pytest.raises(ValueError, match="found 700"):
        r.status = 700
    with pytest.raises(TypeError, match="bytes or str"):
        r.body = 5  # type: ignore[assignment]


def test_response_headers_are_mutable() -> None:
    """A handler can add and replace response headers."""
    r = Response(headers={"X-A": "1"})
    r.headers.append("set-cookie", "a=1")
    r.headers.append("set-cookie", "b=2")
    r.headers["x-a"] = "2"
    assert r.headers.raw == [("x-a", "2"), ("set-cookie", "a=1"), ("set-cookie", "b=2")]


def test_response_json_helper() -> None:
    """Response.json() writes compact UTF-8 JSON with application/json."""
    r = Response.json({"a": [1, "é"]}, status=201, headers={"x": "1"})
    assert r.status == 201
    assert r.body == '{"a":[1,"é"]}'.encode()
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x"] == "1"
    assert json.loads(r.body) == {"a": [1, "é"]}


def test_response_json_refuses_unserializable() -> None:
    """A value JSON cannot hold is a TypeError."""
    with pytest.raises(TypeError, match="JSON-serializable"):
        Response.json(object())
    with pytest.raises(TypeError, match="JSON-serializable"):
        Response.json([float("inf")])


def test_response_text_helper() -> None:
    """Response.text() is a UTF-8 text/plain response; a non-str is a TypeError."""
    r = Response.text("ok", status=202)
    assert (r.status, r.body, r.headers["content-type"]) == (
        202,
        b"ok",
        "text/plain; charset=utf-8",
    )
    with pytest.raises(TypeError, match="needs a str"):
        Response.text(b"x")  # type: ignore[arg-type]


def test_from_return_response_is_itself() -> None:
    """A returned Response is used as is."""
    r = Response(b"x", status=500)
    assert Response.from_return(r) is r


def test_from_return_str() -> None:
    """A returned str is a 200 text/plain; charset=utf-8 response."""
    r = Response.from_return("hé")
    assert (r.status, r.body, r.headers["content-type"]) == (
        200,
        "hé".encode(),
        "text/plain; charset=utf-8",
    )


@pytest.mark.parametrize("value", [b"ab", bytearray(b"ab"), memoryview(b"ab")])
def test_from_return_bytes_like(value: bytes | bytearray | memoryview) -> None:
    """Returned bytes, bytearray or memoryview is a 200 application/octet-stream response."""
    r = Response.from_return(value)
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"ab", "application/octet-stream")


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], {}, []])
def test_from_return_dict_or_list_is_json(value: object) -> None:
    """A returned dict or list is a 200 JSON response."""
    r = Response.from_return(value)
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.body) == value


def test_from_return_none_is_204() -> None:
    """None is a 204 with an empty body and no content type."""
    r = Response.from_return(None)
    assert (r.status, r.body, r.headers.raw) == (204, b"", [])


@pytest.mark.parametrize("value", [42, 1.5, True, ("a", 1), {1, 2}, object()])
def test_from_return_refuses_other_types(value: object) -> None:
    """Anything else is a TypeError naming the function, the type and what is accepted."""
    with pytest.raises(TypeError, match=r"function 'proc' returned \w+: expected a Response, str"):
        Response.from_return(value, function="proc")


def test_from_return_error_without_function_name() -> None:
    """Without a function name, the error speaks of the handler."""
    with pytest.raises(TypeError, match="the handler returned int"):
        Response.from_return(1)


def test_from_return_refuses_generators() -> None:
    """A generator or iterator is refused as a streaming body."""

    def gen() -> Iterator[bytes]:
        yield b"x"

    with pytest.raises(TypeError, match=r"'proc' returned a streaming body \(generator\)"):
        Response.from_return(gen(), function="proc")
    with pytest.raises(TypeError, match="streaming"):
        Response.from_return(iter([b"x"]))


def test_from_return_refuses_async_generators() -> None:
    """An async generator is refused as a streaming body."""

    async def agen() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(TypeError, match=r"streaming body \(async_generator\)"):
        Response.from_return(agen(), function="proc")


def test_from_return_refuses_and_closes_coroutines() -> None:
    """A coroutine (a sync handler that forgot async def) is refused and closed, so no warning."""

    async def work() -> str:
        return "x"

    coro = work()
    with pytest.raises(TypeError, match=r"returned a coroutine.*async def"):
        Response.from_return(coro, function="proc")
    # Closed: Python will not warn that it was never awaited.
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"
