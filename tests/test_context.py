"""Context, Cookies, the records filled from x-nf-* headers, and request ids."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie

import pytest

from bgfunctions.clock import SystemClock, VirtualClock
from bgfunctions.context import Account, Context, Cookies, Country, Deploy, Geo, Site, Subdivision
from bgfunctions.errors import DeadlineExceeded
from bgfunctions.ids import new_request_id
from bgfunctions.requests import Request

GEO = {
    "city": "Lisbon",
    "country": {"code": "PT", "name": "Portugal"},
    "postalCode": "1000-001",
    "subdivision": {"code": "11", "name": "Lisboa"},
    "latitude": 38.7,
    "longitude": -9.1,
    "timezone": "Europe/Lisbon",
}


def b64json(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def nf_request(**extra: str) -> Request:
    headers = {
        "host": "site.example",
        "x-nf-client-connection-ip": "203.0.113.9",
        "x-nf-geo": b64json(GEO),
        "x-nf-site-id": "site-1",
        "x-nf-deploy-id": "dep-1",
        "x-nf-deploy-context": "production",
        "x-nf-deploy-published": "1",
        "x-nf-account-id": "acct-1",
        "x-nf-request-id": "client-chosen",
        **extra,
    }
    return Request("POST", "/process/7?x=1", headers=headers, client="10.0.0.2")


# --- construction ------------------------------------------------------------------------------


def test_context_defaults() -> None:
    """A Context needs only a request id and a function name."""
    ctx = Context(request_id="r1", function="f")
    assert (ctx.attempt, ctx.deadline, ctx.ip, ctx.background) == (1, None, None, False)
    assert ctx.geo == Geo()
    assert ctx.deploy == Deploy(context="", id="", published=False)
    assert isinstance(ctx.clock, SystemClock)
    assert ctx.url.geturl() == "http://localhost/"
    assert ctx.remaining_time() is None


def test_from_request_trusted_proxy_fills_records() -> None:
    """Behind a trusted proxy, x-nf-* headers fill ip, geo, site, deploy and account."""
    ctx = Context.from_request(nf_request(), request_id="r1", function="f", trust_proxy=True)
    assert ctx.ip == "203.0.113.9"
    assert ctx.geo == Geo(
        city="Lisbon",
        country=Country(code="PT", name="Portugal"),
        postal_code="1000-001",
        subdivision=Subdivision(code="11", name="Lisboa"),
        latitude=38.7,
        longitude=-9.1,
        timezone="Europe/Lisbon",
    )
    assert ctx.site.id == "site-1"
    assert ctx.deploy == Deploy(context="production", id="dep-1", published=True)
    assert ctx.account == Account(id="acct-1")


def test_from_request_untrusted_ignores_nf_headers() -> None:
    """Without a trusted proxy, ip is the peer and every x-nf-* header is ignored."""
    ctx = Context.from_request(nf_request(), request_id="r1", function="f")
    assert ctx.ip == "10.0.0.2"
    assert (ctx.geo, ctx.site, ctx.deploy, ctx.account) == (Geo(), Site(), Deploy(), Account())


def test_from_request_never_uses_client_request_id() -> None:
    """The request id is the one the library gives, not the client's x-nf-request-id."""
    ctx = Context.from_request(nf_request(), request_id="lib-id", function="f", trust_proxy=True)
    assert ctx.request_id == "lib-id"


def test_from_request_published_only_when_1() -> None:
    """x-nf-deploy-published means true only when it is "1"."""
    req = nf_request(**{"x-nf-deploy-published": "true"})
    ctx = Context.from_request(req, request_id="r", function="f", trust_proxy=True)
    assert ctx.deploy.published is False


def test_from_request_host_site_wins_but_id_fills_in() -> None:
    """A host-given Site keeps its fields; the header supplies only a missing id."""
    site = Site(name="shop", url="https://shop.example")
    ctx = Context.from_request(
        nf_request(), request_id="r", function="f", trust_proxy=True, site=site
    )
    assert ctx.site == Site(id="site-1", name="shop", url="https://shop.example")
    pinned = Site(id="mine")
    ctx = Context.from_request(
        nf_request(), request_id="r", function="f", trust_proxy=True, site=pinned
    )
    assert ctx.site.id == "mine"


