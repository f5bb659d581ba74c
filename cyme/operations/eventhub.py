"""Watching the cluster's events from one branch: its own, and the others'
mirrored while someone watches.

Every branch keeps its own events (L{cyme.operations.events.EventLog}) and
answers the bus method C{events.since} (at most L{BATCH} events after an
id).  While at least one stream watches on a branch, its L{EventHub} asks
every live peer for its new events every C{poll_interval} seconds (one
call per peer at a time, each with the bus's timeout) and keeps them in a
mirror per peer (a ring of C{size}); when nobody watches, it asks nobody.
A branch's C{online} and C{offline} events are its own view of the
others: only the watched branch's are shown, not its peers' views.

A L{Watch} starts once a round of asking has ended (its first events are at
most one round late): it is given what it resumes from (after the ids of
C{Last-Event-ID}: those of the branches it names exactly, the others' from
the time of the latest one it names; an id no longer held is a C{reset}
for its branch), or the latest C{last} events; then every new one.  A
branch whose mirror lost events (the peer no longer held the ones after the
last asked) is a C{reset} for every watch.
"""

import attrs
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import logs
from cyme.cluster.messages import BadMessage, array, fields, flag, integer, obj, optional
from cyme.errors import CymeError, Unavailable
from cyme.operations.events import PRESENCE_TYPES, RESET, SIZE, Event, EventBuffer

#: The most events one C{events.since} answer carries.
BATCH = 500
#: The most streams a branch serves at once.
MAX_WATCHES = 100
#: Seconds a peer that could not answer is not asked again.
QUIET = 30.0


def _everything(event):
    return True


@attrs.define(eq=False)
class Watch:
    """One stream's watch: C{deliver(json)} is told its events; L{stop} ends it."""

    hub: object
    deliver: object
    match: object = _everything
    #: Branch id -> the C{n} of the last event given.
    seen: dict = attrs.field(factory=dict)
    stopped: bool = False

    def stop(self):
        self.stopped = True
        self.hub.forget(self)

    def give(self, event):
        if self.stopped or event.n <= self.seen.get(event.branch, 0):
            return
        self.seen[event.branch] = event.n
        if self.match(event):
            self.deliver(event.to_json())

    def reset(self, branch, time, reason):
        self.seen.pop(branch, None)
        if not self.stopped:
            self.deliver({"id": None, "time": time, "branch": branch, "type": RESET,
                          "app": None, "instance": None, "reason": reason, "peer": None})


