"""Headers, QueryParams and Request: construction, validation, decoding, round trips."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgfunctions.datastructures import Headers, MutableHeaders, QueryParams
from bgfunctions.errors import InvalidJSONError, RequestError
from bgfunctions.requests import Request

# --- Headers ---------------------------------------------------------------------------------


def test_headers_lookup_is_case_insensitive() -> None:
    """A header set as Content-Type is found under any case."""
    h = Headers({"Content-Type": "text/plain"})
    assert h["content-type"] == "text/plain"
    assert h.get("CONTENT-TYPE") == "text/plain"
    assert "Content-type" in h


def test_headers_get_returns_first_and_get_list_all() -> None:
    """get() gives the first value of a repeated header, get_list() every value in order."""
    h = Headers([("Accept", "a"), ("X", "1"), ("accept", "b")])
    assert h["accept"] == "a"
    assert h.get_list("ACCEPT") == ["a", "b"]
    assert h.get_list("missing") == []
    assert h.get("missing") is None


def test_headers_raw_lowercases_names_and_keeps_order() -> None:
    """raw lists every (lower-cased name, value) pair in the order given."""
    h = Headers([("B", "1"), ("A", "2"), ("b", "3")])
    assert h.raw == [("b", "1"), ("a", "2"), ("b", "3")]


def test_headers_iterate_distinct_names() -> None:
    """Iteration and len() count each name once."""
    h = Headers([("B", "1"), ("A", "2"), ("b", "3")])
    assert list(h) == ["b", "a"]
    assert len(h) == 2


def test_headers_copy_from_headers() -> None:
    """A Headers built from another Headers holds the same pairs."""
    h = Headers([("a", "1"), ("a", "2")])
    assert Headers(h).raw == h.raw


def test_headers_equality_ignores_order_between_names_only() -> None:
    """Headers are equal with the same values per name, whatever the order between names."""
    assert Headers([("a", "1"), ("b", "2")]) == Headers([("B", "2"), ("A", "1")])
    assert Headers([("a", "1"), ("a", "2")]) != Headers([("a", "2"), ("a", "1")])
    assert Headers({"a": "1"}) == {"A": "1"}
    assert Headers({"a": "1"}) != {"a": "2"}


def test_headers_are_immutable() -> None:
    """A Headers has no item assignment."""
    h = Headers({"a": "1"})
    with pytest.raises(TypeError):
        h["a"] = "2"  # type: ignore[index]


def test_headers_repr_hides_credentials() -> None:
    """repr() shows that Authorization and Cookie exist but not their values."""
    h = Headers({"Authorization": "Bearer s3cret", "Cookie": "sid=abc", "X": "shown"})
    text = repr(h)
    assert "s3cret" not in text
    assert "abc" not in text
    assert "shown" in text
    assert "authorization" in text


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b", "caf\u20ac"])
def test_headers_refuse_bad_values(value: str) -> None:
    """A value with CR, LF, NUL or a non-Latin-1 character is a ValueError naming the header."""
    with pytest.raises(ValueError, match="x-test"):
        Headers({"X-Test": value})


@pytest.mark.parametrize("name", ["", "bad name", "a:b", "x\n", "é"])
def test_headers_refuse_bad_names(name: str) -> None:
    """A name that is not an HTTP token is a ValueError quoting it."""
    with pytest.raises(ValueError, match="invalid header name"):
        Headers({name: "v"})


def test_headers_refuse_non_pairs() -> None:
    """Something that is neither a mapping nor pairs is a ValueError."""
    with pytest.raises(ValueError, match="pairs"):
        Headers([("a", "1", "extra")])  # type: ignore[list-item]


header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
)
header_pairs = st.lists(st.tuples(header_names, header_values), max_size=8)


@given(header_pairs)
def test_headers_roundtrip_through_raw(pairs: list[tuple[str, str]]) -> None:
    """Any valid pairs survive Headers -> raw -> Headers, and lookups match the pairs."""
    h = Headers(pairs)
    assert Headers(h.raw) == h
    for name, _ in pairs:
        assert h.get_list(name) == [v for n, v in pairs if n.lower() == name.lower()]


# --- MutableHeaders ----------------------------------------------------------------------------


def test_mutable_headers_set_replaces_all_values() -> None:
    """Setting a header replaces every value it had, keeping its first position."""
    h = MutableHeaders([("a", "1"), ("b", "2"), ("A", "3")])
    h["A"] = "9"
    assert h.raw == [("a", "9"), ("b", "2")]


def test_mutable_headers_append_and_delete() -> None:
    """append() adds a value; del removes every value; deleting a missing name is a KeyError."""
    h = MutableHeaders()
    h.append("Set-Cookie", "a=1")
    h.append("set-cookie", "b=2")
    assert h.get_list("set-cookie") == ["a=1", "b=2"]
    del h["SET-COOKIE"]
    assert "set-cookie" not in h
    with pytest.raises(KeyError):
        del h["set-cookie"]


def test_mutable_headers_validate_on_set() -> None:
    """A CR/LF value set later is refused like one given at construction."""
    h = MutableHeaders()
    with pytest.raises(ValueError, match="location"):
        h["Location"] = "/a\r\nSet-Cookie: x=1"
    with pytest.raises(ValueError, match="location"):
        h.append("Location", "\n")


# --- QueryParams -------------------------------------------------------------------------------


def test_query_params_are_multi_valued() -> None:
    """A query string keeps repeated names, blank values, and decodes + and %-escapes."""
    q = QueryParams("?a=1&a=2&b=&c=x+y%21")
    assert q["a"] == "1"
    assert q.get_list("a") == ["1", "2"]
    assert q["b"] == ""
    assert q["c"] == "x y!"
    assert list(q) == ["a", "b", "c"]
    assert q == QueryParams([("a", "1"), ("a", "2"), ("b", ""), ("c", "x y!")])
    assert QueryParams(str(q)) == q


# --- Request -----------------------------------------------------------------------------------


def test_request_defaults() -> None:
    """Request() is a GET of / with no headers, an empty body and no client."""
    r = Request()
    assert (r.method, r.url, r.path, r.query_string, r.body, r.client) == (
        "GET",
        "/",
        "/",
        "",
        b"",
        None,
    )
    assert r.headers == Headers()


def test_request_json_sets_body_and_content_type() -> None:
    """json= serializes the value compactly and sets content-type: application/json."""
    r = Request("POST", "/process", json={"a": 1, "é": [None]})
    assert r.body == '{"a":1,"é":[null]}'.encode()
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"a": 1, "é": [None]}


def test_request_json_keeps_a_given_content_type() -> None:
    """json= does not override a content-type the caller gave."""
    r = Request("POST", "/", json=[1], headers={"Content-Type": "application/vnd.x+json"})
    assert r.headers.get_list("content-type") == ["application/vnd.x+json"]


def test_request_json_none_is_a_value() -> None:
    """json=None sends the JSON literal null, not an empty body."""
    assert Request("POST", "/", json=None).body == b"null"


def test_request_body_and_json_are_exclusive() -> None:
    """Giving both body= and json= is a TypeError."""
    with pytest.raises(TypeError, match="not both"):
        Request("POST", "/", body=b"x", json=1)


def test_request_json_refuses_unserializable_values() -> None:
    """A json= value JSON cannot hold is a TypeError."""
    with pytest.raises(TypeError, match="JSON-serializable"):
        Request("POST", "/", json={1, 2})
    with pytest.raises(TypeError, match="JSON-serializable"):
        Request("POST", "/", json=float("nan"))


def test_request_str_body_is_utf8() -> None:
    """A str body is encoded as UTF-8."""
    assert Request("POST", "/", body="café").body == "café".encode()


def test_request_method_is_uppercased_and_validated() -> None:
    """The method is upper-cased; one that is not a token is a RequestError."""
    assert Request("patch").method == "PATCH"
    with pytest.raises(RequestError, match="method"):
        Request("GE T")
    with pytest.raises(RequestError, match="method"):
        Request("")


def test_request_path_url_parts() -> None:
    """A path URL gives a decoded path, the raw path, and the query without the fragment."""
    r = Request("GET", "/a%20b/caf%C3%A9?x=1&x=2&y=%2F#frag")
    assert r.url == "/a%20b/caf%C3%A9?x=1&x=2&y=%2F#frag"
    assert r.raw_path == "/a%20b/caf%C3%A9"
    assert r.path == "/a b/café"
    assert r.query_string == "x=1&x=2&y=%2F"
    assert r.query.get_list("x") == ["1", "2"]
    assert r.query["y"] == "/"


def test_request_absolute_url_parts() -> None:
    """An absolute URL keeps its text; path and query come from it; a bare host has path /."""
    r = Request("GET", "https://example.com:8443/fn/x?q=1")
    assert (r.url, r.path, r.query_string) == ("https://example.com:8443/fn/x?q=1", "/fn/x", "q=1")
    assert Request("GET", "http://example.com").path == "/"


def test_request_double_slash_path_is_not_a_host() -> None:
    """A path starting with // stays a path."""
    assert Request("GET", "//evil.example/x").path == "//evil.example/x"