@pytest.mark.parametrize(
    "header",
    [
        "%%%not base64%%%",
        base64.b64encode(b"\xff\xfe not json").decode(),
        b64json([1, 2]),
        b64json("x"),
        base64.b64encode(b"[" * 50_000).decode(),
    ],
)
def test_garbage_geo_is_ignored(header: str) -> None:
    """A malformed x-nf-geo gives an empty Geo, never an error."""
    req = nf_request(**{"x-nf-geo": header})
    ctx = Context.from_request(req, request_id="r", function="f", trust_proxy=True)
    assert ctx.geo == Geo()
    assert ctx.ip == "203.0.113.9"


def test_geo_ignores_badly_typed_fields() -> None:
    """Geo fields of the wrong type are dropped one by one; the others are kept."""
    bad = {"city": 5, "country": "PT", "latitude": "38", "longitude": True, "timezone": "UTC"}
    req = nf_request(**{"x-nf-geo": b64json(bad)})
    ctx = Context.from_request(req, request_id="r", function="f", trust_proxy=True)
    assert ctx.geo == Geo(timezone="UTC")


def test_geo_accepts_urlsafe_unpadded_base64() -> None:
    """x-nf-geo in URL-safe base64 without padding is read too."""
    raw = base64.urlsafe_b64encode(json.dumps({"city": "Ñ?>>", "x": "~~~"}).encode())
    req = nf_request(**{"x-nf-geo": raw.decode().rstrip("=")})
    ctx = Context.from_request(req, request_id="r", function="f", trust_proxy=True)
    assert ctx.geo.city == "Ñ?>>"


def test_context_url_is_absolute() -> None:
    """url is the absolute URL: from the Host header for a path, as given for an absolute URL."""
    ctx = Context.from_request(nf_request(), request_id="r", function="f")
    assert ctx.url.geturl() == "http://site.example/process/7?x=1"
    req = Request("GET", "https://a.example:8443/p?q=1#frag")
    ctx = Context.from_request(req, request_id="r", function="f")
    assert (ctx.url.scheme, ctx.url.netloc, ctx.url.path, ctx.url.query, ctx.url.fragment) == (
        "https",
        "a.example:8443",
        "/p",
        "q=1",
        "",
    )


def test_params_are_read_only() -> None:
    """params is a read-only copy of what was given."""
    given = {"id": "7"}
    ctx = Context.from_request(nf_request(), request_id="r", function="f", params=given)
    given["id"] = "8"
    assert ctx.params == {"id": "7"}
    with pytest.raises(TypeError):
        ctx.params["id"] = "9"  # type: ignore[index]


def test_context_validates_attempt_and_params() -> None:
    """A non-positive attempt or non-str params are a ValueError."""
    with pytest.raises(ValueError, match="attempt must be an int >= 1"):
        Context(request_id="r", function="f", attempt=0)
    with pytest.raises(ValueError, match="params must map str to str"):
        Context(request_id="r", function="f", params={"a": 1})  # type: ignore[dict-item]


def test_context_is_frozen() -> None:
    """Context fields cannot be reassigned."""
    ctx = Context(request_id="r", function="f")
    with pytest.raises(AttributeError):
        ctx.attempt = 2  # type: ignore[misc]


# --- time ---------------------------------------------------------------------------------------


def test_remaining_time_never_negative() -> None:
    """remaining_time() is deadline - now on the clock, and 0 once past."""
    clock = VirtualClock()
    ctx = Context(request_id="r", function="f", clock=clock, deadline=clock.now() + 900)
    assert ctx.remaining_time() == 900
    clock.advance(899.5)
    assert ctx.remaining_time() == 0.5
    clock.advance(10)
    assert ctx.remaining_time() == 0.0


def test_sleep_within_deadline_waits_on_clock() -> None:
    """sleep() within the budget moves the clock by exactly that much."""
    clock = VirtualClock()
    start = clock.now()
    ctx = Context(request_id="r", function="f", clock=clock, deadline=start + 900)
    ctx.sleep(60)
    assert clock.now() == start + 60


def test_sleep_past_deadline_stops_at_deadline() -> None:
    """A sleep past the deadline waits exactly until it, then raises DeadlineExceeded."""
    clock = VirtualClock()
    ctx = Context(
        request_id="r", function="proc", clock=clock, deadline=clock.now() + 900, attempt=2
    )
    with pytest.raises(DeadlineExceeded, match=r"'proc'.*attempt 2.*1000 s with 900 s left"):
        ctx.sleep(1000)
    assert clock.now() == ctx.deadline


