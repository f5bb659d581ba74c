"""The admin page (``/admin/``): the cluster at a glance, kept live.

One read-only HTML page, rendered on the server from the same operations
as the API: the branches (online or not), the apps with their brokers and
queues, every instance of the cluster with its state (a colour and its
word) and its drift, and the latest events.  A small inline script keeps
it current without reloading: it follows C{GET /events/} with an
C{EventSource} (the login cookie goes with it) and, for each event, shows
the state it implies at once, then reads what changed from the API
(C{/instances/<name>/}, C{/<app>/}, C{/branches/<id>/}).  Every value is
escaped on the server and set as text by the script (never as HTML); the
page's C{Content-Security-Policy} allows its own script and style (by
their hashes) and connections to this branch, nothing else: no external
asset, no inline handler.  Changes go through the API.
"""

import base64
import hashlib
from html import escape
from urllib.parse import urljoin, urlsplit

from cyme import __version__

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) { background: #f4f4f4; }
.state { font-weight: 600; white-space: nowrap; } .state::before { content: "\\25CF  "; }
.running, .online { color: #070; }
.offline, .quarantined, .unresponsive, .failed, .reset { color: #b00; }
.starting, .stopping { color: #a60; } .stopped, .unknown { color: #666; }
.drift { color: #b00; } small, .time { color: #666; }
#events { list-style: none; padding: 0; } #events li { padding: 1px 0; }
"""

#: The page's script: the event stream, applied to the tables.  A constant
#: (its hash is in the policy); what it needs of the page is in data-*.
_SCRIPT = """
"use strict";
(function () {
  var body = document.body, since = Number(body.dataset.now);
  var live = document.getElementById("live"), list = document.getElementById("events");
  var instances = document.getElementById("instances"), timers = {};
  var STATE = {created: "starting", started: "starting", restarted: "starting",
               ready: "running", unresponsive: "unresponsive", failed: "failed",
               stopping: "stopping", stopped: "stopped", quarantined: "quarantined"};
  function el(tag, value, cls) {
    var node = document.createElement(tag);
    node.textContent = value === null || value === undefined ? "" : String(value);
    if (cls) { node.className = cls; }
    return node;
  }
  function when(t) { return new Date(t * 1000).toLocaleTimeString(); }
  function get(path) {
    return fetch(path, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { return r.status === 404 ? null : (r.ok ? r.json() : undefined); });
  }
  function find(table, key, name) {
    var rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].dataset[key] === name) { return rows[i]; }
    }
    return null;
  }
  function fill(row, cells) {
    while (row.cells.length) { row.deleteCell(0); }
    cells.forEach(function (cell) {
      var td = row.insertCell(-1);
      if (cell instanceof Node) { td.appendChild(cell); } else { td.textContent = cell; }
    });
  }
  function stateOf(value) { return el("span", value, "state " + value); }
  function drift(list) {
    return el("span", (list || []).map(function (d) {
      return d.kind + ": " + d.detail + " (since " + when(d.since) + ")";
    }).join("; "), "drift");
  }
  function showInstance(i) {
    var row = find(instances, "instance", i.name);
    if (!row) {
      row = instances.tBodies[0].insertRow(-1);
      row.dataset.instance = i.name;
    }
    fill(row, [i.name, i.app, i.branch || "", stateOf(i.state || "unknown"),
               i.pid === null || i.pid === undefined ? "" : String(i.pid),
               (i.queues || []).join(", "),
               i.max_concurrency ? i.min_concurrency + "-" + i.max_concurrency : "",
               i.restarts === undefined ? "" : String(i.restarts), drift(i.drift),
               i.last_error || ""]);
  }
  function readInstance(name) {
    clearTimeout(timers[name]);
    timers[name] = setTimeout(function () {
      get("/instances/" + encodeURIComponent(name) + "/").then(function (i) {
        var row = find(instances, "instance", name);
        if (i === null && row) { row.remove(); } else if (i) { showInstance(i); }
      }).catch(function () {});
    }, 200);
  }
  function readApp(name) {
    var table = document.getElementById("apps");
    Promise.all([get("/" + encodeURIComponent(name) + "/"),
                 get("/" + encodeURIComponent(name) + "/queues/")]).then(function (got) {
      var row = find(table, "app", name), app = got[0];
      if (app === null) { if (row) { row.remove(); } return; }
      if (!app) { return; }
      if (!row) { row = table.tBodies[0].insertRow(-1); row.dataset.app = name; }
      var b = app.broker || {};
      var vhost = b.virtual_host === "/" ? "/" : "/" + (b.virtual_host || "");
      fill(row, [name, b.hostname + ":" + b.port + vhost,
                 (got[1] || []).join(", ")]);
    }).catch(function () {});
  }
  function readBranch(id) {
    var table = document.getElementById("branches");
    get("/branches/" + encodeURIComponent(id) + "/").then(function (b) {
      if (!b) { return; }
      var row = find(table, "branch", id);
      if (!row) { row = table.tBodies[0].insertRow(-1); row.dataset.branch = id; }
      var load = b.load || {};
      fill(row, [id, b.url || "", stateOf(b.online === false ? "offline" : "online"),
                 String(load.instances === undefined ? "" : load.instances),
                 (load.loadavg || []).map(function (x) { return x.toFixed(2); }).join(" "),
                 b.version || ""]);
    }).catch(function () {});
  }
  function note(e) {
    var item = el("li", "");
    item.appendChild(el("span", when(e.time) + " ", "time"));
    item.appendChild(el("span", e.type, "state " + (STATE[e.type] || e.type)));
    var about = [e.branch, e.app, e.instance || e.peer].filter(Boolean).join(" / ");
    item.appendChild(el("span", " " + about + (e.reason ? ": " + e.reason : "")));
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 50) { list.removeChild(list.lastChild); }
  }
  function apply(e) {
    if (e.instance) {
      var row = find(instances, "instance", e.instance);
      if (e.type === "created" || e.type === "deleted") { readBranch(e.branch); }
      if (e.type === "deleted") { if (row) { row.remove(); } return; }
      if (row && STATE[e.type]) {
        row.cells[3].textContent = "";
        row.cells[3].appendChild(stateOf(STATE[e.type]));
      }
      readInstance(e.instance);
    } else if (e.peer) {
      readBranch(e.peer);
    } else if (e.app) {
      readApp(e.app);
    }
  }
  var source = new EventSource("/events/?last=20");
  source.onopen = function () { live.textContent = "live"; live.className = "state running"; };
  source.onerror = function () {
    live.textContent = "reconnecting"; live.className = "state stopping";
  };
  source.onmessage = function (m) {
    var e = JSON.parse(m.data);
    note(e);
    if (e.time >= since) { apply(e); }
  };
  // Events were lost: what the page shows may be wrong; start again.
  source.addEventListener("reset", function () { window.location.reload(); });
}());
"""


def _hash(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: Its own script and style, calls to this branch (the stream, the API), a
#: favicon of nothing; no other origin, frame, form target or base.
CSP = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
).encode("ascii")


def set_headers(request):
    """The page's headers: HTML, never cached, its policy."""
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Security-Policy", CSP)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


def _table(table_id, headers, rows, key):
    """A table whose rows carry C{data-<key>} (the script finds them by it)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr data-{key}="{escape(name)}">' + "".join(f"<td>{cell}</td>" for cell in row)
        + "</tr>" for name, row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _state(value):
    value = value or "unknown"
    return f'<span class="state {escape(value)}">{escape(value)}</span>'


def _drift(found):
    text = "; ".join(f"{d.get('kind')}: {d.get('detail')}" for d in found or [])
    return f'<span class="drift">{escape(text)}</span>'


def _link(url):
    """A link to a branch's admin page: only to an http or https URL."""
    if not isinstance(url, str):
        return ""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = None
    if scheme not in ("http", "https"):
        return escape(url)
    return f'<a href="{escape(urljoin(url, "admin/"))}">{escape(url)}</a>'


async def render(ops, now):
    """The page of the branch C{ops} answers for (an L{IOperations}) at C{now}, as bytes."""
    branch_id = ops.branch_id
    branches = []
    for bid in await ops.list_branches():
        info = await ops.get_branch(bid)
        load = info.get("load") or {}
        branches.append((bid, [
            escape(bid) + (" <small>(this one)</small>" if bid == branch_id else ""),
            _link(info.get("url")), _state("online" if info.get("online", True) else "offline"),
            str(load.get("instances", len(info.get("instances", [])))),
            escape(" ".join(f"{x:.2f}" for x in load.get("loadavg", []))),
            escape(info.get("version") or ""),
        ]))
    apps = []
    for name in (await ops.list_apps())[0]:
        app = await ops.get_app(name)
        broker = app["broker"]
        queues, _ = await ops.list_queues(name)
        apps.append((name, [
            escape(name),
            escape(f"{broker['hostname']}:{broker['port']}/"
                   + ("" if broker["virtual_host"] == "/" else broker["virtual_host"])),
            escape(", ".join(queues)),
        ]))
    described, missing = await ops.describe_instances()
    instances = [
        (shown["name"], [
            escape(shown["name"]), escape(shown["app"]), escape(shown.get("branch") or ""),
            _state(shown.get("state")), escape(str(shown.get("pid") or "")),
            escape(", ".join(shown.get("queues") or [])),
            escape(f"{shown['min_concurrency']}-{shown['max_concurrency']}"
                   if "max_concurrency" in shown else ""),
            escape(str(shown.get("restarts", ""))), _drift(shown.get("drift")),
            escape(shown.get("last_error") or ""),
        ])
        for shown in described
    ]
    partial = (f"<p class=drift>No answer from branch(es) {escape(', '.join(missing))}: "
               "their instances are missing.</p>" if missing else "")
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<link rel="icon" href="data:,">'
        f"<title>cyme · {escape(branch_id)}</title><style>{_STYLE}</style></head>"
        f'<body data-now="{now!r}">'
        f"<h1>cyme branch {escape(branch_id)} <small>{escape(__version__)}</small> "
        '<small id="live" class="state unknown">connecting</small></h1>'
        "<h2>Branches</h2>"
        + _table("branches", ["id", "url", "state", "instances", "load", "version"],
                 branches, "branch")
        + "<h2>Apps</h2>"
        + _table("apps", ["app", "broker", "queues"], apps, "app")
        + "<h2>Instances</h2>" + partial
        + _table("instances", ["name", "app", "branch", "state", "pid", "queues",
                               "concurrency", "restarts", "drift", "last error"],
                 instances, "instance")
        + '<h2>Latest events</h2><ol id="events"></ol>'
        "<p><small>Read-only; change things through the HTTP API.</small></p>"
        f"<script>{_SCRIPT}</script></body></html>"
    )
    return page.encode("utf-8")