class EventHub:
    """The events a stream of this branch shows: C{log}'s, and C{bus}'s peers' if any."""

    logger = Logger(observer=logs.observer)

    def __init__(self, log, clock, bus=None, *, poll_interval=1.0, call_timeout=5.0,
                 size=SIZE, max_watches=MAX_WATCHES):
        self.log = log
        self.clock = clock
        self.bus = bus
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        self.size = size
        self.max_watches = max_watches
        self._mirrors = {}
        self._live = []
        self._pending = []
        self._asking = {}
        self._quiet = {}
        self._loop = None
        self._round = None
        self._since = None
        self._complaints = logs.Occasional(clock)
        log.subscribe(self._recorded)

    def handlers(self):
        """The bus method other branches call on this one."""
        return {"events.since": self._answer}

    def watches(self):
        return len(self._live) + len(self._pending)

    # Watching

    def watch(self, deliver, match=None, after=(), last=0):
        """
        A L{Watch} of the cluster's events matching C{match(event)}, from
        after the positions C{after} (C{[(branch, n)]}) or with the latest
        C{last}; L{Unavailable} when this branch serves too many already.
        """
        if self.watches() >= self.max_watches:
            raise Unavailable(f"this branch serves {self.max_watches} event streams already")
        watch = Watch(self, deliver, match or _everything)
        if self.bus is None:
            self._begin(watch, after, last)
            return watch
        self._pending.append((watch, after, last))
        if self._loop is None:
            self._since = self.clock.seconds()
            self._loop = LoopingCall(self._ask)
            self._loop.clock = self.clock
            self._loop.start(self.poll_interval, now=True)
        elif self._round is None:
            self._begin_pending()
        return watch

    def forget(self, watch):
        self._live = [w for w in self._live if w is not watch]
        self._pending = [p for p in self._pending if p[0] is not watch]
        if not self.watches() and self._loop is not None:
            self._loop.stop()
            self._loop = None

    def _sources(self):
        return {self.log.branch_id: self.log.buffer, **self._mirrors}

    def _begin(self, watch, after, last):
        sources = self._sources()
        found, times, named = [], [], set()
        for branch, n in after:
            named.add(branch)
            buffer = sources.get(branch)
            events, complete = buffer.since(n) if buffer is not None else ([], False)
            if not complete:
                watch.reset(branch, self.clock.seconds(),
                            f"the events of branch {branch} after {branch}:{n} are no "
                            "longer held")
                continue
            watch.seen[branch] = n
            found += events
            held = buffer.get(n)
            if held is not None:
                times.append(held.time)
        if times:
            for branch, buffer in sources.items():
                if branch not in named:
                    found += [e for e in buffer if e.time > max(times)]
        elif not after and last:
            every = [e for buffer in sources.values() for e in buffer]
            found = [e for e in _in_order(every) if self._shown(e) and watch.match(e)][-last:]
        for event in _in_order(found):
            if self._shown(event):
                watch.give(event)
        if not watch.stopped:
            self._live.append(watch)

    def _begin_pending(self):
        pending, self._pending = self._pending, []
        for watch, after, last in pending:
            if not watch.stopped:
                self._begin(watch, after, last)

    def _shown(self, event):
        return event.branch == self.log.branch_id or event.type not in PRESENCE_TYPES

    def _recorded(self, event):
        for watch in list(self._live):
            watch.give(event)

    # Asking the peers

    def _ask(self):
        """One round: every live peer not being asked is asked for its new events."""
        try:
            self._ask_peers()
        except Exception:  # the loop would stop for good
            self.logger.failure("asking the branches for their events failed")
            self._round = None
            self._begin_pending()

    def _ask_peers(self):
        now = self.clock.seconds()
        calls = []
        for peer in self.bus.live_peers():
            if peer.id in self._asking or self._quiet.get(peer.id, 0) > now:
                continue
            mirror = self._mirrors.get(peer.id)
            after = mirror.last if mirror is not None else None
            d = self._asking[peer.id] = defer.ensureDeferred(self.bus.call(
                peer.id, "events.since", {"after": after, "limit": BATCH}, self.call_timeout))
            d.addCallbacks(self._answered, self._not_answered,
                           callbackArgs=(peer.id,), errbackArgs=(peer.id,))
            d.addBoth(self._asked, peer.id)
            calls.append(d)
        if not calls:
            self._begin_pending()
            return
        self._round = defer.DeferredList(calls, consumeErrors=True)
        self._round.addBoth(self._round_done)

    def _round_done(self, _):
        self._round = None
        self._begin_pending()

    def _asked(self, _, peer_id):
        self._asking.pop(peer_id, None)

    def _not_answered(self, failure, peer_id):
        self._complain(peer_id, failure.getErrorMessage())

    def _complain(self, peer_id, error):
        """Not asked again for a while; said at most once a minute."""
        self._quiet[peer_id] = self.clock.seconds() + QUIET
        held = self._complaints.due()
        if held is not None:
            self.logger.warn("branch {peer} did not give its events: {error} ({held} more "
                           "not said)", peer=peer_id, error=error, held=held)

    def _answered(self, reply, peer_id):
        try:
            events, complete = _checked(reply, peer_id)
        except CymeError as e:
            self._complain(peer_id, e.message)
            return
        mirror = self._mirrors.get(peer_id)
        priming = mirror is None
        if priming:
            mirror = self._mirrors[peer_id] = EventBuffer(self.size)
        elif not complete:
            mirror.clear()
            for watch in list(self._live):
                watch.reset(peer_id, self.clock.seconds(),
                            f"events of branch {peer_id} were lost on the way here")
        new = [e for e in sorted(events, key=lambda e: e.n)
               if mirror.last is None or e.n > mirror.last]
        for event in new:
            mirror.append(event)
        for event in new:
            if self._shown(event) and (not priming or event.time >= self._since):
                for watch in list(self._live):
                    watch.give(event)

    def _answer(self, args, sender):
        given = fields(args, {"after": optional(integer), "limit": optional(integer, BATCH)})
        events, complete = self.log.since(given["after"], max(1, min(given["limit"], BATCH)))
        return {"events": [e.to_json() for e in events], "complete": complete}


def _checked(reply, peer_id):
    """C{(events, complete)} of an C{events.since} reply; bad events are left out."""
    obj(reply, "reply")
    flag(reply.get("complete"), "complete")
    listed = array(reply.get("events"), "events")
    if len(listed) > BATCH:
        raise BadMessage("events", f"more than {BATCH} events")
    events = []
    for data in listed:
        try:
            events.append(Event.from_json(data, peer_id))
        except BadMessage:
            continue
    return events, reply["complete"]


def _in_order(events):
    return sorted(events, key=lambda e: (e.time, e.branch, e.n))