@pytest.mark.parametrize("url", ["", "process", "ftp://x/y", "/a b", "/a\r\nb", "/\x00"])
def test_request_refuses_bad_urls(url: str) -> None:
    """A URL that is not a path or an http(s) URL, or holds whitespace, is a RequestError."""
    with pytest.raises(RequestError, match="request URL"):
        Request("GET", url)


def test_request_refuses_bad_headers_with_request_error() -> None:
    """An invalid header in a Request is a RequestError naming it."""
    with pytest.raises(RequestError, match="x-a"):
        Request("GET", "/", headers={"X-A": "1\r\n2"})


def test_request_is_immutable() -> None:
    """Setting or deleting a Request attribute is an AttributeError."""
    r = Request()
    with pytest.raises(AttributeError):
        r.method = "POST"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del r.body
    with pytest.raises(AttributeError):
        r.extra = 1


def test_request_text_uses_content_type_charset() -> None:
    """text() decodes with the Content-Type charset, quoted or not."""
    body = "olá".encode("latin-1")
    r = Request(
        "POST", "/", body=body, headers={"content-type": 'text/plain; charset="ISO-8859-1"'}
    )
    assert r.text() == "olá"


def test_request_text_defaults_to_utf8() -> None:
    """Without a charset, text() decodes UTF-8."""
    assert Request("POST", "/", body="olá".encode()).text() == "olá"


