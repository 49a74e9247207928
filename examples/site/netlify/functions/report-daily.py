"""A background function by netlify.toml: ``[functions."report-*"] background = true``.

Its own config (a plain dict with Netlify's camelCase keys) only gives it a display name.
"""

from __future__ import annotations

from bgfunctions import Context, Request


async def handler(request: Request, context: Context) -> None:
    context.log.info("building the daily report (request %s)", context.request_id)


config = {"name": "Daily report"}
