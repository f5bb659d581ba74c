"""The admin page (``/admin/``): the branch and its cluster at a glance.

One read-only HTML page, rendered on the server from the same operations
as the API and refreshed every few seconds: the branches with their load,
the apps with their brokers and queues, and this branch's instances with
their live state.  Every value is escaped; changes go through the API.
"""

from html import escape
from urllib.parse import urljoin, urlsplit

from cyme import __version__

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) { background: #f4f4f4; }
.running { color: #070; } .offline, .quarantined, .unresponsive, .failed { color: #b00; }
.starting, .stopping { color: #a60; } small { color: #666; }
"""


def _table(headers, rows):
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>" if rows else "<p><small>none</small></p>"


def _state(value):
    value = value or ""
    return f'<span class="{escape(value)}">{escape(value)}</span>'


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


async def render(ops):
    """The page of the branch C{ops} answers for (an L{IOperations}), as bytes."""
    branch_id = ops.branch_id
    branches = []
    for bid in await ops.list_branches():
        info = await ops.get_branch(bid)
        load = info.get("load") or {}
        link = _link(info.get("url"))
        branches.append([
            escape(bid) + (" <small>(this one)</small>" if bid == branch_id else ""),
            link,
            str(load.get("instances", len(info.get("instances", [])))),
            escape(" ".join(f"{x:.2f}" for x in load.get("loadavg", []))),
            escape(info.get("version") or ""),
        ])
    apps = []
    for name in (await ops.list_apps())[0]:
        app = await ops.get_app(name)
        broker = app["broker"]
        queues, _ = await ops.list_queues(name)
        apps.append([
            escape(name),
            escape(f"{broker['hostname']}:{broker['port']}{broker['virtual_host']}"),
            escape(", ".join(queues)),
        ])
    instances = [
        [
            escape(shown["name"]), escape(shown["app"]), _state(shown.get("state")),
            escape(str(shown.get("pid") or "")),
            escape(", ".join(shown["queues"])),
            escape(f"{shown['min_concurrency']}-{shown['max_concurrency']}"),
            escape(str(shown.get("restarts", 0))),
            escape(shown.get("last_error") or ""),
        ]
        for shown in await ops.local_instances()
    ]
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta http-equiv="refresh" content="5">'
        f"<title>cyme · {escape(branch_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>cyme branch {escape(branch_id)} <small>{escape(__version__)}</small></h1>"
        "<h2>Branches</h2>"
        + _table(["id", "url", "instances", "load", "version"], branches)
        + "<h2>Apps</h2>"
        + _table(["app", "broker", "queues"], apps)
        + "<h2>Instances of this branch</h2>"
        + _table(["name", "app", "state", "pid", "queues", "concurrency", "restarts",
                  "last error"], instances)
        + "<p><small>Read-only; change things through the HTTP API.</small></p>"
        "</body></html>"
    )
    return page.encode("utf-8")
