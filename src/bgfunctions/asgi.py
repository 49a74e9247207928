"""Serve an App over ASGI 3 (uvicorn, hypercorn), or mount it in Starlette or FastAPI.

::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from bgfunctions import App, Registry
    from bgfunctions.asgi import ASGIApp

    functions = ASGIApp(App(Registry.from_site(".")))
    app = Starlette(routes=[Mount("/fn", app=functions)], lifespan=functions.lifespan)

FastAPI: ``api = FastAPI(lifespan=functions.lifespan)`` then ``api.mount("/fn", functions)``.
Functions see the path below the mount. Served directly (``uvicorn module:functions``), the
ASGI lifespan protocol does the same.

A declared ``content-length`` over the function's limit is refused with 413 before any of the
body is read; otherwise the body is read as it streams and refused as soon as it passes the
limit, without buffering the rest. A client that disconnects mid-body gets nothing queued.
The executor starts lazily in the process that serves (safe with forking servers), and stops
with the lifespan: running attempts get ``grace`` seconds, and attempts not yet due stay
scheduled in the journal, their attempt count unchanged.

Every response carries ``x-nf-request-id``. Whatever escapes the App (``BaseException``
included) is answered with a generic 500 that names the request id, and logged with its
traceback under that id on the ``bgfunctions.asgi`` logger; nothing internal reaches the client.

``ASGIApp(app, invocations_view=True)`` also answers ``GET /.bgfunctions/`` (a live page of
recent invocations) and ``/.bgfunctions/invocations[/REQUEST_ID]`` (JSON), read-only; see
:mod:`bgfunctions.views`. It is off by default: the records hold request URLs and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

from bgfunctions.app import App, Resolution
from bgfunctions.errors import RequestError
from bgfunctions.hosts import AllowedHosts
from bgfunctions.ids import new_request_id
from bgfunctions.redaction import Redaction
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.views import InvocationsView

__all__ = ["ASGIApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("bgfunctions.asgi")
_HOSTS_HINT = "ASGIApp(allowed_hosts=[...]) adds more"


class ASGIApp:
    """An ASGI application over an :class:`~bgfunctions.App`."""

    def __init__(
        self,
        app: App,
        *,
        grace: float = 30.0,
        fallback: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
        invocations_view: bool = False,
        redaction: Redaction | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        """``grace``: seconds running attempts get to finish at shutdown. ``fallback``: an ASGI
        app that gets the requests no function matched (static files, say) instead of a 404.
        ``invocations_view``: serve the read-only invocation record under ``/.bgfunctions/``
        (off by default; it shows request URLs and headers, credentials redacted).
        ``redaction``: what the view hides (None: the default :class:`~bgfunctions.Redaction`).
        ``allowed_hosts``: ``Host`` patterns the view answers besides loopback names (see
        :mod:`bgfunctions.hosts`); functions answer any host, as the site's public API."""
        self.app = app
        self.view_hosts = AllowedHosts(allowed_hosts)
        self.grace = grace
        self.fallback = fallback
        self.view = InvocationsView(app, redaction=redaction) if invocations_view else None
        """The invocations view, or None when it is off."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except BaseException as exc:  # the last line of defence
                await self._escaped(exc, scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        # websocket without a fallback: not ours; returning closes it

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """A lifespan context for Starlette/FastAPI when this app is mounted inside one."""
        self.app.executor.serve_on(asyncio.get_running_loop())
        await asyncio.to_thread(self.app.start)
        try:
            yield
        finally:
            await asyncio.to_thread(self.app.shutdown, True, grace=self.grace)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.app.executor.serve_on(asyncio.get_running_loop())
                    await asyncio.to_thread(self.app.start)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await asyncio.to_thread(self.app.shutdown, True, grace=self.grace)
                except Exception as exc:
                    log.exception("stopping the executor failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _escaped(self, exc: BaseException, scope: Scope, send: Send) -> None:
        """Whatever escaped the App (or the fallback), ``BaseException`` included, becomes our
        own 500 with a request id and a generic body; the traceback goes to the log only.

        Only a cancellation of this request's task from outside (the server stopping it) goes
        on: there is nobody left to answer. Python 3.10 cannot tell it from a handler that
        raised ``CancelledError`` itself, so there both go on."""
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if sys.version_info < (3, 11) or task is None or task.cancelling():
                raise exc
        request_id = new_request_id(self.app.clock)
        log.error(
            "%s %s: %s escaped the App; answered 500 (request %s)",
            scope.get("method"),
            scope.get("path"),
            type(exc).__name__,
            request_id,
            exc_info=exc,
            extra={"bg_request_id": request_id},
        )
        try:
            await _send(send, _internal_error(request_id))
        except Exception:  # the response had started: the server closes it
            log.warning("request %s: the response had started; it ends unfinished", request_id)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        method = scope["method"]
        if self.view is not None and self.view.handles(path):
            hosts = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"]
            if not self.view_hosts.allows(hosts):
                refused = self.view_hosts.refusal(hosts, self.app.clock, hint=_HOSTS_HINT)
                await _send(send, refused)
                return
            await _view_http(self.view, scope, send, path, method)
            return
        resolution = self.app.resolve(method, path)
        if (
            resolution.response is not None
            and self.fallback is not None
            and _falls_back(path, resolution)
        ):
            await self.fallback(scope, receive, send)
            return
        if resolution.response is not None:
            await _send(send, resolution.response)
            return
        declared = _content_length(scope)
        if declared is not None and declared > resolution.body_limit:
            # Refuse from the header alone: nothing of the body is read.
            await _send(send, _too_large(resolution))
            return
        try:
            body = await _read_body(receive, resolution.body_limit)
        except _Disconnected:
            # The client left before its body was complete: a truncated body must never be
            # accepted as background work, and there is nobody to answer.
            return
        if body is None:
            await _send(send, _too_large(resolution))
            return
        try:
            request = _request(scope, path, method, body)
        except RequestError as exc:
            await _send(send, Response.text(f"Bad Request: {exc}\n", status=400))
            return
        response = await self.app.handle_async(request, resolution=resolution)
        await _send(send, response)


async def _view_http(
    view: InvocationsView, scope: Scope, send: Send, path: str, method: str
) -> None:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    # A journal may read a file: keep the event loop free.
    response = await asyncio.to_thread(view.respond, method, path, query, _mount_root(scope))
    await _send(send, response, head=method == "HEAD")


def _mount_root(scope: Scope) -> str:
    """The mount prefix (``root_path``) when ``path`` is below it, else ``""``.

    Starlette keeps the full path in ``path`` and adds the mount to ``root_path``. Only a
    whole-segment prefix counts: "/fnord" is not below "/fn"."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return root
    return ""


