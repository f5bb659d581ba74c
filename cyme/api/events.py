"""``GET /events/``: the cluster's events as Server-Sent Events.

The answer is C{text/event-stream}: a C{retry:} line, then one message per
event, C{id: <branch>:<n>} and C{data:} its JSON on one line (no C{event:}
line, so that a browser's C{EventSource.onmessage} sees them all), a
C{reset} message (C{event: reset}, no id) where events were lost, and a
comment line every L{KEEPALIVE} seconds so that proxies and clients see
the stream alive.  It ends when the client leaves, or after the branch's
C{--max-stream} seconds (an hour by default), when a client reconnects with
its C{Last-Event-ID} and misses nothing (the bounded connections of a
branch are not held forever by streams nobody reads).

Query: C{?app=NAME} (that app's events), C{?type=T1,T2} (those types),
C{?last=N} (first the latest N events held).  C{Last-Event-ID} (which a
browser's C{EventSource} sends when it reconnects) resumes after the ids
it names, one or several separated by commas (L{cyme.operations.eventhub}).

A slow client is dropped, never holding memory: the stream is a push
producer of its request, paused when the connection's send buffer is full;
while paused, at most L{MAX_QUEUED} messages wait, and one more closes the
connection (the client reconnects with its C{Last-Event-ID}).
"""

import collections
import json

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from cyme import logs
from cyme.api.http import query_fields
from cyme.errors import BadRequest
from cyme.operations.events import RESET, TYPES, SIZE, parse_ids
from cyme.state.models import check_int, check_name

#: Seconds between two keep-alive comments.
KEEPALIVE = 15.0
#: Messages a paused (slow) client may have waiting before it is dropped.
MAX_QUEUED = 256
#: Milliseconds a browser waits before it reconnects.
RETRY = 2000

log = Logger(observer=logs.observer)


def frame(event):
    """The SSE message of C{event} (its JSON), as bytes."""
    data = json.dumps(event, separators=(",", ":"))
    if event["type"] == RESET:
        return f"event: reset\ndata: {data}\n\n".encode("utf-8")
    return f"id: {event['id']}\ndata: {data}\n\n".encode("utf-8")


def selection(params):
    """C{(match, last)} of the query's C{app}, C{type} and C{last}."""
    app = params.get("app")
    if app is not None:
        app = check_name(app, "app")
    types = params.get("type")
    if types is not None:
        if not isinstance(types, str):
            types = ",".join(types)
        types = {t.strip() for t in types.split(",") if t.strip()}
        unknown = sorted(types - set(TYPES))
        if unknown:
            raise BadRequest("type", f"no event type {unknown[0]!r} (types: "
                                     f"{', '.join(TYPES)})")
    last = check_int(params.get("last") or 0, "last", 0, SIZE)

    def match(event):
        return (app is None or event.app == app) and (types is None or event.type in types)

    return match, last


#: Seconds a stream lasts at most, by default (C{--max-stream}).
MAX_STREAM = 3600.0


def serve(request, ops, clock, lifetime=MAX_STREAM):
    """
    Answer C{request} with the stream of C{ops}'s events (L{IOperations.watch_events});
    a Deferred that fires when it ends.  Bad input raises before anything is written.
    """
    match, last = selection(query_fields(request))
    resume = request.getHeader(b"last-event-id")
    after = parse_ids(resume.decode("latin-1")) if resume else []
    stream = Stream(request, clock, lifetime=lifetime)
    stream.watch = ops.watch_events(stream.send, match, after, last)
    stream.start()
    return stream.done


@implementer(IPushProducer)
class Stream:
    """One client's stream: its queue, its keep-alives, and dropping it if slow."""

    def __init__(self, request, clock, max_queued=MAX_QUEUED, keepalive=KEEPALIVE,
                 lifetime=MAX_STREAM):
        self.request = request
        self.lifetime = lifetime
        self.clock = clock
        self.max_queued = max_queued
        self.keepalive = keepalive
        #: Fires once the stream ended (cancelled: the client left).
        self.done = defer.Deferred(lambda _: self.close())
        self.watch = None
        self._queue = collections.deque()
        self._started = self._paused = self._closed = False
        self._beat = self._end = None

    def start(self):
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        # Proxies that buffer answers (nginx) pass this one on as it comes.
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        request.write(f"retry: {RETRY}\n: events of the cluster\n\n".encode("ascii"))
        self._started = True
        self._beat = LoopingCall(self._keep_alive)
        self._beat.clock = self.clock
        self._beat.start(self.keepalive, now=False)
        self._end = self.clock.callLater(self.lifetime, self._ended)
        self._flush()

    def _ended(self):
        # The client reconnects with its Last-Event-ID, as after any cut.
        self.close()
        if not self.done.called:
            self.done.callback(b"")

    def send(self, event):
        """Write C{event} now, or queue it while the client is paused (L{MAX_QUEUED})."""
        if self._closed:
            return
        self._queue.append(frame(event))
        if self._started and len(self._queue) > self.max_queued:
            self._drop()
        else:
            self._flush()

    def _flush(self):
        while self._queue and self._started and not self._paused and not self._closed:
            self.request.write(self._queue.popleft())

    def _keep_alive(self):
        if not self._paused and not self._closed:
            self.request.write(b": keep-alive\n\n")

    def _drop(self):
        log.warn("event stream of {peer} dropped: it read {count} events too slowly",
                 peer=str(self.request.getClientAddress()), count=len(self._queue))
        self.close()
        self.request.transport.abortConnection()

    def close(self):
        """End the stream: no more events, keep-alives or queue."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self.watch is not None:
            self.watch.stop()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self._end is not None and self._end.active():
            self._end.cancel()
        if self._started and self.request.channel is not None:
            self.request.unregisterProducer()

    # IPushProducer: the connection's send buffer is full, or emptied.

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._flush()

    def stopProducing(self):
        self.close()
