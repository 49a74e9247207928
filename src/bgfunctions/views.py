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

import base64
import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote

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
                "ended_at": step.ended_at,
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
        _PAGE.encode("utf-8"),
        headers={
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": _CSP,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
        },
    )


# -- the page --------------------------------------------------------------------------------------
# Everything the data fills in goes through textContent or setAttribute, never innerHTML.

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}
#status{color:#666;margin:0 0 1em}
form{margin:0 0 1em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#eee}
.nowrap{white-space:nowrap}
code{font:12px ui-monospace,monospace}
.state{font-weight:600}
.state-succeeded{color:#17702b}.state-failed,.state-rejected{color:#b00020}
.state-running{color:#0b57d0}.state-retry_scheduled,.state-accepted,.state-sleeping{color:#a15c00}
.state-cancelled{color:#666}
tr.attempts td{border-bottom:2px solid #ccc;background:#fcfcfc}
.timeline{position:relative;height:14px;background:#eef;margin:.2em 0 .4em;border-radius:3px}
.bar{position:absolute;top:0;height:14px;min-width:3px;border-radius:3px;background:#0b57d0}
.bar.outcome-succeeded{background:#2e9d4a}
.bar.outcome-error,.bar.outcome-timed_out,.bar.outcome-crashed,.bar.outcome-interrupted{
background:#d93025}
.bar.outcome-cancelled{background:#999}
.next{position:absolute;top:-2px;height:18px;width:2px;background:#a15c00}
ol.attempt-list{margin:0;padding-left:1.5em}
.error{color:#b00020;white-space:pre-wrap;word-break:break-word}
"""

_SCRIPT = """
"use strict";
const SAFE = /^[a-z_]+$/;
function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children || []) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}
function iso(t) {
  return t === null || t === undefined ? "" : new Date(t * 1000).toISOString();
}
function secs(d) {
  return d === null || d === undefined ? "running" : d.toFixed(3) + " s";
}
function cls(prefix, value) {
  return SAFE.test(String(value)) ? prefix + value : prefix + "unknown";
}
function lastError(inv) {
  for (let i = inv.attempts.length - 1; i >= 0; i--) {
    const a = inv.attempts[i];
    if (a.error_type) return a.error_type + ": " + (a.error_message || "");
  }
  return "";
}
function timeline(inv, now) {
  const start = inv.accepted_at;
  let end = inv.finished_at !== null ? inv.finished_at : Math.max(now, inv.next_run_at || now);
  for (const a of inv.attempts) end = Math.max(end, a.ended_at || now);
  const span = Math.max(end - start, 0.001);
  const frac = (t) => Math.min(1, Math.max(0, (t - start) / span));
  const line = el("div", {class: "timeline"}, []);
  for (const a of inv.attempts) {
    const bar = el("div", {
      class: "bar " + cls("outcome-", a.outcome || "running"),
      title: "attempt " + a.number + ": " + (a.outcome || "running") + ", " + secs(a.duration),
    }, []);
    bar.style.left = frac(a.started_at) * 100 + "%";
    bar.style.width = (frac(a.ended_at || now) - frac(a.started_at)) * 100 + "%";
    line.append(bar);
  }
  if (inv.next_run_at !== null) {
    const next = el("div", {class: "next", title: "next attempt at " + iso(inv.next_run_at)}, []);
    next.style.left = frac(inv.next_run_at) * 100 + "%";
    line.append(next);
  }
  return line;
}
function attemptItem(a, inv) {
  const parts = [
    "attempt " + a.number + " \\u00b7 " + (a.outcome || "running") + " \\u00b7 " +
      secs(a.duration) + " \\u00b7 started +" + (a.started_at - inv.accepted_at).toFixed(3) +
      " s (" + iso(a.started_at) + ")",
  ];
  if (a.error_type) {
    parts.push(" ");
    parts.push(el("span", {class: "error"}, [a.error_type + ": " + (a.error_message || "")]));
  }
  return el("li", {class: "attempt", "data-outcome": a.outcome || "running"}, parts);
}
function render(data) {
  const body = el("tbody", {id: "rows"}, []);
  for (const inv of data.invocations) {
    const replay = inv.replay_of ? " (replay of " + inv.replay_of + ")" : "";
    body.append(el("tr", {class: "invocation", "data-request-id": inv.request_id}, [
      el("td", {class: "nowrap"}, [el("code", {}, [inv.request_id]), replay]),
      el("td", {}, [inv.function]),
      el("td", {}, [el("span", {class: "state " + cls("state-", inv.state)}, [inv.state])]),
      el("td", {class: "count"}, [String(inv.attempts.length)]),
      el("td", {class: "nowrap"}, [iso(inv.accepted_at)]),
      el("td", {class: "error"}, [lastError(inv)]),
    ]));
    const list = el("ol", {class: "attempt-list"}, inv.attempts.map((a) => attemptItem(a, inv)));
    const detail = inv.method + " " + inv.url + " \\u00b7 " + inv.body_size + " byte body" +
      (inv.next_run_at !== null ? " \\u00b7 next attempt " + iso(inv.next_run_at) : "");
    body.append(el("tr", {class: "attempts", "data-request-id": inv.request_id}, [
      el("td", {colspan: "6"}, [detail, timeline(inv, data.now), list]),
    ]));
  }
  document.getElementById("rows").replaceWith(body);
  document.getElementById("empty").hidden = data.invocations.length > 0;
}
function query() {
  const params = new URLSearchParams({limit: "50"});
  const fn = document.getElementById("function").value.trim();
  const state = document.getElementById("state").value;
  if (fn) params.set("function", fn);
  if (state) params.set("state", state);
  return params.toString();
}
async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("invocations?" + query(), {
      cache: "no-store", headers: {accept: "application/json"},
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
    render(data);
    status.textContent = data.invocations.length + " invocation(s), updated " + iso(data.now);
    document.body.setAttribute("data-loaded", "true");
  } catch (error) {
    status.textContent = "could not load the invocations: " + error.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}
document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
refresh();
"""

_STATE_OPTIONS = "".join(f'<option value="{s.value}">{s.value}</option>' for s in State)

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bgfunctions: invocations</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Invocations</h1>
<p id="status">loading&hellip;</p>
<form id="filters">
<label>function <input id="function" name="function" autocomplete="off"></label>
<label>state <select id="state" name="state"><option value="">any</option>{_STATE_OPTIONS}</select>
</label>
</form>
<table>
<thead><tr><th>request id</th><th>function</th><th>state</th><th>attempts</th>
<th>accepted at (UTC)</th><th>last error</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<p id="empty" hidden>No invocations yet.</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it may fetch only from where it came from.
_CSP = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
