"""The invocation record over HTTP: read-only JSON and a live HTML page under ``/.bgfunctions/``.

::

    GET /.bgfunctions/                          an HTML page that polls the JSON every second
    GET /.bgfunctions/invocations               newest first; ?function=NAME&state=S&limit=N
    GET /.bgfunctions/invocations/REQUEST_ID    one invocation, or 404 JSON

It is off unless a host turns it on (``ASGIApp(app, invocations_view=True)``; the dev server does
on a loopback address): records hold request headers and URLs. Even then it shows them through a
:class:`~bgfunctions.redaction.Redaction` rule (by default: credential headers, cookies and every
query value are replaced by ``[redacted]``), and bodies by size only. Every time is given twice:
as epoch seconds (``accepted_at``) and as UTC ISO 8601 (``accepted_at_iso``). Only GET and
HEAD are answered; anything else is 405. The page loads nothing from elsewhere: its CSS and
JavaScript are inline, pinned by hash in its Content-Security-Policy, and it writes every value
as text (never as HTML), so an error message holding ``<script>`` shows as those characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote

from bgfunctions._viewpage import CSP, PAGE
from bgfunctions.app import App
from bgfunctions.invocation import Attempt, InvocationRecord, State
from bgfunctions.redaction import REDACTED, Redaction
from bgfunctions.responses import Response

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PREFIX",
    "REDACTED",
    "InvocationsView",
    "iso_utc",
    "record_to_view",
    "redact_headers",
]

PREFIX = "/.bgfunctions"
"""Where the view lives, below the adapter's mount point."""
_DEFAULT_REDACTION = Redaction()
DEFAULT_LIMIT = 50
"""Invocations listed when ``limit`` is not given."""
MAX_LIMIT = 1000
"""The most invocations one list answers with."""

_ALLOW = "GET, HEAD"
_QUERY_KEYS = ("function", "state", "limit")