def test_request_text_names_charset_and_offset() -> None:
    """Undecodable bytes are a RequestError naming the charset and byte offset."""
    r = Request("POST", "/", body=b"ok\xff", headers={"content-type": "text/plain"})
    with pytest.raises(RequestError, match=r"'utf-8' at byte offset 2"):
        r.text()


@pytest.mark.parametrize("charset", ["klingon", "base64", "rot13", "zlib"])
def test_request_text_refuses_unknown_or_binary_charsets(charset: str) -> None:
    """An unknown charset, or a codec that is not a text encoding, is a RequestError naming it."""
    r = Request(
        "POST", "/", body=b"abc", headers={"content-type": f"text/plain; charset={charset}"}
    )
    with pytest.raises(RequestError, match=charset):
        r.text()


def test_request_json_error_has_position_and_preview() -> None:
    """Invalid JSON is an InvalidJSONError with line, column and the start of the body."""
    r = Request("POST", "/", body=b'{"a": 1,\n  oops}')
    with pytest.raises(InvalidJSONError, match=r"line 2 column 3.*oops") as info:
        r.json()
    assert isinstance(info.value, RequestError)


def test_request_json_error_on_empty_body() -> None:
    """json() on an empty body says that the body is empty."""
    with pytest.raises(InvalidJSONError, match="empty"):
        Request("POST", "/").json()


def test_request_json_truncates_long_preview() -> None:
    """The preview of a long invalid body is cut and marked with ..."""
    with pytest.raises(InvalidJSONError, match=r"\.\.\.$"):
        Request("POST", "/", body=b"x" * 1000).json()


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b"-Infinity"])
def test_request_json_refuses_non_json_constants(body: bytes) -> None:
    """NaN and Infinity are not JSON and are refused."""
    with pytest.raises(InvalidJSONError, match="not valid JSON"):
        Request("POST", "/", body=body).json()


def test_request_json_too_deep_is_invalid_json() -> None:
    """A body nested deeper than Python can parse is an InvalidJSONError, not a RecursionError."""
    with pytest.raises(InvalidJSONError, match="nested too deeply"):
        Request("POST", "/", body=b"[" * 100_000 + b"]" * 100_000).json()


charsets = st.sampled_from(
    [
        None,
        "utf-8",
        "ascii",
        "latin-1",
        "utf-16",
        "utf-32",
        "idna",
        "punycode",
        "cp1252",
        "shift_jis",
        "base64",
        "bogus",
        "utf-8-sig",
        "",
    ]
)


@given(st.binary(max_size=64), charsets)
def test_request_text_and_json_raise_only_request_error(body: bytes, charset: str | None) -> None:
    """On arbitrary bytes and charsets, text() and json() return or raise RequestError only."""
    ct = "application/json" if charset is None else f"application/json; charset={charset}"
    r = Request("POST", "/", body=body, headers={"content-type": ct})
    for read in (r.text, r.json):
        with contextlib.suppress(RequestError):
            read()


