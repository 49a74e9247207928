"""The dev server behind ``bgfunctions serve``: a site's functions, its static files, live reload.

It serves the functions of a site directory over uvicorn (the ``[serve]`` extra), then the
site's publish directory (``[build] publish``) behind them, then Netlify's plain 404. It prints
the function table at start and a line per invocation event, and reloads the functions when a
file in the functions directory or ``netlify.toml`` changes, without dropping accepted
invocations: an attempt that starts after a reload runs the new code.

Invocations are kept in a journal: in memory by default, in a SQLite file when
``ServeOptions.journal`` names one (``bgfunctions serve`` passes
``SITE_DIR/.bgfunctions/journal.sqlite3``), so that ``bgfunctions invocations`` and ``bgfunctions
replay`` can read and add to it. The invocations view (``/.bgfunctions/``) is on when the server
binds a loopback address and off otherwise, unless ``ServeOptions.invocations_view`` says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import mimetypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bgfunctions.app import App
from bgfunctions.asgi import ASGIApp, Receive, Scope, Send
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import BgFunctionsError
from bgfunctions.executor import Executor
from bgfunctions.ids import new_request_id
from bgfunctions.invocation import Event, EventKind, State
from bgfunctions.journal import Journal
from bgfunctions.logs import InvocationFilter
from bgfunctions.redaction import Redaction
from bgfunctions.registry import Registry
from bgfunctions.retry import Limits, RetryPolicy
from bgfunctions.views import PREFIX

__all__ = [
    "JOURNAL_FILE",
    "DevServer",
    "ServeOptions",
    "StaticFiles",
    "format_event",
    "is_loopback",
    "open_sqlite_journal",
]

JOURNAL_FILE = Path(".bgfunctions") / "journal.sqlite3"
"""Where ``bgfunctions serve`` keeps a site's journal, relative to the site directory."""

log = logging.getLogger("bgfunctions.devserver")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """What ``bgfunctions serve`` takes on its command line."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default."""
    port: int = 8888
    """TCP port to listen on."""
    executor: str = "thread"
    """``thread`` or ``process``."""
    retry_delays: tuple[float, ...] = (60.0, 120.0)
    """Seconds between a failed background attempt and the next; one retry per entry."""
    background_timeout: float = 900.0
    """Seconds one background attempt may run."""
    sync_timeout: float = 60.0
    """Seconds a synchronous function may run."""
    reload: bool = True
    """Reload functions when their files or netlify.toml change."""
    journal: Path | None = None
    """The SQLite journal file (its directory is created); None keeps records in memory."""
    invocations_view: bool | None = None
    """Serve ``/.bgfunctions/``; None: only when ``host`` is a loopback address."""
    redaction: Redaction | None = None
    """What the view hides; None: the default :class:`~bgfunctions.Redaction`."""


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


MAX_PAGES_ENV = "BGFUNCTIONS_JOURNAL_MAX_PAGES"
"""A test and ops knob: caps the journal file at this many pages (``PRAGMA max_page_count``)."""


def open_sqlite_journal(path: Path) -> Journal:
    """A ``SQLiteJournal`` on ``path``, creating its directory.

    When ``BGFUNCTIONS_JOURNAL_MAX_PAGES`` is set, the journal's writer may grow the file to at
    most that many pages (``PRAGMA max_page_count``, which SQLite keeps per connection, so it
    cannot be set from outside): a full disk, reproducible, for fault tests and drills.
    """
    # Imported here: only a server or command that keeps a journal file pays for SQLite.
    from bgfunctions.sqlite_journal import SQLiteJournal

    path.parent.mkdir(parents=True, exist_ok=True)
    pages = os.environ.get(MAX_PAGES_ENV, "").strip()
    if pages and not (pages.isdigit() and int(pages) >= 1):
        raise BgFunctionsError(f"{MAX_PAGES_ENV}: expected a page count >= 1; got {pages!r}")
    journal = SQLiteJournal(path)
    if pages:
        journal._execute_for_tests(f"PRAGMA max_page_count = {int(pages)}")
    return journal


