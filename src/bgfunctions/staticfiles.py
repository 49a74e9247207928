"""The files of a site's publish directory, as the dev server serves them.

Never a path outside the publish directory (``..``, a symlink out), never a hidden file or
directory except a top-level ``.well-known/``. What is found is sent by Starlette's
``FileResponse`` (the ``[serve]`` extra): streamed in 64 KiB chunks, with ``Range`` (206/416)
and conditional requests (``ETag``/``If-None-Match``, ``Last-Modified``/``If-Modified-Since``:
304). Anything else is Netlify's plain 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgfunctions.asgi import Receive, Scope, Send
from bgfunctions.errors import BgFunctionsError
from bgfunctions.ids import new_request_id
from bgfunctions.routing import MAX_PATH_LENGTH

if TYPE_CHECKING:
    from starlette.staticfiles import StaticFiles as StarletteStaticFiles

__all__ = ["WELL_KNOWN", "StaticFiles"]


class StaticFiles:
    """Files of a publish directory; never serves anything outside it."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None and root.is_dir() else None
        self._files: StarletteStaticFiles | None = None

    def find(self, path: str) -> Path | None:
        """The file a URL path names (``/a/`` → ``a/index.html``, ``/a`` → ``a.html``), or None."""
        if self.root is None or "\x00" in path or len(path) > MAX_PATH_LENGTH:
            # Resolving a path walks it segment by segment, in time quadratic in its length:
            # a path longer than routing considers names no file worth that work.
            return None
        try:
            candidate = (self.root / path.lstrip("/")).resolve()
            if not self._inside(candidate):
                return None  # .. or a symlink out of the publish directory
            if _hidden(candidate.relative_to(self.root).parts):
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
        stat = None
        if found is not None:
            with contextlib.suppress(OSError):  # removed since find(): as if never there
                stat = await asyncio.to_thread(os.stat, found)
        if found is None or stat is None:
            request_id = new_request_id()  # every answer carries a real one (issue 11, 14)
            body = f"Not Found - Request ID: {request_id}\n".encode()
            await _plain(send, 404, body, b"text/plain; charset=utf-8", request_id=request_id)
            return
        # Starlette's: streamed in 64 KiB chunks, Range (206/416), ETag and Last-Modified with
        # If-None-Match / If-Modified-Since (304). Our find() has already refused what the
        # publish directory must not show.
        response = self.starlette_files().file_response(found, stat, scope)
        await response(scope, receive, _with_request_id(send, new_request_id()))

    def starlette_files(self) -> StarletteStaticFiles:
        """Starlette's StaticFiles, for its file responses; a one-line error without it."""
        if self._files is None:
            try:
                from starlette.staticfiles import StaticFiles as StarletteStaticFiles
            except ImportError:  # pragma: no cover - the [serve] extra brings it
                raise BgFunctionsError(
                    "static files need starlette: pip install 'bgfunctions[serve]'"
                ) from None
            self._files = StarletteStaticFiles(directory=self.root, check_dir=False)
        return self._files


WELL_KNOWN = ".well-known"
"""The one hidden directory a publish directory publishes, at its top (as Netlify does)."""


def _hidden(parts: tuple[str, ...]) -> bool:
    """Hidden files are never published: the journal lives in .bgfunctions/ (with request
    headers and bodies), and .git or .env may sit in a publish dir of ".". Only a top-level
    ``.well-known/`` is (ACME challenges, security.txt), and no dotfile inside it."""
    start = 1 if parts and parts[0] == WELL_KNOWN else 0
    return any(part.startswith(".") for part in parts[start:])


def _with_request_id(send: Send, request_id: str) -> Send:
    """``send`` adding ``x-nf-request-id`` to the response's headers: Starlette's answers
    (200, 206, 304, 416, its 400 for a malformed ``Range``) carry one, as every answer does."""
    header = (b"x-nf-request-id", request_id.encode())

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return sending


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
