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

Facing the world (docs/serving.md, "Security"): every request must name an allowed ``Host``
(loopback names, the bound address, ``ServeOptions.allowed_hosts``), so that a web page cannot
reach the server through DNS rebinding; ``X-Forwarded-For`` counts only with
``ServeOptions.trust_proxy``; waiting work is bounded by ``ServeOptions.max_pending``; static
files stream from disk with ``Range`` and conditional requests (Starlette's ``FileResponse``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bgfunctions.app import App
from bgfunctions.asgi import ASGIApp, Receive, Scope, Send
from bgfunctions.clock import Clock, SystemClock
from bgfunctions.errors import BgFunctionsError
from bgfunctions.executors.base import Executor
from bgfunctions.hosts import AllowedHosts
from bgfunctions.invocation import Event, EventKind, State
from bgfunctions.journals.base import Journal
from bgfunctions.logs import InvocationFilter
from bgfunctions.redaction import Redaction
from bgfunctions.registry import Registry
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy
from bgfunctions.serverlog import LineFormatter, ServerLog, format_event, queued
from bgfunctions.staticfiles import StaticFiles
from bgfunctions.views import PREFIX

_SHUTDOWN_REQUESTS = 5  # seconds in-flight requests get at shutdown

__all__ = [
    "DEFAULT_MAX_PENDING",
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
DEFAULT_MAX_PENDING = 1000
"""Background invocations that may wait (queued or between attempts) before the server answers
503: about 256 MB of bodies at worst, where an unbounded queue grew without limit."""

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
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` patterns answered besides loopback names and ``host`` (see
    :mod:`bgfunctions.hosts`); ``("*",)`` turns the check off."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Background invocations that may wait before requests get 503 with ``Retry-After``."""
    trust_proxy: bool = False
    """Believe ``X-Forwarded-For`` (and ``x-nf-*`` headers) from a proxy on this machine."""


def _bound_host(host: str) -> list[str]:
    """The bind address as an allowed ``Host``, unless it is a wildcard (``0.0.0.0``, ``::``)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host]
    return [] if address.is_unspecified else [str(address)]


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


MAX_SIZE_ENV = "BGFUNCTIONS_JOURNAL_MAX_SIZE"
"""Caps the journal file at this many bytes (``SQLiteJournal(max_size_bytes=...)``)."""


def open_sqlite_journal(path: Path) -> Journal:
    """A ``SQLiteJournal`` on ``path``, creating its directory.

    When ``BGFUNCTIONS_JOURNAL_MAX_SIZE`` is set, the journal file may grow to at most that
    many bytes (``SQLiteJournal(max_size_bytes=...)``): a small disk shared with other data,
    or a full disk, reproducible, for drills.
    """
    # Imported here: only a server or command that keeps a journal file pays for SQLite.
    from bgfunctions.journals.sqlite import SQLiteJournal

    path.parent.mkdir(parents=True, exist_ok=True)
    size = os.environ.get(MAX_SIZE_ENV, "").strip()
    if size and not (size.isdigit() and int(size) >= 1):
        raise BgFunctionsError(f"{MAX_SIZE_ENV}: expected a size in bytes >= 1; got {size!r}")
    return SQLiteJournal(path, max_size_bytes=int(size) if size else None)


def _ignore_in_git(folder: Path) -> None:
    """Give the server's state folder a ``.gitignore`` that ignores all of it (as
    ``.pytest_cache`` has), so that a journal of request headers is never committed."""
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Created by bgfunctions serve.\n*\n", encoding="utf-8")


class _HostCheckedApp(ASGIApp):
    """The dev server's ASGI app: every request, to a function, a static file or the view,
    must name an allowed ``Host``. A mounted ASGIApp checks the view only: its functions are
    the site's public API, reached under names only its host knows."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"]
            if not self.view_hosts.allows(hosts):
                if scope["type"] == "http":
                    refused = self.view_hosts.refusal(hosts, self.app.clock, hint=_HOSTS_HINT)
                    log.warning(
                        "refused a request for Host %r (request %s): %s",
                        hosts[0][:100] if hosts else "",
                        refused.headers["x-nf-request-id"],
                        _HOSTS_HINT,
                    )
                    await _send_response(send, refused)
                return  # a websocket closes unanswered
        await super().__call__(scope, receive, send)


_HOSTS_HINT = "bgfunctions serve --allowed-hosts NAME,... adds more"


async def _send_response(send: Send, response: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.raw]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


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
        self.hosts = AllowedHosts((*_bound_host(self.options.host), *self.options.allowed_hosts))
        """The ``Host`` names every request must give."""
        journal = None
        if self.options.journal is not None:
            if self.options.journal.parent == self.site_dir / JOURNAL_FILE.parent:
                _ignore_in_git(self.options.journal.parent)
            journal = open_sqlite_journal(self.options.journal)
        # Replays another process added to the journal and this one took up, announced once.
        self._replays: set[str] = set()
        self.app = App(
            self.registry,
            executor=self._executor(journal),
            trust_proxy=self.options.trust_proxy,
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
        self.asgi: ASGIApp = _HostCheckedApp(
            self.app,
            fallback=self.static,
            invocations_view=self.view_enabled,
            allowed_hosts=self.hosts.patterns,
            redaction=self.options.redaction,
        )

    def _executor(self, journal: Journal | None) -> Executor:
        if self.options.executor == "process":
            from bgfunctions.executors.processes import ProcessExecutor

            return ProcessExecutor(
                clock=self.clock, journal=journal, max_pending=self.options.max_pending
            )
        if self.options.executor != "thread":
            raise BgFunctionsError(
                f"--executor: expected 'thread' or 'process'; got {self.options.executor!r}"
            )
        from bgfunctions.executors.threads import ThreadExecutor

        return ThreadExecutor(
            clock=self.clock, journal=journal, max_pending=self.options.max_pending
        )

    def _print_event(self, event: Event) -> None:
        record = event.record
        if record.replay_of:
            self._announce_replay(event)
        line = format_event(event, self.clock)
        if line is not None:
            print(line, file=self.out, flush=True)

    def _announce_replay(self, event: Event) -> None:
        # `bgfunctions replay` adds a row to the journal from another process: this server
        # hears of it first when its attempt starts. Say "queued" then, as for any request;
        # only replays in flight are remembered.
        record = event.record
        if event.kind is EventKind.ACCEPTED:
            self._replays.add(record.request_id)
        elif event.kind is EventKind.ATTEMPT_STARTED and record.request_id not in self._replays:
            self._replays.add(record.request_id)
            self.print(f"[{record.request_id}] {record.function}: {queued(record)}")
        elif record.state.finished:
            self._replays.discard(record.request_id)

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
        unfinished = self.app.invocations.list(state=[s for s in State if not s.finished])
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
        if not _bound_host(self.options.host) and not self.options.allowed_hosts:
            self.print(
                f"note: requests must name one of {', '.join(self.hosts.patterns)} as their "
                "Host; to be reached by this machine's name or address, pass --allowed-hosts"
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
        self.static.starlette_files()  # a missing starlette is one line now, not a 500 later
        sock = self.bind()
        try:
            if table is not None:
                self.print(table(self.registry))
            self.warn_if_public()
            config = uvicorn.Config(
                self.asgi,
                host=self.options.host,
                port=self.options.port,
                log_level="warning",
                lifespan="on",
                # uvicorn believes X-Forwarded-For from loopback clients by default: any local
                # process (or a page through a local proxy) could then name the client.
                proxy_headers=self.options.trust_proxy,
                # At SIGINT/SIGTERM, requests still running after this long are cancelled, so
                # a hung synchronous call does not hold the shutdown for its --sync-timeout.
                timeout_graceful_shutdown=_SHUTDOWN_REQUESTS,
            )
            config.load()  # now, to name the loop and the HTTP parser it picked
            server = uvicorn.Server(config)
            base = self.url(sock)
            loop_factory = config.get_loop_factory()
            self.print(f"uvicorn {uvicorn.__version__}: {_stack(loop_factory, config)}")
            self.print(f"serving {self.site_dir} on {base}")
            if self.view_enabled:
                self.print(f"invocations: {base}{PREFIX}/")
            root = logging.getLogger()
            level = root.level
            handler = self._show_logs()
            try:
                _run(self._serve(server, sock), loop_factory)
            finally:
                root.removeHandler(handler)
                root.setLevel(level)
        finally:
            sock.close()
            self.app.journal.close()

    def bind(self) -> socket.socket:
        """A listening socket on the options' host and port (uvicorn's way of binding), or a
        BgFunctionsError that names the port."""
        host, port = self.options.host, self.options.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise BgFunctionsError(
                    f"port {port} on {host} is in use: stop what listens there, or pass --port"
                ) from None
            raise BgFunctionsError(
                f"cannot listen on {host} port {port}: {exc.strerror or exc}"
            ) from None
        sock.set_inheritable(True)
        return sock

    def url(self, sock: socket.socket) -> str:
        """``http://HOST:PORT`` of a bound socket (its real port when ``port`` was 0)."""
        host = self.options.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{sock.getsockname()[1]}"

    def _show_logs(self) -> logging.Handler:
        """Print log records on the server's output, with the request id of the attempt that
        wrote them: the handlers' own (``context.log``, any logger) and failed attempts'
        tracebacks."""
        handler = logging.StreamHandler(self.out)
        handler.addFilter(InvocationFilter())
        handler.addFilter(ServerLog())
        handler.setFormatter(LineFormatter())
        root = logging.getLogger()
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)  # this process is the dev server: the filter decides
        return handler

    async def _serve(self, server: object, sock: socket.socket) -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop)) if self.options.reload else None
        try:
            await server.serve(sockets=[sock])  # type: ignore[attr-defined]
        finally:
            stop.set()
            if watcher is not None:
                await watcher


def _stack(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, config: object) -> str:
    """``uvloop loop, httptools parser``: what uvicorn's ``auto`` settings picked (uvloop and
    httptools when ``uvicorn[standard]`` is installed, else asyncio and h11)."""
    loop = "asyncio" if loop_factory is None else loop_factory.__module__.split(".")[0]
    protocol = getattr(config, "http_protocol_class", None)
    module = getattr(protocol, "__module__", "")
    http = "httptools" if "httptools" in module else "h11" if "h11" in module else module or "?"
    return f"{loop} loop, {http} parser"


def _run(
    main: Coroutine[Any, Any, None],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> None:
    """``asyncio.run`` on the loop uvicorn picked (uvloop when installed), as
    ``uvicorn.Server.run`` does: ``asyncio.run`` alone would always take the stdlib loop."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main)
    else:
        loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(main)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
