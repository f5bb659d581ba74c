"""What a bus message may hold: every envelope is checked before use.

An envelope that opened (L{cyme.cluster.seal}) is still data from the
network: L{envelope} checks its frame (type, sender, ticket, method,
result or error), L{beat} a heartbeat field by field, and L{fields} the
arguments of a request, by a spec each bus method gives.  What does not
pass is L{BadMessage}: the bus drops the envelope (a request gets a 400)
and counts it; nothing of it is stored.
"""

import copy
import math
from urllib.parse import urlsplit

from cyme.errors import BadRequest
from cyme.state.models import check_name

TYPES = ("beat", "request", "reply", "bye", "ping", "ack", "ping-req", "gossip", "members")

#: What a record may say of a branch (L{cyme.cluster.presence.STATUSES}).
STATUSES = ("alive", "suspect", "dead", "left")
#: At most this many records in one message (a cluster's whole table included).
MAX_RECORDS = 10000


class BadMessage(BadRequest):
    """A bus message, or one of its fields, is not what the protocol says."""


def text(value, field, max_length=255):
    """C{value} if a string of at most C{max_length} printable characters."""
    if not isinstance(value, str) or len(value) > max_length or any(
            ord(c) < 32 for c in value):
        raise BadMessage(field, f"{field} must be a string of at most {max_length} "
                                "printable characters")
    return value


def name(value, field):
    """C{value} if it may name an app, instance, queue or branch."""
    try:
        return check_name(value, field)
    except BadRequest as e:
        raise BadMessage(field, e.message) from None


def flag(value, field):
    if not isinstance(value, bool):
        raise BadMessage(field, f"{field} must be true or false")
    return value


def number(value, field, low=None):
    """C{value} if a finite JSON number (not a boolean), at least C{low}."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or (low is not None and value < low)):
        raise BadMessage(field, f"{field} must be a finite number")
    return value


def integer(value, field, low=0):
    if type(value) is not int or value < low:
        raise BadMessage(field, f"{field} must be an integer of at least {low}")
    return value


def obj(value, field):
    """C{value} if a JSON object (string keys)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadMessage(field, f"{field} must be an object")
    return value


def array(value, field):
    if not isinstance(value, list):
        raise BadMessage(field, f"{field} must be a list")
    return value


def anything(value, field):
    return value


def optional(check, default=None):
    """A spec entry: C{check} when the field is there and not null, else C{default}."""
    def checked(value, field):
        return copy.copy(default) if value is None else check(value, field)
    checked.optional = True
    return checked


def fields(data, spec, what="arguments"):
    """
    C{data} (a JSON object) checked by C{spec} (field -> check): the
    checked values, missing optional ones at their default.  A field the
    spec does not name is ignored (a newer branch may send more).
    """
    obj(data, what)
    checked = {}
    for field, check in spec.items():
        value = data.get(field)
        if value is None and not getattr(check, "optional", False):
            raise BadMessage(field, f"{what}: {field} is missing")
        checked[field] = check(value, field)
    return checked


def http_url(value, field="url"):
    """C{value} if an C{http} or C{https} URL with a host."""
    if isinstance(value, str) and value in _GOOD_URLS:
        return value
    text(value, field, 2048)
    try:
        parts = urlsplit(value)
        good = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        good = False
    if not good:
        raise BadMessage(field, f"{field} must be an http or https URL")
    if len(_GOOD_URLS) < 10000:
        # Every record of a branch says its URL: checked once.
        _GOOD_URLS.add(value)
    return value


_GOOD_URLS = set()


def envelope(data):
    """The frame of an opened envelope: C{type}, C{from} and C{v} checked."""
    if data.get("type") not in TYPES:
        raise BadMessage("type", f"type must be one of {', '.join(TYPES)}")
    name(data.get("from"), "from")
    integer(data.get("v"), "v", 1)
    if data["type"] == "request":
        text(data.get("ticket"), "ticket", 128)
        text(data.get("method"), "method", 128)
    elif data["type"] == "reply":
        text(data.get("ticket"), "ticket", 128)
        if "error" in data:
            status = integer(data.get("status"), "status", 400)
            if status > 599:
                raise BadMessage("status", "status must be an HTTP error status")
    return data


def _load(value, field):
    load = obj(value, field)
    checked = {}
    if "instances" in load:
        checked["instances"] = integer(load["instances"], "load.instances")
    if "loadavg" in load:
        averages = array(load["loadavg"], "load.loadavg")
        if len(averages) > 3:
            raise BadMessage("load.loadavg", "load.loadavg has at most 3 numbers")
        checked["loadavg"] = [number(x, "load.loadavg", 0) for x in averages]
    if "mem_available" in load:
        checked["mem_available"] = integer(load["mem_available"], "load.mem_available")
    return checked


def _limits(value, field):
    limits = obj(value, field)
    return {k: integer(limits[k], f"limits.{k}", 1)
            for k in ("max_instances", "max_concurrency") if k in limits}


def _instances(value, field):
    pairs = []
    for pair in array(value, field):
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadMessage(field, f"{field} must be [app, name] pairs")
        pairs.append([name(pair[0], field), name(pair[1], field)])
    return pairs


BEAT = {
    "url": optional(http_url),
    "instances": optional(_instances, []),
    "load": optional(_load, {}),
    "limits": optional(_limits, {}),
    "digest": optional(lambda v, f: text(v, f, 64)),
    "version": optional(lambda v, f: text(v, f, 64)),
    "started": optional(number),
    "hello": optional(flag, False),
    "inc": optional(integer, 0),
}


def beat(data):
    """What a heartbeat says, each field checked; L{BadMessage} if one is wrong."""
    return fields(data, BEAT, "heartbeat")


def _status(value, field):
    if value not in STATUSES:
        raise BadMessage(field, f"{field} must be one of {', '.join(STATUSES)}")
    return value


RECORD = {
    **{k: v for k, v in BEAT.items() if k not in ("hello", "digest")},
    "id": name,
    "status": _status,
    "inc": integer,
}


def record(data, field="record"):
    """A record of a branch (what membership passes on), each field checked."""
    return fields(data, RECORD, field)


def records(value, field="gossip"):
    """A list of records, each checked (L{record})."""
    listed = array(value, field)
    if len(listed) > MAX_RECORDS:
        raise BadMessage(field, f"{field} holds at most {MAX_RECORDS} records")
    return [record(r) for r in listed]


#: A probe (C{ping}), its answer (C{ack}), a probe asked of another
#: (C{ping-req}), records broadcast (C{gossip}) or a whole table (C{members}).
PROBE = {
    "seq": integer,
    "target": optional(name),
    "digest": optional(lambda v, f: text(v, f, 64)),
    "you": optional(record),
    "gossip": optional(records, []),
}
MEMBERS = {
    "members": optional(records, []),
    "want": optional(flag, False),
}


def probe(data):
    """The fields of a C{ping}, C{ack} or C{ping-req}, checked."""
    return fields(data, PROBE, data.get("type", "probe"))


def members(data):
    """The fields of a C{gossip} or C{members} message, checked."""
    return fields(data, {**MEMBERS, "gossip": optional(records, [])}, data.get("type"))