def test_sleep_without_deadline() -> None:
    """With no deadline, sleep() waits the full time."""
    clock = VirtualClock()
    start = clock.now()
    Context(request_id="r", function="f", clock=clock).sleep(3600)
    assert clock.now() == start + 3600


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_sleep_refuses_bad_durations(seconds: float) -> None:
    """A negative or non-finite sleep is a ValueError."""
    with pytest.raises(ValueError, match="finite number >= 0"):
        Context(request_id="r", function="f", clock=VirtualClock()).sleep(seconds)


# --- wait_until, json, next, log ------------------------------------------------------------


def test_wait_until_collects_awaitables_for_the_executor() -> None:
    """wait_until() records awaitables; _take_pending() hands them over once."""

    async def task() -> int:
        return 1

    ctx = Context(request_id="r", function="f")
    first, second = task(), task()
    ctx.wait_until(first)
    ctx.wait_until(second)
    taken = ctx._take_pending()
    assert taken == [first, second]
    assert ctx._take_pending() == []

    async def settle() -> list[object]:
        return list(await asyncio.gather(*taken))

    assert asyncio.run(settle()) == [1, 1]


def test_wait_until_refuses_non_awaitables() -> None:
    """wait_until() with something that is not awaitable is a TypeError."""
    with pytest.raises(TypeError, match=r"needs an awaitable.*found function"):
        Context(request_id="r", function="f").wait_until(lambda: None)  # type: ignore[arg-type]


def test_context_json() -> None:
    """context.json(value) is a JSON Response."""
    r = Context(request_id="r", function="f").json({"ok": True})
    assert (r.status, r.body, r.headers["content-type"]) == (
        200,
        b'{"ok":true}',
        "application/json",
    )


def test_next_and_rewrite_unsupported_by_default() -> None:
    """next() and rewrite() raise NotImplementedError naming the function without a host hook."""
    ctx = Context(request_id="r", function="proc")
    with pytest.raises(NotImplementedError, match=r"next\(\).*'proc'"):
        ctx.next()
    with pytest.raises(NotImplementedError, match=r"rewrite\(\).*'proc'"):
        ctx.rewrite("/elsewhere")


def test_next_and_rewrite_call_host_hooks() -> None:
    """A host's next_handler and rewrite_handler receive the call's arguments."""
    ctx = Context.from_request(
        Request(),
        request_id="r",
        function="f",
        next_handler=lambda *a, **k: ("next", a, k),
        rewrite_handler=lambda url: ("rewrite", url),
    )
    assert ctx.next(1, x=2) == ("next", (1,), {"x": 2})
    assert ctx.rewrite("/b") == ("rewrite", "/b")


def test_log_carries_function_request_id_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    """Records logged through context.log carry function, request_id and attempt."""
    ctx = Context(request_id="r9", function="proc", attempt=3)
    with caplog.at_level(logging.INFO, logger="bgfunctions.functions"):
        ctx.log.info("working on %s", "it")
    (record,) = caplog.records
    assert record.name == "bgfunctions.functions.proc"
    assert record.getMessage() == "working on it"
    assert (record.function, record.request_id, record.attempt) == ("proc", "r9", 3)  # type: ignore[attr-defined]


# --- Cookies ------------------------------------------------------------------------------------


def test_cookies_read_the_request() -> None:
    """cookies.get() reads the request's cookies; a missing one is None."""
    req = Request(headers={"cookie": "sid=abc; theme=dark"})
    ctx = Context.from_request(req, request_id="r", function="f")
    assert ctx.cookies.get("sid") == "abc"
    assert ctx.cookies.get("nope") is None
    assert ctx.cookies.set_cookie_headers() == []


def test_cookie_set_writes_all_attributes() -> None:
    """set() writes a Set-Cookie value with every attribute given."""
    cookies = Cookies()
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    cookies.set(
        "sid",
        "abc",
        expires=when,
        max_age=3600,
        domain="example.com",
        path="/",
        secure=True,
        http_only=True,
        same_site="strict",
    )
    (header,) = cookies.set_cookie_headers()
    parsed = SimpleCookie(header)
    morsel = parsed["sid"]
    assert morsel.value == "abc"
    assert morsel["expires"] == "Wed, 02 Jan 2030 02:04:05 GMT"
    assert (morsel["max-age"], morsel["domain"], morsel["path"]) == ("3600", "example.com", "/")
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert cookies.get("sid") == "abc"


