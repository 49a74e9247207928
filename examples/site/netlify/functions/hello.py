"""A synchronous function at the default URL: ``GET /.netlify/functions/hello?name=Ada``."""

from __future__ import annotations

from bgfunctions import Context, Request, Response

from ._shared import greeting


def handler(request: Request, context: Context) -> Response:
    name = request.query.get("name") or "world"
    return Response.text(greeting(name))
