"""A background function by its name: the ``-background`` suffix.

The caller gets an empty ``202`` at once; the handler runs afterwards. Send
``{"to": "ada@example.com", "fail_attempts": 2}`` to watch it fail twice and succeed on the
third attempt (attempt 2 starts 60 s after attempt 1 ended, attempt 3 120 s after attempt 2).
"""

from __future__ import annotations

from bgfunctions import Context, Request


async def handler(request: Request, context: Context) -> None:
    message = request.json()
    fail_attempts = int(message.get("fail_attempts", 0))
    if context.attempt <= fail_attempts:
        # An unhandled exception is what makes a background function retry.
        raise RuntimeError(f"mail server unavailable (attempt {context.attempt})")
    context.log.info("sent email to %s on attempt %d", message.get("to"), context.attempt)
