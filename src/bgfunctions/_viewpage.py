"""The HTML page of the invocations view (``GET /.bgfunctions/``): one document, its CSS and
JavaScript inline and pinned by hash in its Content-Security-Policy.

The script polls ``invocations`` every second and draws each invocation: a row, then a timeline
(each attempt a bar; each durable step a tick under the attempt that ran it; a durable sleep a
hatched gap up to its wake time) and the list of attempts, each with the steps it ran and those
it took back from the journal. Everything the data fills in goes through ``textContent`` or
``setAttribute``, never ``innerHTML``.
"""

from __future__ import annotations

import base64
import hashlib

from bgfunctions.invocation import State

__all__ = ["CSP", "PAGE"]

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
.timeline{position:relative;height:20px;background:#eef;margin:.2em 0 .4em;border-radius:3px}
.bar{position:absolute;top:0;height:14px;min-width:3px;border-radius:3px;background:#0b57d0}
.bar.outcome-succeeded{background:#2e9d4a}
.bar.outcome-error,.bar.outcome-timed_out,.bar.outcome-crashed,.bar.outcome-interrupted{
background:#d93025}
.bar.outcome-cancelled{background:#999}
.next{position:absolute;top:-2px;height:24px;width:2px;background:#a15c00}
.tick{position:absolute;top:15px;height:5px;min-width:2px;background:#7a4fb5}
.sleep{position:absolute;top:0;height:20px;background:repeating-linear-gradient(
45deg,#ddd 0 4px,#f6f6f6 4px 8px);border:1px dashed #999;box-sizing:border-box}
ol.attempt-list{margin:0;padding-left:1.5em}
ul.step-list{margin:0;padding-left:1.2em;color:#444}
li.step[data-status=replayed]{color:#777}
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
  for (const s of inv.steps) {
    const sleeping = s.kind === "sleep";
    const mark = el("div", {
      class: sleeping ? "sleep" : "tick",
      title: s.kind + " " + s.id + (sleeping ? " until " + iso(s.ended_at) :
        ": attempt " + s.attempt + ", " + secs(s.duration)),
    }, []);
    mark.style.left = frac(s.started_at) * 100 + "%";
    mark.style.width = (frac(s.ended_at) - frac(s.started_at)) * 100 + "%";
    line.append(mark);
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
  const steps = [];
  for (const s of inv.steps) {
    if (s.kind === "run" && s.attempt < a.number) {
      steps.push(el("li", {class: "step", "data-status": "replayed"}, [
        "step " + s.id + " \u00b7 replayed: stored by attempt " + s.attempt + ", not run again",
      ]));
    } else if (s.attempt === a.number) {
      const what = s.kind === "sleep" ? "sleep " + s.id + " \u00b7 until " + iso(s.ended_at) :
        "step " + s.id + " \u00b7 ran " + secs(s.duration);
      steps.push(el("li", {class: "step", "data-status": "ran"}, [
        what + " \u00b7 started +" + (s.started_at - inv.accepted_at).toFixed(3) + " s",
      ]));
    }
  }
  if (steps.length) parts.push(el("ul", {class: "step-list"}, steps));
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

PAGE = _PAGE.encode("utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it may fetch only from where it came from.
CSP = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
