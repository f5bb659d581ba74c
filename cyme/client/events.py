"""The cluster's events, for L{cyme.client}: C{GET /events/} followed as it comes.

The branch sends Server-Sent Events (one C{id:} and one C{data:} line per
event, C{event: reset} where events were lost, comment lines to keep the
connection alive); L{messages} reads them, and L{follow} yields each
event's JSON, reconnecting after a dropped connection with the id of the
last event of each branch (C{Last-Event-ID}), as a browser does.  Only a
stream that was once open is reconnected: a branch that never answered
(a mistyped URL, a branch down) is an error at once, not a silent wait.
"""

import json
import time

from cyme.client.errors import ConnectionFailed
from cyme.client.transport import path

#: Seconds without a byte (the branch writes a comment every 15) before the
#: connection is taken for dead.
SILENCE = 60.0


def messages(lines):
    """The C{(event, id, data)} of each message in C{lines} (text lines of a stream)."""
    fields = {}
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield fields.get("event", "message"), fields.get("id"), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[key] = fields[key] + "\n" + value if key == "data" and key in fields else value


def follow(transport, app=None, types=None, last=0, reconnect=True, sleep=time.sleep):
    """
    Yield the cluster's events (dicts) as a branch streams them: those of
    C{app}, of C{types} (names), the latest C{last} first; a C{reset}
    event where some were lost.  With C{reconnect}, a dropped connection is
    opened again (after a second) from the last event of each branch; a
    first connection that fails raises L{ConnectionFailed}.
    """
    params = {"app": app, "type": ",".join(types) if types else None, "last": last or None}
    seen = {}
    established = False
    while True:
        headers = {"Accept": "text/event-stream"}
        if seen:
            headers["Last-Event-ID"] = ",".join(seen.values())
        try:
            with transport.stream(path("events"), params, headers, SILENCE) as lines:
                established = True
                for _, event_id, data in messages(lines):
                    event = json.loads(data)
                    if event_id:
                        seen[event_id.rpartition(":")[0]] = event_id
                    yield event
        except ConnectionFailed:
            if not (reconnect and established):
                raise
        if not reconnect:
            return
        params["last"] = None
        sleep(1.0)
