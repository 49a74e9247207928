"""The invocations page in a real browser: headless Chromium against a real uvicorn server.

The server runs in a thread on a free loopback port and serves ``ASGIApp(app,
invocations_view=True)`` over an App whose InlineExecutor ran one invocation that succeeded and
one that failed three times with an error message holding ``<script>``. Chromium loads
``/.bgfunctions/``, runs its script for up to 3 s of virtual time (``--virtual-time-budget``),
and dumps the DOM, which must hold both rows and all four attempts, the message as text. A
screenshot is kept in ``artifacts/invocations-view.png``.

Needs Debian's ``chromium`` (``apt-get install -y chromium``): without it the test skips, and
fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bgfunctions.app import App
from bgfunctions.asgi import ASGIApp, Receive, Scope, Send
from bgfunctions.clock import SystemClock, VirtualClock
from bgfunctions.context import Context
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.registry import Registry
from bgfunctions.requests import Request

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
START = float(int(SystemClock().now()))
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='img'\">"
INSTALL = "apt-get install -y chromium"


def chromium() -> str:
    """The Chromium binary; skip (fail under CI=true) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    message = f"headless Chromium is not installed (Debian: `{INSTALL}`)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def ok(request: Request, context: object) -> None:
    """Succeeds."""


def boom(request: Request, context: object) -> None:
    raise RuntimeError(XSS)


def signup(request: Request, context: Context) -> None:
    """Commits one step, fails once, then commits a second on its retry."""
    context.step.run("account", lambda: "acct_1")
    if context.attempt == 1:
        raise RuntimeError("billing down")
    context.step.run("billing", lambda: "cus_1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    base: str
    good: str
    bad: str
    stepped: str
    list_requests: list[str] = field(default_factory=list)


@pytest.fixture
def served() -> Iterator[Served]:
    """uvicorn in a thread serving the view over two finished invocations; stopped after."""
    import uvicorn

    functions = Registry()
    functions.add("ok-background", ok)
    functions.add("boom-background", boom)
    functions.add("signup-background", signup)
    executor = InlineExecutor(clock=VirtualClock(START))
    app = App(functions, executor=executor)
    good = app.enqueue("ok-background").request_id
    executor.run_until(START + 1)
    bad = app.enqueue("boom-background").request_id
    executor.drain()
    executor.run_until(START + 600)
    stepped = app.enqueue("signup-background").request_id
    executor.drain()

    asgi = ASGIApp(app, invocations_view=True)
    port = free_port()
    result = Served(f"http://127.0.0.1:{port}", good, bad, stepped)

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        # Counts the page's polls of the JSON, to see that it refreshes by itself.
        if scope["type"] == "http" and scope["path"] == "/.bgfunctions/invocations":
            result.list_requests.append(scope["path"])
        await asgi(scope, receive, send)

    config = uvicorn.Config(
        counting, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-views-test", daemon=True)
    thread.start()
    clock = SystemClock()
    deadline = clock.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert clock.monotonic() < deadline, "uvicorn did not start within 15 s"
        clock.sleep(0.02)
    try:
        yield result
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.shutdown()


def run_chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=3000",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


class Dom(HTMLParser):
    """The elements of a dumped DOM: each with its tag, attributes and text content."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("meta", "input", "br", "img", "link"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and (cls is None or cls in (e["attrs"].get("class") or "").split())
        ]


@pytest.mark.server
@pytest.mark.realtime
def test_the_page_renders_invocations_and_attempts_in_chromium(
    served: Served, tmp_path: Path
) -> None:
    """Chromium shows both invocations, their 4 attempts on timelines, the <script> message as
    text; the page polls the JSON again by itself. Deadline: 90 s per Chromium run."""
    binary = chromium()
    url = f"{served.base}/.bgfunctions/"
    done = run_chromium(binary, tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom(done.stdout)

    (body,) = dom.find("body")
    assert body["attrs"].get("data-loaded") == "true", done.stdout[-2000:]
    (title,) = dom.find("title")
    assert title["text"] == "bgfunctions: invocations"  # the message's script never ran

    rows = dom.find("tr", "invocation")
    assert [r["attrs"]["data-request-id"] for r in rows] == [
        served.stepped,
        served.bad,
        served.good,
    ]
    assert "signup-background" in rows[0]["text"]
    assert "boom-background" in rows[1]["text"]
    assert "failed" in rows[1]["text"]
    assert "ok-background" in rows[2]["text"]
    assert "succeeded" in rows[2]["text"]

    # The stepped invocation: each attempt lists the steps it ran or took back from the journal.
    items = dom.find("li", "attempt")
    assert len(items) == 6
    steps = [(li["attrs"]["data-status"], li["text"].split(" · ")) for li in dom.find("li", "step")]
    assert steps == [
        ("ran", ["step account", "ran 0.000 s", "started +0.000 s"]),
        ("replayed", ["step account", "replayed: stored by attempt 1, not run again"]),
        ("ran", ["step billing", "ran 0.000 s", "started +60.000 s"]),
    ]
    assert len(dom.find("div", "tick")) == 2  # one per committed step, on the timeline
    items = items[2:]
    bad_attempts = [li["text"] for li in items[:3]]  # the failed invocation comes next
    assert [t.split(" · ")[0:2] for t in bad_attempts] == [
        ["attempt 1", "error"],
        ["attempt 2", "error"],
        ["attempt 3", "error"],
    ]
    assert [a["attrs"]["data-outcome"] for a in dom.find("li", "attempt")] == [
        "error",
        "succeeded",
        "error",
        "error",
        "error",
        "succeeded",
    ]
    assert "started +60.000 s" in bad_attempts[1]
    assert "started +180.000 s" in bad_attempts[2]
    assert len(dom.find("div", "bar")) == 6
    assert len(dom.find("div", "timeline")) == 3

    # The message is text: the serialised DOM escapes it, and no element came from it.
    errors = [e["text"] for e in dom.find("span", "error")]
    assert errors == ["RuntimeError: billing down"] + [f"RuntimeError: {XSS}"] * 3
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in done.stdout
    assert dom.find("img") == []
    assert len(dom.find("script")) == 1

    # It refreshes itself: more than one poll of the JSON within the 3 s budget.
    assert len(served.list_requests) >= 2


@pytest.mark.server
@pytest.mark.realtime
def test_a_screenshot_of_the_page_is_kept_in_artifacts(served: Served, tmp_path: Path) -> None:
    """A 1200x800 screenshot of the rendered page is written to artifacts/ (a non-empty PNG).
    Deadline: 90 s for the Chromium run."""
    binary = chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "invocations-view.png"
    shot.unlink(missing_ok=True)
    done = run_chromium(
        binary,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,800",
        "--hide-scrollbars",
        f"{served.base}/.bgfunctions/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000  # a blank 1200x800 PNG is far smaller than a rendered table