def test_request_cookies_are_parsed_leniently() -> None:
    """Cookies come from every Cookie header; bad pairs are skipped; quotes and escapes undone."""
    r = Request(
        "GET",
        "/",
        headers=[
            ("Cookie", 'a=1; junk; =nameless; b="x y"; c={}; d="a\\073b"'),
            ("cookie", "a=2; e=5"),
        ],
    )
    assert r.cookies == {"a": "1", "b": "x y", "c": "{}", "d": "a;b", "e": "5"}
    assert Request().cookies == {}


def test_request_pickles_and_copies() -> None:
    """A Request survives pickle and copy.copy despite being immutable."""
    r = Request("POST", "/x?a=1", headers=[("A", "1"), ("a", "2")], body=b"\x00", client="c")
    assert pickle.loads(pickle.dumps(r)) == r
    assert copy.copy(r) == r
    assert pickle.loads(pickle.dumps(r.headers)) == r.headers


def test_request_to_dict_is_json_able() -> None:
    """to_dict() survives json.dumps/loads and from_dict() rebuilds an equal Request."""
    r = Request(
        "PUT", "/x?y=1", headers=[("A", "1"), ("a", "2")], body=b"\x00\xff", client="10.0.0.1"
    )
    data = json.loads(json.dumps(r.to_dict()))
    assert data["body"] == "AP8="
    assert Request.from_dict(data) == r


@pytest.mark.parametrize(
    "data",
    [
        {"method": "GET", "url": "/", "headers": [], "body": ""},
        {"method": "GET", "url": "/", "headers": [], "body": "", "client": None, "x": 1},
        {"method": "GET", "url": "/", "headers": [["a"]], "body": "", "client": None},
        {"method": "GET", "url": "/", "headers": [], "body": "***", "client": None},
        {"method": 1, "url": "/", "headers": [], "body": "", "client": None},
        {"method": "GET", "url": "/", "headers": [], "body": "", "client": 5},
    ],
)
def test_request_from_dict_refuses_malformed_dicts(data: dict[str, object]) -> None:
    """A dict that to_dict() could not have made is a RequestError."""
    with pytest.raises(RequestError, match="from_dict"):
        Request.from_dict(data)


methods = st.sampled_from(["GET", "POST", "put", "Delete", "PATCH", "OPTIONS", "HEAD", "X-CUSTOM"])
urls = st.one_of(
    st.from_regex(r"/[A-Za-z0-9/%._~-]{0,20}(\?[A-Za-z0-9=&%+]{0,20})?", fullmatch=True),
    st.from_regex(r"https?://[a-z]{1,10}(:[0-9]{2,4})?(/[a-z0-9]{0,8})?", fullmatch=True),
)


@given(methods, urls, header_pairs, st.binary(max_size=64), st.none() | st.text(max_size=15))
def test_request_roundtrips_through_json(
    method: str, url: str, headers: list[tuple[str, str]], body: bytes, client: str | None
) -> None:
    """Any Request survives to_dict -> JSON -> from_dict exactly."""
    r = Request(method, url, headers=headers, body=body, client=client)
    again = Request.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r
    assert again.headers.raw == r.headers.raw
    assert again.to_dict() == r.to_dict()


_HEADER_TEXT = st.text(
    st.sampled_from([*"aZ9-_!~", " ", ":", "\t", "\r", "\n", "\x00", "\x7f", "é", "Ā", "\u2028"]),
    max_size=6,
) | st.builds(lambda a, b: f"{a}:{b}", st.text("ab-", min_size=1), st.text("ab-", min_size=1))


@given(st.lists(st.tuples(_HEADER_TEXT, _HEADER_TEXT), max_size=4))
def test_headers_checked_in_bulk_agree_with_pair_by_pair(pairs: list[tuple[str, str]]) -> None:
    """A list of pairs (checked in bulk) is accepted or refused exactly as a tuple of the same
    pairs (checked one by one), with the same error."""

    def build(init: object) -> list[tuple[str, str]] | str:
        try:
            return Headers(init).raw  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)

    assert build(pairs) == build(tuple(pairs))


@pytest.mark.parametrize("name", ["x-a:b", "a:", ":a", "a::b"])
def test_headers_refuse_a_colon_in_a_name_in_a_list_too(name: str) -> None:
    """A name holding the bulk check's own separator is refused, as pair by pair."""
    with pytest.raises(ValueError, match="invalid header name"):
        Headers([("ok", "1"), (name, "c")])


def test_headers_refuse_a_string_among_pairs() -> None:
    """A two-character string is not a (name, value) pair, in a list as in a tuple."""
    with pytest.raises(ValueError, match="pairs"):
        Headers([("a", "b"), "cd"])  # type: ignore[list-item]