class StaticFiles:
    """Files of a publish directory; never serves anything outside it."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None and root.is_dir() else None

    def find(self, path: str) -> Path | None:
        """The file a URL path names (``/a/`` → ``a/index.html``, ``/a`` → ``a.html``), or None."""
        if self.root is None or "\x00" in path:
            return None
        try:
            candidate = (self.root / path.lstrip("/")).resolve()
            if not self._inside(candidate):
                return None  # .. or a symlink out of the publish directory
            if any(part.startswith(".") for part in candidate.relative_to(self.root).parts):
                # Hidden files are never published: the journal lives in .bgfunctions/ (with
                # request headers and bodies), and .git or .env may sit in a publish dir of ".".
                return None
            if candidate.is_dir():
                candidate = candidate / "index.html"
            elif not candidate.is_file():
                candidate = candidate.with_name(candidate.name + ".html")
            # index.html or NAME.html may itself be a symlink out of the publish directory.
            candidate = candidate.resolve()
            return candidate if self._inside(candidate) and candidate.is_file() else None
        except (OSError, RuntimeError, ValueError):
            # A name too long for the file system, a symlink loop: nothing to serve.
            return None

    def _inside(self, candidate: Path) -> bool:
        assert self.root is not None
        return candidate == self.root or self.root in candidate.parents

    def exists(self, path: str) -> bool:
        """Whether :meth:`find` names a file (what ``prefer_static`` asks)."""
        return self.find(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        found = self.find(scope["path"]) if scope["method"] in ("GET", "HEAD") else None
        if found is None:
            request_id = new_request_id()  # every answer carries a real one (issue 11, 14)
            body = f"Not Found - Request ID: {request_id}\n".encode()
            await _plain(send, 404, body, b"text/plain; charset=utf-8", request_id=request_id)
            return
        data = await asyncio.to_thread(found.read_bytes)
        kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        await _plain(send, 200, data, kind.encode(), head=scope["method"] == "HEAD")


async def _plain(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    head: bool = False,
    request_id: str | None = None,
) -> None:
    # HEAD gets the headers GET would get, content-length included, and no body.
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-nf-request-id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def format_event(event: Event, clock: Clock) -> str | None:
    """One line per invocation event, each with the request id; None for events not shown."""
    r = event.record
    head = f"[{r.request_id}] {r.function}"
    attempt = r.last_attempt
    if event.kind is EventKind.ACCEPTED:
        return f"{head}: queued"
    if event.kind is EventKind.ATTEMPT_STARTED and attempt is not None:
        return f"{head}: attempt {attempt.number} started"
    if event.kind is EventKind.ATTEMPT_ENDED and attempt is not None and attempt.outcome:
        took = f"{attempt.duration:.3f} s" if attempt.duration is not None else "?"
        error = f" ({attempt.error_type}: {attempt.error_message})" if attempt.error_type else ""
        return f"{head}: attempt {attempt.number} {attempt.outcome.value} in {took}{error}"
    if event.kind is EventKind.RETRY_SCHEDULED and r.next_run_at is not None:
        delay = r.next_run_at - clock.now()
        return f"{head}: retry scheduled in {max(0.0, delay):.1f} s"
    if event.kind in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED):
        return f"{head}: {event.kind.value} after {len(r.attempts)} attempt(s)"
    return None


class _ServerLog(logging.Filter):
    """What the dev server shows of the logging system: warnings from anywhere, and INFO from
    bgfunctions (a failed attempt's traceback) or from code running inside a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_attempt_failure(record) and not record.exc_info:
            return False  # the event line already says it (a timeout, a crash)
        return (
            record.levelno >= logging.WARNING
            or record.name == "bgfunctions"
            or record.name.startswith("bgfunctions.")
            or bool(getattr(record, "bg_request_id", ""))
        )


def _is_attempt_failure(record: logging.LogRecord) -> bool:
    """A failed attempt as the executor logs it (see ``executor._log_failure``)."""
    return getattr(record, "bg_failed_attempt", False) is True


class _LineFormatter(logging.Formatter):
    """``[request id] function: message`` inside a handler, as the event lines are; else
    ``logger: LEVEL: message``. Tracebacks follow on their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "bg_request_id", "")
        if _is_attempt_failure(record):
            # The event line just said how it ended: only the traceback follows.
            return f"[{request_id}] {record.bg_function}: attempt {record.bg_attempt} traceback:"  # type: ignore[attr-defined]
        if request_id:
            return f"[{request_id}] {getattr(record, 'bg_function', '')}: {record.message}"
        return f"{record.name}: {record.levelname}: {record.message}"


class DevServer:
    """A site served with its functions, static files and reload."""

    def __init__(
        self,
        site_dir: str | Path,
        options: ServeOptions | None = None,
        *,
        out: TextIO | None = None,
    ) -> None:
        self.site_dir = Path(site_dir)
        self.options = options if options is not None else ServeOptions()
        self.out = out if out is not None else sys.stdout
        self.clock: Clock = SystemClock()
        self.registry = Registry.from_site(self.site_dir)
        self.static = StaticFiles(self.registry.publish_dir)
        journal = (
            open_sqlite_journal(self.options.journal) if self.options.journal is not None else None
        )
        self.app = App(
            self.registry,
            executor=self._executor(journal),
            limits=Limits(
                background_timeout=self.options.background_timeout,
                sync_timeout=self.options.sync_timeout,
            ),
            retry=RetryPolicy(delays=self.options.retry_delays),
            on_event=self._print_event,
            static_exists=self.static.exists,
        )
        view = self.options.invocations_view
        self.view_enabled = is_loopback(self.options.host) if view is None else view
        """Whether ``/.bgfunctions/`` is served."""
        self.asgi = ASGIApp(
            self.app,
            fallback=self.static,
            invocations_view=self.view_enabled,
            redaction=self.options.redaction,
        )

    def _executor(self, journal: Journal | None) -> Executor:
        if self.options.executor == "process":
            from bgfunctions.processes import ProcessExecutor

            return ProcessExecutor(clock=self.clock, journal=journal)
        if self.options.executor != "thread":
            raise BgFunctionsError(
                f"--executor: expected 'thread' or 'process'; got {self.options.executor!r}"
            )
        from bgfunctions.threads import ThreadExecutor

        return ThreadExecutor(clock=self.clock, journal=journal)

    def _print_event(self, event: Event) -> None:
        line = format_event(event, self.clock)
        if line is not None:
            print(line, file=self.out, flush=True)

    def print(self, text: str) -> None:
        """Write one line to the server's output."""
        print(text, file=self.out, flush=True)

    def reload(self) -> bool:
        """Rediscover the site; keep serving the old functions if the new ones do not load."""
        try:
            registry = Registry.from_site(self.site_dir)
        except (BgFunctionsError, OSError) as exc:
            self.print(f"reload failed, still serving the previous functions: {exc}")
            return False
        self.registry = registry
        self.static = StaticFiles(registry.publish_dir)
        self.asgi.fallback = self.static
        self.app.static_exists = self.static.exists
        self.app.reload(registry)
        self.print(f"reloaded {len(registry)} function(s)")
        self._warn_orphans(registry)
        return True

    def _warn_orphans(self, registry: Registry) -> None:
        # An accepted invocation of a function the reload removed has no code to run its next
        # attempt: say so rather than let it wait silently.
        unfinished = self.app.invocations.list(
            state=(State.ACCEPTED, State.RUNNING, State.RETRY_SCHEDULED)
        )
        for record in unfinished:
            if record.function not in registry:
                self.print(
                    f"[{record.request_id}] {record.function}: warning: the function was removed "
                    f"by the reload; this {record.state.value} invocation will not run again"
                )

    def watched_paths(self) -> list[Path]:
        """The functions directory and ``netlify.toml``, those that exist."""
        paths = [p for p in (self.registry.functions_dir, self.site_dir / "netlify.toml") if p]
        return [p for p in paths if p.exists()]

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on changes until ``stop`` is set (needs watchfiles from the [serve] extra)."""
        from watchfiles import awatch

        async for _ in awatch(*self.watched_paths(), stop_event=stop):
            await asyncio.to_thread(self.reload)

    def warn_if_public(self) -> None:
        """Print a warning when the bind address is not a loopback address, and another when
        the invocations view is on there."""
        if is_loopback(self.options.host):
            return
        self.print(
            f"warning: serving on {self.options.host}, which is not a loopback address: "
            "anyone who can reach this machine can call these functions"
        )
        if self.view_enabled:
            self.print(
                f"warning: --invocations-view on {self.options.host}: anyone who can reach this "
                f"machine can read every invocation's URL and headers at {PREFIX}/"
            )

    def run(self, *, table: Callable[[Registry], str] | None = None) -> None:
        """Serve until interrupted."""
        try:
            import uvicorn
        except ImportError:
            raise BgFunctionsError(
                "bgfunctions serve needs uvicorn: pip install 'bgfunctions[serve]'"
            ) from None
        if self.options.reload:
            # Checked now: a watcher that fails inside its task would only show at shutdown.
            try:
                import watchfiles  # noqa: F401
            except ImportError:
                raise BgFunctionsError(
                    "reloading needs watchfiles: pip install 'bgfunctions[serve]', or pass "
                    "--no-reload"
                ) from None
        if table is not None:
            self.print(table(self.registry))
        self.warn_if_public()
        config = uvicorn.Config(
            self.asgi,
            host=self.options.host,
            port=self.options.port,
            log_level="warning",
            lifespan="on",
        )
        server = uvicorn.Server(config)
        self.print(f"serving {self.site_dir} on http://{self.options.host}:{self.options.port}")
        if self.view_enabled:
            self.print(f"invocations: http://{self.options.host}:{self.options.port}{PREFIX}/")
        root = logging.getLogger()
        level = root.level
        handler = self._show_logs()
        try:
            asyncio.run(self._serve(server))
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            self.app.journal.close()

    def _show_logs(self) -> logging.Handler:
        """Print log records on the server's output, with the request id of the attempt that
        wrote them: the handlers' own (``context.log``, any logger) and failed attempts'
        tracebacks."""
        handler = logging.StreamHandler(self.out)
        handler.addFilter(InvocationFilter())
        handler.addFilter(_ServerLog())
        handler.setFormatter(_LineFormatter())
        root = logging.getLogger()
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)  # this process is the dev server: the filter decides
        return handler

    async def _serve(self, server: object) -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop)) if self.options.reload else None
        try:
            await server.serve()  # type: ignore[attr-defined]
        finally:
            stop.set()
            if watcher is not None:
                await watcher
