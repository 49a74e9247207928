"""Serve an App over WSGI (gunicorn, waitress), or mount it in Flask or Django.

Flask: mount it beside the Flask app with werkzeug's ``DispatcherMiddleware``::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from bgfunctions import App, Registry
    from bgfunctions.wsgi import WSGIApp

    flask_app.wsgi_app = DispatcherMiddleware(
        flask_app.wsgi_app, {"/fn": WSGIApp(App(Registry.from_site(".")))}
    )

Django: wrap the project's WSGI handler the same way, in the project's ``wsgi.py`` (Django's
URL routing never sees ``/fn/...``; the functions see the path below ``/fn``)::

    from django.core.wsgi import get_wsgi_application
    application = DispatcherMiddleware(
        get_wsgi_application(), {"/fn": WSGIApp(App(Registry.from_site(BASE_DIR)))}
    )

Every response carries ``x-nf-request-id``. Whatever escapes the App (``BaseException``
included) is answered with a generic 500 that names the request id, and logged with its
traceback under that id on the ``bgfunctions.wsgi`` logger; nothing internal reaches the client.

A body over the function's limit is refused with 413 from its ``Content-Length`` before it is
read, or, for a chunked body (``wsgi.input_terminated``), as soon as it passes the limit. The
executor starts lazily on the first request, in the process that serves it (safe with
gunicorn's ``--preload``), and stops at interpreter exit or on :meth:`WSGIApp.close`.
"""

from __future__ import annotations

import atexit
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from bgfunctions.app import App, Resolution
from bgfunctions.errors import RequestError
from bgfunctions.hosts import AllowedHosts
from bgfunctions.ids import new_request_id
from bgfunctions.redaction import Redaction
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.views import InvocationsView

__all__ = ["WSGIApp"]

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
_CHUNK = 64 * 1024
_HOSTS_HINT = "WSGIApp(allowed_hosts=[...]) adds more"

log = logging.getLogger("bgfunctions.wsgi")


