"""``--log-format json``: the branch's log as one JSON object a line.

For journald and log shippers: each event is C{{"time", "level",
"namespace", "message"}} plus the event's named fields (``instance``,
``app``, ``broker``...) and ``traceback`` for a failure.  Every text in it
goes through L{mask_passwords}: a broker URL quoted in a message, a field or
a traceback shows C{**} for its password.  twistd's own text format
(C{twisted.logger.jsonFileLogObserver} is Twisted's serialization for
reloading events, not this) stays the default.
"""

import datetime
import json

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

from cyme.amqp.url import mask_passwords

FORMATS = ("text", "json")

#: Keys of Twisted's own bookkeeping (legacy C{log.msg} events included),
#: not fields of the event.
_INTERNAL = frozenset(["message", "isError", "system", "time", "format", "failure", "why"])
#: Fields whose value is a secret whatever it holds.
_SECRET = frozenset(["password", "secret"])


def _value(value, depth=0):
    """C{value} as JSON can hold it, its texts masked."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_value(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 3:
        return {str(k): "**" if k in _SECRET else _value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return mask_passwords(str(value))


def event_as_json(event):
    """The one line (no newline) of C{event}."""
    when = event.get("log_time")
    level = event.get("log_level")
    record = {
        "time": None if when is None else datetime.datetime.fromtimestamp(
            when, datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": mask_passwords(formatEvent(event)),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = mask_passwords(failure.getTraceback())
        except Exception:
            record["traceback"] = mask_passwords(repr(failure))
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        record[key] = "**" if key in _SECRET else _value(value)
    return json.dumps(record)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event to C{out} (a text file) as one JSON line."""

    def __init__(self, out):
        # The file itself, kept: twistd later points sys.stdout at the log.
        self._out = out

    def __call__(self, event):
        try:
            line = event_as_json(event)
        except Exception as e:  # a line saying so, rather than a lost event
            line = json.dumps({"time": None, "level": "error", "namespace": "cyme.jsonlog",
                               "message": mask_passwords(f"cannot write an event: {e!r}")})
        self._out.write(line + "\n")
        self._out.flush()
