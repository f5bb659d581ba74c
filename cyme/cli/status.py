"""``cyme status``: every instance of the cluster on one line, what was asked
beside what runs, and the ones where they differ marked."""

from cyme.cli.output import cell, table

COLUMNS = ["", "instance", "app", "branch", "wanted", "state", "pid", "queues",
           "autoscale", "restarts", "last_error"]
#: The widest a column is in the pretty table (the JSON has it all).
LIMITS = {"last_error": 60, "queues": 40}


def row(instance):
    """
    The status of one instance from its JSON (C{GET
    /<app>/instances/<name>/}): what was asked (C{wanted}, C{queues},
    C{autoscale}), what runs (C{state}, C{live_queues}, C{live_autoscale})
    and C{differs}, the names of the fields where they part.
    """
    name = instance.get("name")
    if "is_enabled" not in instance:
        # All that is known of an instance of an offline branch (its state
        # "offline"), or of one whose branch did not answer ("unknown").
        return {"instance": name, "app": instance.get("app"), "branch": instance.get("branch"),
                "wanted": None, "state": instance.get("state"), "pid": None, "queues": None,
                "live_queues": None, "autoscale": None, "live_autoscale": None,
                "restarts": None, "last_error": instance.get("last_error"),
                "quarantined_until": None, "differs": ["state"]}
    wanted = "running" if instance.get("is_enabled", True) else "stopped"
    queues = list(instance.get("queues") or [])
    autoscale = {"max": instance.get("max_concurrency"), "min": instance.get("min_concurrency")}
    live = instance.get("live")
    live_queues = live_autoscale = None
    differs = []
    if instance.get("state") != wanted:
        differs.append("state")
    if isinstance(live, dict):
        # Every worker also consumes its own dq.<name>: not one the user asked for.
        live_queues = [q for q in live.get("queues") or [] if q != f"dq.{name}"]
        if sorted(live_queues) != sorted(queues):
            differs.append("queues")
        if live.get("max") is not None:
            live_autoscale = {"max": live.get("max"), "min": live.get("min")}
            if live_autoscale != autoscale:
                differs.append("autoscale")
    return {"instance": name, "app": instance.get("app"), "branch": instance.get("branch"),
            "wanted": wanted, "state": instance.get("state"), "pid": instance.get("pid"),
            "queues": queues, "live_queues": live_queues, "autoscale": autoscale,
            "live_autoscale": live_autoscale, "restarts": instance.get("restarts"),
            "last_error": instance.get("last_error"),
            "quarantined_until": instance.get("quarantined_until"), "differs": differs}


def rows(instances):
    """L{row} of each instance, by app, branch and name."""
    found = [row(i) for i in instances]
    return sorted(found, key=lambda r: (r["app"] or "", r["branch"] or "", r["instance"] or ""))


def _bounds(autoscale):
    return f"{autoscale['max']},{autoscale['min']}" if autoscale else "-"


def _cells(r):
    queues = cell(r["queues"])
    if "queues" in r["differs"]:
        queues += f" (live: {cell(r['live_queues'])})"
    autoscale = _bounds(r["autoscale"])
    if "autoscale" in r["differs"]:
        autoscale += f" (live: {_bounds(r['live_autoscale'])})"
    return ["*" if r["differs"] else "", r["instance"], r["app"], r["branch"],
            r["wanted"] or "?", r["state"], r["pid"], queues, autoscale, r["restarts"],
            r["last_error"]]


def pretty(branches, status_rows):
    """The table a person reads: the live branches, then one line per instance."""
    lines = [f"branches: {', '.join(branches) if branches else 'none live'}"]
    if status_rows:
        lines.append(table(COLUMNS, [_cells(r) for r in status_rows], LIMITS))
    else:
        lines.append("no instances")
    if any(r["differs"] for r in status_rows):
        lines.append("* what runs differs from what was asked")
    return "\n".join(lines)
