"""A branch's events: what happened to its workers, its desired state and its
peers, numbered and kept for a while.

An L{Event} says when, on which branch, of which type, to which app and
instance, and why; its id is C{<branch>:<n>}.  L{EventLog} numbers this
branch's events (C{n} starts from the clock's milliseconds at start, so
ids keep growing across restarts of the branch and an id of an earlier
run is never mistaken for one of this run), keeps the last C{size} in an
L{EventBuffer} (a ring) and tells its listeners of each one.
L{EventBuffer.since} is how a stream resumes after an id (C{Last-Event-ID})
and says when it no longer holds that id.  The events come from the
supervisor, the store and the bus (L{cyme.operations.eventfeeds}); the
cluster's are gathered by L{cyme.operations.eventhub}.
"""

import collections

import attrs

from cyme.cluster.messages import BadMessage, fields, name, number, optional, text
from cyme.errors import BadRequest
from cyme.listeners import Listeners
from cyme.state.models import check_name

#: Every type of event, by what it is about.
WORKER_TYPES = ("started", "ready", "unresponsive", "failed", "stopping", "stopped",
                "restarted", "quarantined")
INSTANCE_TYPES = ("created", "deleted", "consumer", "changed")
PRESENCE_TYPES = ("online", "offline")
RECORD_TYPES = ("app", "queue")
#: A step of a rolling restart (L{cyme.operations.rolling}): begun, fork
#: servers renewed, an instance replaced, finished.
RESTART_TYPES = ("restart",)
TYPES = WORKER_TYPES + INSTANCE_TYPES + PRESENCE_TYPES + RECORD_TYPES + RESTART_TYPES
#: Not an event: what a stream says when events it should have had are lost.
RESET = "reset"

#: Events a branch keeps (its own, and each other branch's while watched).
SIZE = 1000
#: The longest reason kept.
MAX_REASON = 500


def short(reason):
    """C{reason} on one line (no control characters), at most L{MAX_REASON} long."""
    if reason is None:
        return None
    line = "".join(c for c in " ".join(str(reason).split()) if c.isprintable())
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 1] + "…"


@attrs.frozen
class Event:
    branch: str
    n: int
    time: float
    type: str
    app: str | None = None
    instance: str | None = None
    reason: str | None = None
    #: The branch an C{online} or C{offline} event is about.
    peer: str | None = None

    @property
    def id(self):
        return f"{self.branch}:{self.n}"

    def to_json(self):
        return {"id": self.id, "time": self.time, "branch": self.branch, "type": self.type,
                "app": self.app, "instance": self.instance, "reason": self.reason,
                "peer": self.peer}

    @classmethod
    def from_json(cls, data, branch):
        """An event that branch C{branch} sent over the bus, checked (L{BadMessage})."""
        given = fields(data, {
            "id": lambda v, f: text(v, f), "time": number, "type": lambda v, f: text(v, f, 32),
            "app": optional(name), "instance": optional(name),
            "reason": optional(lambda v, f: text(v, f, MAX_REASON)), "peer": optional(name),
        }, "event")
        sender, n = parse_id(given["id"], error=BadMessage)
        if sender != branch:
            raise BadMessage("id", f"an event of branch {sender} sent by branch {branch}")
        if given["type"] not in TYPES:
            raise BadMessage("type", f"no event type {given['type']!r}")
        return cls(branch, n, float(given["time"]), given["type"], given["app"],
                   given["instance"], given["reason"], given["peer"])


def parse_id(value, field="Last-Event-ID", error=BadRequest):
    """C{(branch, n)} of an event id C{<branch>:<n>}; C{error} if it is none."""
    branch, colon, n = value.strip().rpartition(":")
    if not colon or not n.isdigit() or len(n) > 18 or not n.isascii():
        raise error(field, f"{field}: {value[:80]!r} is not an event id (<branch>:<n>)")
    try:
        check_name(branch, "branch")
    except BadRequest as e:
        raise error(field, f"{field}: {e.message}") from None
    return branch, int(n)


def parse_ids(value, field="Last-Event-ID", most=64):
    """The positions C{[(branch, n)]} of a comma-separated list of event ids."""
    if len(value) > 80 * most:
        raise BadRequest(field, f"{field} is too long")
    ids = [v for v in value.split(",") if v.strip()]
    if len(ids) > most:
        raise BadRequest(field, f"{field} names more than {most} events")
    return list(dict(parse_id(v, field) for v in ids).items())


class EventBuffer:
    """The last C{size} events of one branch, oldest first."""

    def __init__(self, size=SIZE, last=None):
        self._events = collections.deque(maxlen=size)
        #: The C{n} of the last event appended (dropped or not); None: none known.
        self.last = last

    def __iter__(self):
        return iter(self._events)

    def __len__(self):
        return len(self._events)

    def append(self, event):
        self._events.append(event)
        self.last = event.n

    def clear(self):
        """Forget every event (events were lost between these and the next)."""
        self._events.clear()
        self.last = None

    def get(self, n):
        """The event numbered C{n}, if held."""
        for event in reversed(self._events):
            if event.n == n:
                return event
            if event.n < n:
                return None
        return None

    def since(self, after):
        """
        C{(events after n C{after}, complete)}: C{complete} is false when
        events between C{after} and the oldest held are gone (or C{after}
        is no id of this run), and the events are then none.
        """
        if self.last is None or after > self.last:
            return [], False
        oldest = self._events[0].n if self._events else self.last + 1
        if after < oldest - 1:
            return [], False
        return [e for e in self._events if e.n > after], True

    def latest(self, count):
        return list(self._events)[-count:] if count > 0 else []


class EventLog:
    """This branch's events: numbered, kept in a ring, told to listeners."""

    def __init__(self, branch_id, clock, size=SIZE):
        self.branch_id = branch_id
        self.clock = clock
        first = max(1, int(clock.seconds() * 1000))
        self.buffer = EventBuffer(size, last=first - 1)
        self._listeners = Listeners("event")

    def subscribe(self, listener):
        """Call C{listener(event)} with every later L{Event}."""
        self._listeners.add(listener)

    def unsubscribe(self, listener):
        self._listeners.remove(listener)

    def record(self, type, app=None, instance=None, reason=None, peer=None):
        """Number, keep and tell an event of C{type} (one of L{TYPES}); the L{Event}."""
        assert type in TYPES, type
        event = Event(self.branch_id, self.buffer.last + 1, self.clock.seconds(), type,
                      app, instance, short(reason), peer)
        self.buffer.append(event)
        self._listeners.notify(event)
        return event

    def since(self, after, limit):
        """
        What another branch asks for (C{events.since}): C{(events, complete)},
        at most C{limit} events after C{after} (None: the latest), the
        latest ones if C{after} is no longer held.
        """
        if after is None:
            return self.buffer.latest(limit), True
        events, complete = self.buffer.since(after)
        if not complete:
            return self.buffer.latest(limit), False
        return events[:limit], True
