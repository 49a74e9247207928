"""A background function by its config, served at the custom path ``/process``.

``path`` replaces the default URL, so ``/.netlify/functions/process`` is not served.
``curl -X POST localhost:8888/process -d '{"order": 42}'`` logs ``processing order 42``.
"""

from __future__ import annotations

from bgfunctions import Config, Context, Request


async def handler(request: Request, context: Context) -> None:
    order = request.json()["order"]
    context.log.info("processing order %s", order)
    # long-running work here; an exception means "retry me"


config = Config(background=True, path="/process")
