"""A background function by its config, served at the custom path ``/process``.

``path`` replaces the default URL, so ``/.netlify/functions/process`` is not served.
"""

from __future__ import annotations

from bgfunctions import Config, Context, Request


def handler(request: Request, context: Context) -> None:
    items = request.json()
    for item in items:
        context.log.info("processing %r", item)


config = Config(background=True, path="/process")