def test_cookie_values_are_quoted_and_read_back() -> None:
    """A value with ; or spaces is quoted, and a Request reading it back gets the value."""
    cookies = Cookies()
    cookies.set("note", 'a b;c"d')
    (header,) = cookies.set_cookie_headers()
    assert header.startswith('note="')
    assert Request(headers={"cookie": header}).cookies["note"] == 'a b;c"d'


def test_cookie_set_replaces_same_name_domain_path() -> None:
    """Setting the same name, domain and path again keeps only the last value, last in order."""
    cookies = Cookies({"a": "old"})
    cookies.set("a", "1")
    cookies.set("b", "2")
    cookies.set("a", "3")
    assert cookies.set_cookie_headers() == ["b=2", "a=3"]
    assert cookies.get("a") == "3"


def test_cookie_delete_expires_it() -> None:
    """delete() sends an expired, empty cookie with the domain and path, and get() is None."""
    cookies = Cookies({"sid": "abc"})
    cookies.delete("sid", domain="example.com", path="/app")
    (header,) = cookies.set_cookie_headers()
    morsel = SimpleCookie(header)["sid"]
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert morsel["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert (morsel["domain"], morsel["path"]) == ("example.com", "/app")
    assert cookies.get("sid") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"same_site": "sometimes"}, "same_site must be 'Strict', 'Lax' or 'None'"),
        ({"same_site": "none"}, "same_site='None' needs secure=True"),
        ({"path": "/; Secure"}, "path must be a str without ';'"),
        ({"domain": "x\r\n"}, "domain must be a str without ';'"),
        ({"expires": "x; HttpOnly"}, "expires must be"),
        ({"max_age": "60"}, "max_age must be an int"),
    ],
)
def test_cookie_set_refuses_bad_attributes(kwargs: dict[str, object], message: str) -> None:
    """Invalid SameSite values and attribute injections are a ValueError naming the cookie."""
    with pytest.raises(ValueError, match=f"cookie 'c': {message}"):
        Cookies().set("c", "v", **kwargs)  # type: ignore[arg-type]


def test_cookie_same_site_none_with_secure() -> None:
    """SameSite=None is accepted with secure=True."""
    cookies = Cookies()
    cookies.set("c", "v", same_site="NONE", secure=True)
    assert cookies.set_cookie_headers() == ["c=v; SameSite=None; Secure"]


@pytest.mark.parametrize("name", ["bad name", "a;b", "expires", ""])
def test_cookie_refuses_bad_names(name: str) -> None:
    """A cookie name that http.cookies cannot write is a ValueError quoting it."""
    with pytest.raises(ValueError, match="invalid cookie name"):
        Cookies().set(name, "v")


# --- request ids --------------------------------------------------------------------------------

_CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _decode_time_ms(ulid: str) -> int:
    value = 0
    for ch in ulid[:10]:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(ch)
    return value


def test_request_id_is_a_ulid_of_the_clock_time() -> None:
    """A request id is 26 Crockford base32 chars whose first 48 bits are the clock's ms."""
    clock = VirtualClock(start=1767225600.123)
    rid = new_request_id(clock)
    assert len(rid) == 26
    assert set(rid) <= _CROCKFORD
    assert _decode_time_ms(rid) == 1767225600123


def test_request_ids_increase_within_a_millisecond() -> None:
    """Ids made in one millisecond are distinct and strictly increasing."""
    clock = VirtualClock()
    ids = [new_request_id(clock) for _ in range(200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200


def test_request_ids_sort_by_time() -> None:
    """An id made later on the clock sorts after an earlier one."""
    clock = VirtualClock()
    first = new_request_id(clock)
    clock.advance(0.001)
    second = new_request_id(clock)
    assert first < second
    assert _decode_time_ms(second) - _decode_time_ms(first) == 1


def test_request_ids_are_unguessable() -> None:
    """Ids from fresh milliseconds differ in their 80 random bits."""
    clock = VirtualClock()
    randoms = set()
    for _ in range(50):
        clock.advance(0.001)
        randoms.add(new_request_id(clock)[10:])
    assert len(randoms) == 50


def test_request_id_defaults_to_system_clock() -> None:
    """Without a clock, the id's time is the system clock's."""
    before = int(SystemClock().now() * 1000)
    rid = new_request_id()
    after = int(SystemClock().now() * 1000)
    assert before <= _decode_time_ms(rid) <= after


def test_request_id_refuses_time_before_epoch() -> None:
    """A clock before 1970 cannot make a ULID."""
    with pytest.raises(ValueError, match="from 1970"):
        new_request_id(VirtualClock(start=-5.0))
