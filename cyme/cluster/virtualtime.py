"""A virtual clock for many branches in one process: L{VirtualClock}.

L{twisted.internet.task.Clock} keeps its calls in a list sorted on every
C{callLater}: fine for a test of three branches, quadratic for a simulated
cluster of hundreds, where every broadcast schedules a delivery per
branch.  This clock keeps them in a heap (a cancelled or moved call stays
there until its turn and is skipped), with the same C{advance},
C{seconds}, C{callLater} and C{getDelayedCalls}.
"""

import heapq
import itertools

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer


@implementer(IReactorTime)
class VirtualClock:
    """Time that moves only when told to (C{advance}), calls kept in a heap."""

    def __init__(self, start=0.0):
        self.now = start
        self._heap = []
        self._order = itertools.count()
        self._pending = 0

    def seconds(self):
        return self.now

    def _push(self, call):
        heapq.heappush(self._heap, (call.getTime(), next(self._order), call))

    def _cancelled(self, call):
        self._pending -= 1

    def _moved(self, call):
        self._push(call)

    def callLater(self, delay, f, *args, **kw):
        call = DelayedCall(self.now + delay, f, args, kw, self._cancelled, self._moved,
                           seconds=self.seconds)
        self._pending += 1
        self._push(call)
        return call

    def getDelayedCalls(self):
        return [c for _, _, c in self._heap if c.active()]

    def pending(self):
        """How many calls are scheduled (cancelled ones not counted)."""
        return self._pending

    def next_time(self):
        """When the next live call is due, or None."""
        self._skip_dead()
        return self._heap[0][0] if self._heap else None

    def _skip_dead(self):
        heap = self._heap
        while heap:
            when, _, call = heap[0]
            if call.active() and call.time == when:
                if not call.delayed_time:
                    return
                # Reset to later (DelayedCall.reset): in the heap again at its new time.
                heapq.heappop(heap)
                call.time, call.delayed_time = call.time + call.delayed_time, 0
                self._push(call)
                continue
            heapq.heappop(heap)

    def advance(self, amount):
        """Move time on by C{amount} seconds, running every call due meanwhile."""
        until = self.now + amount
        heap = self._heap
        while True:
            self._skip_dead()
            if not heap or heap[0][0] > until:
                break
            when, _, call = heapq.heappop(heap)
            self.now = max(self.now, when)
            self._pending -= 1
            call.called = 1
            call.func(*call.args, **call.kw)
        self.now = until

    def run_until(self, when):
        self.advance(max(0.0, when - self.now))