class WSGIApp:
    """A WSGI application over an :class:`~bgfunctions.App`."""

    def __init__(
        self,
        app: App,
        *,
        grace: float = 30.0,
        fallback: Callable[[Environ, StartResponse], Iterable[bytes]] | None = None,
        invocations_view: bool = False,
        redaction: Redaction | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        """``grace``: seconds running attempts get at interpreter exit. ``fallback``: a WSGI app
        for requests no function matched, instead of a 404. ``invocations_view``: serve the
        read-only invocation record under ``/.bgfunctions/`` (off by default: records hold
        request URLs and headers). ``redaction``: what the view hides (None: the default
        :class:`~bgfunctions.Redaction`). ``allowed_hosts``: ``Host`` patterns the view answers
        besides loopback names (see :mod:`bgfunctions.hosts`); functions answer any host."""
        self.app = app
        self.view_hosts = AllowedHosts(allowed_hosts)
        self.grace = grace
        self.fallback = fallback
        self.view = InvocationsView(app, redaction=redaction) if invocations_view else None
        self._registered = False
        self._register_lock = threading.Lock()

    def close(self) -> None:
        """Stop the executor (running attempts get ``grace`` seconds)."""
        # Once closed, the exit hook has nothing left to do: drop it (and its reference).
        atexit.unregister(self.close)
        self.app.shutdown(True, grace=self.grace)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._serve(environ, start_response)
        except KeyboardInterrupt:
            if _ctrl_c_reaches_us():
                raise  # most likely the operator's Ctrl-C: the server is meant to stop
            return self._escaped(environ, start_response)
        except BaseException:  # the last line of defence
            return self._escaped(environ, start_response)

    def _escaped(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        """Whatever escaped the App (or the fallback), ``BaseException`` included, becomes our
        own 500 with a request id and a generic body; the traceback goes to the log only."""
        exc_info = sys.exc_info()
        request_id = new_request_id(self.app.clock)
        log.error(
            "%s %s: %s escaped the App; answered 500 (request %s)",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            type(exc_info[1]).__name__,
            request_id,
            exc_info=exc_info,
            extra={"bg_request_id": request_id},
        )
        response = Response.text(
            f"Internal Server Error - Request ID: {request_id}\n",
            status=500,
            headers={"x-nf-request-id": request_id},
        )
        # With exc_info, a start_response already called replaces its headers (PEP 3333); if
        # they were sent, it raises, and the server closes the connection.
        return _respond(start_response, response, exc_info)

    def _serve(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self._registered:
            with self._register_lock:
                if not self._registered:
                    # WSGI has no lifespan: stop with the interpreter of the process that served.
                    self._registered = True
                    atexit.register(self.close)
        method = _text(environ.get("REQUEST_METHOD")) or "GET"
        path = _decode(_text(environ.get("PATH_INFO"))) or "/"
        if self.view is not None and self.view.handles(path):
            hosts = [environ["HTTP_HOST"]] if isinstance(environ.get("HTTP_HOST"), str) else []
            if not self.view_hosts.allows(hosts):
                refused = self.view_hosts.refusal(hosts, self.app.clock, hint=_HOSTS_HINT)
                return _respond(start_response, refused)
            query = _text(environ.get("QUERY_STRING"))
            root = _decode(_text(environ.get("SCRIPT_NAME")))
            response = self.view.respond(method, path, query, root)
            sent = _respond(start_response, response)
            return [] if method == "HEAD" else sent
        resolution = self.app.resolve(method, path)
        if resolution.response is not None:
            # Not a path too long to route (414): the fallback would do the work the bound
            # spares. Under /.netlify/ the functions answer for themselves.
            if (
                self.fallback is not None
                and not path.startswith("/.netlify/")
                and resolution.response.status != 414
            ):
                return self.fallback(environ, start_response)
            return _respond(start_response, resolution.response)
        try:
            body = _read_body(environ, resolution.body_limit)
        except RequestError as exc:
            return _respond(start_response, Response.text(f"Bad Request: {exc}\n", status=400))
        if body is None:
            return _respond(start_response, _too_large(resolution))
        try:
            request = _request(environ, method, path, body)
        except RequestError as exc:
            return _respond(start_response, Response.text(f"Bad Request: {exc}\n", status=400))
        return _respond(start_response, self.app.handle(request, resolution=resolution))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _decode(value: str) -> str:
    """WSGI strings are bytes decoded as Latin-1; paths are UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded the path as text
        return value


def _read_body(environ: Environ, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit``. A declared ``Content-Length`` over the limit
    is refused before anything is read; a body shorter than declared is a RequestError."""
    stream = environ.get("wsgi.input")
    length = _text(environ.get("CONTENT_LENGTH")).strip()
    if length:
        if not _DIGITS.fullmatch(length):
            raise RequestError(f"invalid Content-Length {length!r}: expected a number of bytes")
        size = int(length)
        if size > limit:
            return None
        if size == 0 or stream is None:
            return b""
        data = bytes(stream.read(size))
        if len(data) < size:
            raise RequestError(f"the body has {len(data)} bytes; Content-Length said {size}")
        return data
    if stream is None or not environ.get("wsgi.input_terminated"):
        # PEP 3333: without a length the app must not read; only a server that marks the input
        # as terminated (chunked bodies in gunicorn, werkzeug) lets it read to the end.
        return b""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(bytes(chunk))


_DIGITS = re.compile(r"[0-9]+")
# The same characters the ASGI adapter leaves unescaped in Request.url.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = "/%:@!$&'()*+,;=-._~?"


def _latin1_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _request(environ: Environ, method: str, path: str, body: bytes) -> Request:
    # Header values stay Latin-1 text, as the ASGI adapter (and Starlette) read them.
    headers = [
        (key[5:].replace("_", "-").lower(), value)
        for key, value in environ.items()
        if isinstance(key, str) and key.startswith("HTTP_") and isinstance(value, str)
    ]
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        value = environ.get(key)
        if isinstance(value, str) and value:
            headers.append((name, value))
    raw_path = quote(path, safe=_PATH_SAFE)
    query = quote(_latin1_bytes(_text(environ.get("QUERY_STRING"))), safe=_QUERY_SAFE)
    url = f"{raw_path}?{query}" if query else raw_path
    client = _text(environ.get("REMOTE_ADDR")) or None
    return Request(method, url, headers=headers, body=body, client=client)


def _too_large(resolution: Resolution) -> Response:
    kind = "background" if resolution.background else "synchronous"
    # No "connection: close": PEP 3333 forbids hop-by-hop headers from applications.
    return Response.text(
        f"Payload Too Large: this {kind} function accepts at most {resolution.body_limit} bytes\n",
        status=413,
    )


# PEP 3333: an application must not send hop-by-hop headers (wsgiref refuses them).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def _respond(
    start_response: StartResponse, response: Response, exc_info: Any = None
) -> list[bytes]:
    """Start ``response``; one made before any request id (the adapter's 400 or 413) gets one."""
    status = response.status
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
    if status not in (204, 304) and "content-length" not in response.headers:
        headers.append(("content-length", str(len(response.body))))
    if "x-nf-request-id" not in response.headers:
        headers.append(("x-nf-request-id", new_request_id()))
    if exc_info is None:
        start_response(f"{status} {reason}", headers)
    else:
        start_response(f"{status} {reason}", headers, exc_info)
    return [response.body]


def _ctrl_c_reaches_us() -> bool:
    """Whether a KeyboardInterrupt here may be SIGINT's: Python raises it in the main thread,
    when nobody installed a handler of their own. In any other thread it is a handler's."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
