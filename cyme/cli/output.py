"""How the ``cyme`` command shows an answer: ``json`` as the API sent it, or
``pretty``, aligned text a person reads."""

import datetime
import json
from urllib.parse import quote

#: Fields that hold a moment, in seconds since the epoch.
MOMENTS = ("seen_at", "last_heartbeat", "quarantined_until", "created", "expires")


def render(value, fmt):
    """The text of C{value} (an answer's JSON) in format C{fmt}, without a final newline."""
    if fmt == "json":
        return json.dumps(value)
    return pretty(value)


def pretty(value):
    if value is None:
        return ""
    if isinstance(value, dict):
        if value == {"ok": "ok"}:
            return "ok"
        return fields(flatten(value))
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            rows = [flatten(v) for v in value]
            columns = list(dict.fromkeys(k for row in rows for k in row))
            return table(columns, [[row.get(c) for c in columns] for row in rows])
        return "\n".join(cell(v) for v in value)
    return cell(value)


def flatten(value, prefix=""):
    """A dict of dicts as one level, keys joined by dots; a broker as its URL."""
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict) and item and not is_broker(item):
            flat.update(flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


BROKER_KEYS = {"hostname", "port", "userid", "password", "virtual_host"}


def is_broker(value):
    return isinstance(value, dict) and BROKER_KEYS <= set(value) <= BROKER_KEYS | {"ssl"}


def broker_url(broker):
    """A broker as an amqp:// URL without its password: a terminal is no place for it."""
    scheme = "amqps" if broker.get("ssl") else "amqp"
    vhost = quote(str(broker.get("virtual_host") or "/"), safe="")
    # As amqp:// URLs write it, the default virtual host "/" is a second slash.
    vhost = "/" if vhost == "%2F" else vhost
    where = f"{broker.get('userid')}@{broker.get('hostname')}:{broker.get('port')}"
    return f"{scheme}://{where}/{vhost}"


def when(seconds):
    """Seconds since the epoch as a UTC time a person reads."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value, key=""):
    """One value on one line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if is_broker(value):
        return broker_url(value)
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value) if value else "-"
    if isinstance(value, (int, float)) and key.endswith(MOMENTS):
        return when(value)
    if isinstance(value, float):
        return f"{value:g}"
    return " ".join(str(value).split()) if str(value).strip() else "-"


def fields(mapping):
    """C{key  value} lines, the values aligned."""
    width = max((len(k) for k in mapping), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v, k)}".rstrip() for k, v in mapping.items())


def table(columns, rows, limits=None):
    """
    Aligned columns under upper-case headers; C{limits} caps a column's
    width (the end of a longer value is cut and marked with an ellipsis).
    """
    limits = limits or {}
    text = [[c.upper() for c in columns]]
    for row in rows:
        line = []
        for column, value in zip(columns, row):
            value = " ".join(value.split()) if isinstance(value, str) else cell(value, column)
            limit = limits.get(column)
            if limit and len(value) > limit:
                value = value[: limit - 1] + "…"
            line.append(value)
        text.append(line)
    widths = [max(len(line[i]) for line in text) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in text
    )