def _falls_back(path: str, resolution: Resolution) -> bool:
    """Whether a request no function takes goes to the fallback. Not under ``/.netlify/``,
    where the functions answer for themselves (``Function not found...``, the invalid-name
    400), nor a path too long to route (414): the fallback would then do the work that the
    bound spares, such as resolving thousands of segments on the file system."""
    assert resolution.response is not None
    return not path.startswith("/.netlify/") and resolution.response.status != 414


def _route_path(scope: Scope) -> str:
    """The path below the mount point."""
    path: str = scope["path"]
    return path[len(_mount_root(scope)) :] or "/"


class _Disconnected(Exception):
    """The client disconnected before the whole body arrived."""


def _content_length(scope: Scope) -> int | None:
    """The declared ``content-length``, or None when absent or not a plain number."""
    for key, value in scope.get("headers", ()):
        if len(key) == 14 and key.lower() == b"content-length":  # no lower() of the others
            text = value.strip()
            return int(text) if text and _DIGITS.fullmatch(text) else None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes.

    Raises ``_Disconnected`` when the client goes away before the last chunk."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


# Characters left as they are when a raw path or query is turned into Request.url; everything
# else (spaces, controls, "#", non-ASCII bytes, and "?" inside a path) is percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_DIGITS = re.compile(rb"[0-9]+")
# A raw path that quote() leaves as it is, and that has no escapes to keep.
_PLAIN_PATH = re.compile(rb"/[A-Za-z0-9/:@!$&'()*+,;=\-._~]*")


def _raw_route_path(scope: Scope, path: str) -> str:
    """The still-encoded path below the mount point, for ``Request.url``.

    The raw path keeps escapes such as ``%2F`` that the decoded ``path`` loses. The mount prefix
    (given decoded, in ``root_path``) is cut at the first ``/`` where the raw text decodes to
    it. When the raw path does not fit the decoded one, the decoded path is encoded again.
    """
    raw = scope.get("raw_path")
    if (
        isinstance(raw, bytes)
        and _PLAIN_PATH.fullmatch(raw)
        and raw.decode("ascii") == scope["path"]
    ):
        # Nothing to encode and nothing encoded: every part of the raw path reads as decoded,
        # and ``path`` is such a part (below the mount, if any). The common case.
        return path
    fallback = quote(path, safe=_PATH_SAFE.replace("%", ""))
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return fallback
    # Quote the bytes themselves: decoding them as Latin-1 first would encode "é" twice.
    text = quote(bytes(raw).partition(b"?")[0], safe=_PATH_SAFE)
    root = _mount_root(scope)
    rest: str | None = text if not root else None
    if root:
        if unquote(text).rstrip("/") == root:
            rest = text[len(text.rstrip("/")) :] or "/"
        else:
            for index, char in enumerate(text):
                if char == "/" and index and unquote(text[:index]) == root:
                    rest = text[index:]
                    break
    if rest is None or unquote(rest) != path:
        return fallback
    return rest


def _request(scope: Scope, path: str, method: str, body: bytes) -> Request:
    raw_headers = scope.get("headers", ())
    # Header bytes are Latin-1 (as in Starlette and the Fetch API's ByteString).
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
    query_string = scope.get("query_string", b"")
    query = quote(bytes(query_string), safe=_QUERY_SAFE) if query_string else ""
    raw_path = _raw_route_path(scope, path)
    url = f"{raw_path}?{query}" if query else raw_path
    client = scope.get("client")
    peer = client[0] if client and isinstance(client[0], str) and client[0] else None
    return Request(method, url, headers=headers, body=body, client=peer)


def _too_large(resolution: Resolution) -> Response:
    kind = "background" if resolution.background else "synchronous"
    return Response.text(
        f"Payload Too Large: this {kind} function accepts at most {resolution.body_limit} bytes\n",
        status=413,
        headers={"connection": "close"},
    )


def _internal_error(request_id: str) -> Response:
    return Response.text(
        f"Internal Server Error - Request ID: {request_id}\n",
        status=500,
        headers={"x-nf-request-id": request_id},
    )


async def _send(send: Send, response: Response, *, head: bool = False) -> None:
    """Send ``response``; for ``head``, its headers (content-length included) and no body.

    A response made before any request id (a 400 or 413 of the adapter's) gets one."""
    headers = []
    has_id = has_length = False
    for k, v in response.headers.raw:  # one pass: most responses have one or two headers
        headers.append((k.encode("latin-1"), v.encode("latin-1")))
        if k == "x-nf-request-id":
            has_id = True
        elif k == "content-length":
            has_length = True
    if not has_id:
        headers.append((b"x-nf-request-id", new_request_id().encode("ascii")))
    body = response.body
    if not has_length and response.status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