def iso_utc(seconds: float | None) -> str | None:
    """Epoch seconds as UTC ISO 8601 with milliseconds (``2024-05-01T12:00:00.000Z``)."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def redact_headers(
    headers: Iterable[tuple[str, str]], redaction: Redaction = _DEFAULT_REDACTION
) -> list[list[str]]:
    """``[[name, value], ...]`` with the values ``redaction`` hides replaced by ``[redacted]``."""
    return [[name, value] for name, value in redaction.headers(headers)]


def _attempt_to_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "started_at_iso": iso_utc(attempt.started_at),
        "ended_at": attempt.ended_at,
        "ended_at_iso": iso_utc(attempt.ended_at),
        "duration": attempt.duration,
        "outcome": None if attempt.outcome is None else attempt.outcome.value,
        "error_type": attempt.error_type,
        "error_message": attempt.error_message,
    }


def record_to_view(
    record: InvocationRecord, redaction: Redaction = _DEFAULT_REDACTION
) -> dict[str, Any]:
    """What the view shows of ``record``: JSON-able, the URL and headers through ``redaction``,
    no body.

    Times are epoch seconds (as in the record, which the page computes with); each ``X_at`` has
    an ``X_at_iso`` beside it, the same moment in UTC ISO 8601 (None when ``X_at`` is).
    """
    return {
        "request_id": record.request_id,
        "function": record.function,
        "state": record.state.value,
        "method": record.method,
        "url": redaction.url(record.url),
        "headers": redact_headers(record.headers, redaction),
        "body_size": record.body_size,
        "accepted_at": record.accepted_at,
        "accepted_at_iso": iso_utc(record.accepted_at),
        "next_run_at": record.next_run_at,
        "next_run_at_iso": iso_utc(record.next_run_at),
        "finished_at": record.finished_at,
        "finished_at_iso": iso_utc(record.finished_at),
        "replay_of": record.replay_of,
        "priority": record.priority,
        "not_before": record.not_before,
        "not_before_iso": iso_utc(record.not_before),
        "attempts": [_attempt_to_view(a) for a in record.attempts],
        # The durable steps, without their results: like the body, they may hold user data.
        "steps": [
            {
                "id": step.id,
                "kind": step.kind,
                "status": step.status,
                "attempt": step.attempt,
                "started_at": step.started_at,
                "started_at_iso": iso_utc(step.started_at),
                "ended_at": step.ended_at,
                "ended_at_iso": iso_utc(step.ended_at),
                "duration": step.duration,
                "result_size": len(step.result),
            }
            for step in record.steps
        ],
    }


class _BadQuery(ValueError):
    """A query parameter the list endpoint cannot take."""


def _parse_query(query: str) -> tuple[str | None, list[State] | None, int]:
    """``(function, states, limit)`` from ``function=&state=&limit=``; ``state`` may repeat or
    hold a comma-separated list."""
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # too many fields
        raise _BadQuery(f"invalid query string: {exc}") from None
    unknown = sorted(set(fields) - set(_QUERY_KEYS))
    if unknown:
        raise _BadQuery(
            f"unknown query parameter(s) {', '.join(unknown)}; expected {', '.join(_QUERY_KEYS)}"
        )
    function = fields["function"][-1] if fields.get("function") else None
    states: list[State] | None = None
    names = [n.strip() for v in fields.get("state", ()) for n in v.split(",") if n.strip()]
    if names:
        valid = {s.value: s for s in State}
        wrong = [n for n in names if n not in valid]
        if wrong:
            raise _BadQuery(
                f"state: expected one of {', '.join(valid)}; got {', '.join(map(repr, wrong))}"
            )
        states = [valid[n] for n in names]
    limit = DEFAULT_LIMIT
    if fields.get("limit"):
        text = fields["limit"][-1]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise _BadQuery(f"limit: expected an integer from 1 to {MAX_LIMIT}; got {text!r}")
        limit = int(text)
    return function or None, states, limit


def _json(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response.json(data, status=status, headers=dict(headers or {}))
    response.headers["cache-control"] = "no-store"
    response.headers["x-content-type-options"] = "nosniff"
    return response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": message, "status": status}, status, headers)


class InvocationsView:
    """Answers the requests under :data:`PREFIX` from ``app.invocations`` (see the module doc).

    :meth:`respond` is plain and synchronous (a journal may read a file): async hosts call it in
    a worker thread.
    """

    def __init__(self, app: App, *, redaction: Redaction | None = None) -> None:
        """``redaction``: what the view hides (None: the default :class:`Redaction`)."""
        self.app = app
        self.redaction = _DEFAULT_REDACTION if redaction is None else redaction

    @staticmethod
    def handles(path: str) -> bool:
        """True when ``path`` (below the mount point) belongs to the view."""
        return path == PREFIX or path.startswith(PREFIX + "/")

    def respond(self, method: str, path: str, query: str = "", root_path: str = "") -> Response:
        """The answer to ``method path?query``; ``root_path`` is the mount point, for redirects.

        A HEAD answer carries the GET body: the adapter sends its headers only.
        """
        if method not in ("GET", "HEAD"):
            return _error(
                405,
                f"the invocations view is read-only: expected GET or HEAD; got {method}",
                {"allow": _ALLOW},
            )
        rest = path[len(PREFIX) :]
        if rest == "":
            # The page fetches "invocations" relative to itself: it must end with a slash.
            location = quote(root_path.rstrip("/") + PREFIX + "/", safe="/%:@!$&'()*+,;=-._~")
            return Response(status=308, headers={"location": location})
        if rest == "/":
            return _page()
        if rest in ("/invocations", "/invocations/"):
            try:
                function, states, limit = _parse_query(query)
            except _BadQuery as exc:
                return _error(400, str(exc))
            records = self.app.invocations.list(function=function, state=states, limit=limit)
            return _json(
                {
                    **self._now(),
                    "invocations": [record_to_view(r, self.redaction) for r in records],
                }
            )
        if rest.startswith("/invocations/") and "/" not in rest[len("/invocations/") :]:
            request_id = rest[len("/invocations/") :]
            record = self.app.invocations.get(request_id)
            if record is None:
                return _error(404, f"no invocation with request id {request_id!r}")
            return _json({**self._now(), "invocation": record_to_view(record, self.redaction)})
        return _error(
            404,
            f"nothing at {PREFIX}{rest}; expected {PREFIX}/, {PREFIX}/invocations or "
            f"{PREFIX}/invocations/REQUEST_ID",
        )

    def _now(self) -> dict[str, Any]:
        now = self.app.clock.now()
        return {"now": now, "now_iso": iso_utc(now)}


def _page() -> Response:
    return Response(
        PAGE,
        headers={
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": CSP,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
        },
    )
