"""The invocation record over HTTP (``/.bgfunctions/``), in the dev server, and on the CLI.

The view is driven through ``ASGIApp`` and httpx's ASGI transport over an App on an
``InlineExecutor`` (virtual time, so attempts at 0, 60 and 180 s take no wall time). The CLI
commands read and write a real ``SQLiteJournal`` file. One test runs ``bgfunctions serve`` in a
subprocess (marked ``server`` and ``realtime``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgfunctions.app import App
from bgfunctions.asgi import ASGIApp
from bgfunctions.cli import main
from bgfunctions.clock import SystemClock, VirtualClock
from bgfunctions.config import Config
from bgfunctions.devserver import JOURNAL_FILE, DevServer, ServeOptions
from bgfunctions.inline import InlineExecutor
from bgfunctions.invocation import InvocationRecord, Outcome, State
from bgfunctions.journal import MemoryJournal
from bgfunctions.registry import Registry
from bgfunctions.requests import Request
from bgfunctions.sqlite_journal import SQLiteJournal
from bgfunctions.views import REDACTED, record_to_view

# Virtual time starts at a whole second of today: a journal prunes records older than a week.
START = float(int(SystemClock().now()))
XSS = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
SECRET_HEADERS = {
    "Authorization": "Bearer s3cret-token",
    "Cookie": "session=s3cret-cookie",
    "Proxy-Authorization": "Basic s3cret-proxy",
}


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ok(request: Request, context: object) -> None:
    """A background handler that succeeds."""


def boom(request: Request, context: object) -> None:
    raise RuntimeError(XSS)


def registry() -> Registry:
    functions = Registry()
    functions.add("ok-background", ok)
    functions.add("boom-background", boom)
    functions.add("hello", lambda request, context: "hello", config=Config())
    return functions


def make_app(journal: Any = None) -> App:
    return App(registry(), executor=InlineExecutor(clock=VirtualClock(START), journal=journal))


def call(asgi: ASGIApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def run_two(app: App) -> tuple[str, str]:
    """Accept one succeeding and one failing invocation (the second a virtual second later),
    run every attempt, and return their request ids."""
    good = app.enqueue("ok-background").request_id
    assert isinstance(app.executor, InlineExecutor)
    app.executor.run_until(START + 1)
    bad = app.enqueue(
        "boom-background",
        Request(
            "POST",
            "/.netlify/functions/boom-background?x=1",
            headers={**SECRET_HEADERS, "X-Trace": "visible"},
            body=b"0123456789",
        ),
    ).request_id
    app.executor.drain()
    return good, bad


@pytest.fixture
def served() -> Iterator[tuple[ASGIApp, str, str]]:
    """An ASGIApp with the view on, over an App that ran one good and one failing invocation."""
    app = make_app()
    good, bad = run_two(app)
    yield ASGIApp(app, invocations_view=True), good, bad
    app.shutdown()


# -- record_to_view ------------------------------------------------------------------------------


def test_record_to_view_redacts_credentials_and_omits_the_body() -> None:
    """Authorization, Proxy-Authorization, Cookie, Set-Cookie values (any case) are redacted."""
    record = InvocationRecord(
        request_id="01ABC",
        function="f",
        method="POST",
        url="/x",
        headers=(
            ("authorization", "a"),
            ("Cookie", "c"),
            ("set-cookie", "s"),
            ("PROXY-AUTHORIZATION", "p"),
            ("x-keep", "kept"),
        ),
        body=b"secret body",
        accepted_at=1_700_000_000.0,
    )
    view = record_to_view(record)
    assert view["headers"] == [
        ["authorization", REDACTED],
        ["Cookie", REDACTED],
        ["set-cookie", REDACTED],
        ["PROXY-AUTHORIZATION", REDACTED],
        ["x-keep", "kept"],
    ]
    assert view["body_size"] == 11
    assert "body" not in view
    assert "secret body" not in json.dumps(view)
    assert view["accepted_at_iso"] == "2023-11-14T22:13:20.000Z"


def test_record_to_view_lists_every_attempt_with_its_fields() -> None:
    """Each attempt: number, started_at, ended_at, duration, outcome, error type and message."""
    app = make_app()
    try:
        _, bad = run_two(app)
        record = app.invocations.get(bad)
        assert record is not None
        view = record_to_view(record)
    finally:
        app.shutdown()
    assert view["state"] == "failed"
    assert view["function"] == "boom-background"
    assert view["method"] == "POST"
    assert view["url"] == "/.netlify/functions/boom-background?x=1"
    assert view["finished_at"] == record.finished_at
    assert view["next_run_at"] is None
    assert view["replay_of"] is None
    attempts = view["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [round(a["started_at"] - view["accepted_at"]) for a in attempts] == [0, 60, 180]
    for attempt in attempts:
        assert set(attempt) == {
            "number",
            "started_at",
            "ended_at",
            "duration",
            "outcome",
            "error_type",
            "error_message",
        }
        assert attempt["outcome"] == Outcome.ERROR.value
        assert attempt["error_type"] == "RuntimeError"
        assert attempt["error_message"] == XSS
        assert attempt["duration"] == attempt["ended_at"] - attempt["started_at"]


# -- the JSON endpoints --------------------------------------------------------------------------


def test_list_is_newest_first_with_attempts_and_redacted_headers(
    served: tuple[ASGIApp, str, str],
) -> None:
    """GET /.bgfunctions/invocations lists newest first, with attempts, headers redacted."""
    asgi, good, bad = served
    response = call(asgi, "GET", "/.bgfunctions/invocations")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert [i["request_id"] for i in data["invocations"]] == [bad, good]
    assert isinstance(data["now"], float)
    failed, succeeded = data["invocations"]
    assert (failed["state"], len(failed["attempts"])) == ("failed", 3)
    assert (succeeded["state"], len(succeeded["attempts"])) == ("succeeded", 1)
    headers = dict(failed["headers"])
    assert headers["authorization"] == REDACTED
    assert headers["cookie"] == REDACTED
    assert headers["proxy-authorization"] == REDACTED
    assert headers["x-trace"] == "visible"
    assert "s3cret" not in response.text
    assert failed["body_size"] == 10


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("function=ok-background", ["good"]),
        ("state=failed", ["bad"]),
        ("state=failed,succeeded", ["bad", "good"]),
        ("state=failed&state=succeeded", ["bad", "good"]),
        ("limit=1", ["bad"]),
        ("function=nope", []),
        ("state=running", []),
    ],
)
def test_list_filters(served: tuple[ASGIApp, str, str], query: str, expected: list[str]) -> None:
    """?function=, ?state= (repeated or comma-separated) and ?limit= filter the list."""
    asgi, good, bad = served
    ids = {"good": good, "bad": bad}
    data = call(asgi, "GET", f"/.bgfunctions/invocations?{query}").json()
    assert [i["request_id"] for i in data["invocations"]] == [ids[e] for e in expected]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=bogus", "state: expected one of accepted, running"),
        ("limit=0", "limit: expected an integer from 1 to 1000; got '0'"),
        ("limit=abc", "limit: expected an integer from 1 to 1000; got 'abc'"),
        ("limit=1001", "got '1001'"),
        ("colour=red", "unknown query parameter(s) colour; expected function, state, limit"),
    ],
)
def test_a_bad_query_is_a_400_that_says_what_was_expected(
    served: tuple[ASGIApp, str, str], query: str, message: str
) -> None:
    """A bad filter answers 400 JSON naming the parameter, what it expects and what it got."""
    asgi, _, _ = served
    response = call(asgi, "GET", f"/.bgfunctions/invocations?{query}")
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_one_invocation_by_request_id(served: tuple[ASGIApp, str, str]) -> None:
    """GET /.bgfunctions/invocations/ID answers that invocation."""
    asgi, good, _ = served
    response = call(asgi, "GET", f"/.bgfunctions/invocations/{good}")
    assert response.status_code == 200
    invocation = response.json()["invocation"]
    assert invocation["request_id"] == good
    assert invocation["attempts"][0]["outcome"] == "succeeded"


def test_an_unknown_request_id_is_a_404_json(served: tuple[ASGIApp, str, str]) -> None:
    """An unknown request id, or an unknown path under the prefix, is 404 JSON."""
    asgi, _, _ = served
    response = call(asgi, "GET", "/.bgfunctions/invocations/01NOPE")
    assert response.status_code == 404
    assert response.json() == {"error": "no invocation with request id '01NOPE'", "status": 404}
    other = call(asgi, "GET", "/.bgfunctions/elsewhere")
    assert other.status_code == 404
    assert "expected /.bgfunctions/" in other.json()["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/.bgfunctions/", "/.bgfunctions/invocations"])
def test_the_view_is_read_only(served: tuple[ASGIApp, str, str], method: str, path: str) -> None:
    """Anything but GET and HEAD is 405 with Allow: GET, HEAD, and changes nothing."""
    asgi, _, _ = served
    before = call(asgi, "GET", "/.bgfunctions/invocations").json()["invocations"]
    response = call(asgi, method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert "read-only" in response.json()["error"]
    assert call(asgi, "GET", "/.bgfunctions/invocations").json()["invocations"] == before


def test_head_gets_the_headers_of_get_without_a_body(served: tuple[ASGIApp, str, str]) -> None:
    """HEAD answers GET's status and content-length, with no body."""
    asgi, _, _ = served
    get = call(asgi, "GET", "/.bgfunctions/")
    head = call(asgi, "HEAD", "/.bgfunctions/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))


def test_the_prefix_without_a_slash_redirects_below_the_mount() -> None:
    """/.bgfunctions redirects to /.bgfunctions/, keeping the mount point (root_path)."""
    app = make_app()
    try:
        asgi = ASGIApp(app, invocations_view=True)
        response = call(asgi, "GET", "/.bgfunctions")
        assert response.status_code == 308
        assert response.headers["location"] == "/.bgfunctions/"
        from starlette.applications import Starlette
        from starlette.routing import Mount

        outer = Starlette(routes=[Mount("/fn", app=asgi)])
        mounted = call(outer, "GET", "/fn/.bgfunctions")  # type: ignore[arg-type]
        assert mounted.headers["location"] == "/fn/.bgfunctions/"
        assert call(outer, "GET", "/fn/.bgfunctions/invocations").status_code == 200  # type: ignore[arg-type]
    finally:
        app.shutdown()


def test_the_view_is_off_by_default() -> None:
    """Without invocations_view=True the prefix is an ordinary path: Netlify's 404."""
    app = make_app()
    try:
        run_two(app)
        asgi = ASGIApp(app)
        for path in ("/.bgfunctions/", "/.bgfunctions/invocations"):
            response = call(asgi, "GET", path)
            assert response.status_code == 404
            assert "request_id" not in response.text
        # and functions are still served as before
        assert call(asgi, "GET", "/.netlify/functions/hello").text == "hello"
    finally:
        app.shutdown()


def test_functions_are_still_served_with_the_view_on(served: tuple[ASGIApp, str, str]) -> None:
    """The view only takes /.bgfunctions/; function routes answer as before."""
    asgi, _, _ = served
    assert call(asgi, "GET", "/.netlify/functions/hello").text == "hello"
    response = call(asgi, "POST", "/.netlify/functions/ok-background")
    assert response.status_code == 202


# -- the page ------------------------------------------------------------------------------------


def test_the_page_is_self_contained_html_with_a_strict_csp(
    served: tuple[ASGIApp, str, str],
) -> None:
    """The page is HTML with inline CSS/JS only, no external URL, pinned by hash in its CSP."""
    asgi, _, _ = served
    response = call(asgi, "GET", "/.bgfunctions/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "<script>" in page
    assert "<style>" in page
    assert not re.search(r"https?://|\bsrc\s*=|<link\b|\bimport\s*\(", page)
    assert "innerHTML" not in page
    assert "document.write" not in page
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", csp)
    assert "connect-src 'self'" in csp
    # The data is fetched by the script, never written into the page by the server.
    assert "RuntimeError" not in page


# -- the dev server ------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "netlify" / "functions").mkdir(parents=True)
    (root / "netlify" / "functions" / "hello.py").write_text(
        "def handler(request, context):\n    return 'hi'\n", encoding="utf-8"
    )
    (root / "netlify" / "functions" / "boom-background.py").write_text(
        "def handler(request, context):\n    raise RuntimeError('boom')\n", encoding="utf-8"
    )
    return root


def dev_server(site: Path, **options: Any) -> DevServer:
    return DevServer(site, ServeOptions(**options), out=io.StringIO())


@pytest.mark.parametrize(
    ("host", "flag", "on"),
    [
        ("127.0.0.1", None, True),
        ("::1", None, True),
        ("localhost", None, True),
        ("0.0.0.0", None, False),
        ("192.168.1.10", None, False),
        ("0.0.0.0", True, True),
        ("127.0.0.1", False, False),
    ],
)
def test_dev_server_view_is_on_for_loopback_only_unless_asked(
    site: Path, host: str, flag: bool | None, on: bool
) -> None:
    """The dev server serves /.bgfunctions/ on a loopback address; elsewhere only if asked."""
    server = dev_server(site, host=host, invocations_view=flag)
    try:
        assert server.view_enabled is on
        response = call(server.asgi, "GET", "/.bgfunctions/invocations")
        assert response.status_code == (200 if on else 404)
    finally:
        server.app.shutdown()


def test_dev_server_warns_when_the_view_is_on_a_public_address(site: Path) -> None:
    """--invocations-view on a non-loopback address prints a warning naming the address."""
    server = dev_server(site, host="0.0.0.0", invocations_view=True)
    try:
        server.warn_if_public()
        assert isinstance(server.out, io.StringIO)
        text = server.out.getvalue()
        assert "warning: --invocations-view on 0.0.0.0" in text
        assert "/.bgfunctions/" in text
    finally:
        server.app.shutdown()


def test_dev_server_never_serves_the_journal_as_a_static_file(site: Path) -> None:
    """With publish = ".", /.bgfunctions/journal.sqlite3 is not served, view on or off."""
    (site / "netlify.toml").write_text('[build]\npublish = "."\n', encoding="utf-8")
    (site / ".bgfunctions").mkdir()
    (site / ".bgfunctions" / "journal.sqlite3").write_bytes(b"SQLite format 3\x00secret")
    (site / "index.html").write_text("home", encoding="utf-8")
    for flag in (False, True):
        server = dev_server(site, invocations_view=flag)
        try:
            assert call(server.asgi, "GET", "/").text == "home"
            response = call(server.asgi, "GET", "/.bgfunctions/journal.sqlite3")
            assert response.status_code == 404
            assert b"secret" not in response.content
        finally:
            server.app.shutdown()


def test_dev_server_records_invocations_in_the_journal_file(site: Path) -> None:
    """ServeOptions(journal=PATH) creates the directory and records each invocation there."""
    path = site / JOURNAL_FILE
    server = dev_server(site, journal=path, retry_delays=())
    try:
        assert isinstance(server.app.journal, SQLiteJournal)
        response = call(server.asgi, "POST", "/.netlify/functions/boom-background")
        request_id = response.headers["x-nf-request-id"]
        assert server.app.get(request_id).wait(10).state is State.FAILED
    finally:
        server.app.shutdown()
        server.app.journal.close()
    assert path.is_file()
    reader = SQLiteJournal(path)
    try:
        record = reader.get(request_id)
        assert record is not None
        assert record.state is State.FAILED
    finally:
        reader.close()


def test_dev_server_keeps_records_in_memory_by_default(site: Path) -> None:
    """Without ServeOptions.journal, records stay in memory and no file is written."""
    server = dev_server(site)
    try:
        assert isinstance(server.app.journal, MemoryJournal)
    finally:
        server.app.shutdown()
    assert not (site / ".bgfunctions").exists()


# -- the CLI -------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def journal_site(tmp_path: Path) -> tuple[Path, str, str]:
    """A site directory whose journal file holds one succeeded and one failed invocation."""
    path = tmp_path / JOURNAL_FILE
    path.parent.mkdir()
    journal = SQLiteJournal(path)
    app = make_app(journal)
    try:
        good, bad = run_two(app)
    finally:
        app.shutdown()
        journal.close()
    return tmp_path, good, bad


def test_invocations_prints_a_table(
    capsys: pytest.CaptureFixture[str], journal_site: tuple[Path, str, str]
) -> None:
    """`bgfunctions invocations SITE` prints id, function, state, attempts, UTC time, error."""
    site, good, bad = journal_site
    status, out, err = cli(capsys, "invocations", str(site))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "REQUEST ID",
        "FUNCTION",
        "STATE",
        "ATTEMPTS",
        "ACCEPTED AT (UTC)",
        "LAST ERROR",
    ]
    assert re.split(r"\s{2,}", lines[1]) == [
        bad,
        "boom-background",
        "failed",
        "3",
        utc(START + 1),
        # one line, cut at 80 characters
        ("RuntimeError: " + XSS)[:77] + "...",
    ]
    assert re.split(r"\s{2,}", lines[2]) == [
        good,
        "ok-background",
        "succeeded",
        "1",
        utc(START),
    ]
    assert len(lines) == 3


def test_invocations_filters_and_json(
    capsys: pytest.CaptureFixture[str], journal_site: tuple[Path, str, str]
) -> None:
    """--function, --state, --limit filter; --json prints redacted records with attempts."""
    site, good, bad = journal_site
    _, out, _ = cli(capsys, "invocations", str(site), "--state", "succeeded", "--json")
    assert [r["request_id"] for r in json.loads(out)] == [good]
    _, out, _ = cli(capsys, "invocations", str(site), "--function", "boom-background", "--json")
    (record,) = json.loads(out)
    assert record["request_id"] == bad
    assert len(record["attempts"]) == 3
    assert dict(record["headers"])["authorization"] == REDACTED
    assert "s3cret" not in out
    _, out, _ = cli(capsys, "invocations", str(site), "--limit", "1", "--json")
    assert [r["request_id"] for r in json.loads(out)] == [bad]
    _, out, _ = cli(capsys, "invocations", str(site), "--function", "nope")
    assert out == "no invocations\n"


def test_invocations_without_a_journal_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No journal file: one line naming the file and how to make one; nothing is created."""
    status, out, err = cli(capsys, "invocations", str(tmp_path))
    assert status == 2
    assert out == ""
    expected = f"no journal at {tmp_path / JOURNAL_FILE}: `bgfunctions serve {tmp_path}`"
    assert err.startswith(f"bgfunctions: error: {expected}")
    assert err.count("\n") == 1
    assert not (tmp_path / ".bgfunctions").exists()


def test_invocations_refuses_a_bad_limit(
    capsys: pytest.CaptureFixture[str], journal_site: tuple[Path, str, str]
) -> None:
    """--limit must be a whole number above 0."""
    site, _, _ = journal_site
    status, _, err = cli(capsys, "invocations", str(site), "--limit", "0")
    assert status == 2
    assert "expected a whole number above 0; got '0'" in err


def test_replay_appends_an_accepted_invocation_that_replays_the_old_one(
    capsys: pytest.CaptureFixture[str], journal_site: tuple[Path, str, str]
) -> None:
    """`bgfunctions replay ID` adds a new accepted record with replay_of, prints its new id."""
    site, _, bad = journal_site
    status, out, err = cli(capsys, "replay", bad, "--site", str(site))
    assert (status, err) == (0, "")
    new_id = out.strip()
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", new_id)
    assert new_id != bad
    journal = SQLiteJournal(site / JOURNAL_FILE)
    try:
        new, old = journal.get(new_id), journal.get(bad)
    finally:
        journal.close()
    assert new is not None
    assert old is not None
    assert new.state is State.ACCEPTED
    assert new.replay_of == bad
    assert new.attempts == ()
    assert (new.function, new.method, new.url, new.headers, new.body) == (
        old.function,
        old.method,
        old.url,
        old.headers,
        old.body,
    )
    assert new.next_run_at == new.accepted_at
    _, out, _ = cli(capsys, "invocations", str(site), "--state", "accepted", "--json")
    assert [(r["request_id"], r["replay_of"]) for r in json.loads(out)] == [(new_id, bad)]


def test_replay_of_an_unknown_or_unfinished_invocation_is_refused(
    capsys: pytest.CaptureFixture[str], journal_site: tuple[Path, str, str]
) -> None:
    """An unknown id, or one that has not finished, is a one-line error; nothing is added."""
    site, _, bad = journal_site
    status, _, err = cli(capsys, "replay", "01NOPE", "--site", str(site))
    assert status == 2
    assert err == f"bgfunctions: error: no invocation '01NOPE' in the journal of {site}\n"
    _, out, _ = cli(capsys, "replay", bad, "--site", str(site))
    status, _, err = cli(capsys, "replay", out.strip(), "--site", str(site))
    assert status == 2
    assert "is accepted: expected a finished one" in err
    _, out, _ = cli(capsys, "invocations", str(site), "--json")
    assert len(json.loads(out)) == 3


# -- a real server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.server
@pytest.mark.realtime
def test_serve_records_in_the_site_journal_that_the_cli_and_view_read(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """`bgfunctions serve` writes SITE/.bgfunctions/journal.sqlite3; `invocations` reads it and
    /.bgfunctions/invocations serves it. Deadlines: 15 s to start, 15 s for the attempt."""
    port = free_port()
    argv = [sys.executable, "-m", "bgfunctions", "serve", str(site), "--port", str(port)]
    process = subprocess.Popen(
        [*argv, "--no-reload", "--retry-delays", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    clock = SystemClock()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = clock.monotonic() + 15
        while True:
            try:
                response = httpx.post(f"{base}/.netlify/functions/boom-background", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, "the server exited"
                assert clock.monotonic() < deadline, "the server did not start in 15 s"
                clock.sleep(0.05)
        assert response.status_code == 202
        request_id = response.headers["x-nf-request-id"]
        deadline = clock.monotonic() + 15
        while True:
            view = httpx.get(f"{base}/.bgfunctions/invocations/{request_id}", timeout=5)
            assert view.status_code == 200
            if view.json()["invocation"]["state"] == "failed":
                break
            assert clock.monotonic() < deadline, view.text
            clock.sleep(0.05)
        status, out, err = cli(capsys, "invocations", str(site), "--json")
        assert (status, err) == (0, "")
        (record,) = json.loads(out)
        assert (record["request_id"], record["state"]) == (request_id, "failed")
        assert record["attempts"][0]["error_message"] == "boom"
        assert httpx.post(f"{base}/.bgfunctions/invocations", timeout=5).status_code == 405
    finally:
        process.terminate()
        process.wait(timeout=15)
