"""Rounds: concurrent requests for the same answer share one broadcast.

A listing of instances asks every branch; under load, many clients ask for
the same listing at once.  A request joins the next round, never one
already under way, so that its answer still reflects every change made
before it arrived; one broadcast per round trip serves every client that
waited meanwhile.
"""

from twisted.internet import defer
from twisted.python.failure import Failure


class Rounds:
    """C{request(key)} runs C{await run(key)} in rounds, one at a time per key."""

    def __init__(self, run):
        self._run = run
        self._running = set()
        self._next = {}

    def request(self, key):
        """A Deferred of the result of a round started after this call."""
        d = defer.Deferred()
        if key in self._running:
            self._next.setdefault(key, []).append(d)
        else:
            self._start(key, [d])
        return d

    def _start(self, key, waiters):
        self._running.add(key)
        round_ = defer.ensureDeferred(self._run(key))

        def done(result):
            self._running.discard(key)
            following = self._next.pop(key, None)
            if following:
                self._start(key, following)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        round_.addBoth(done)
