"""Liveness: pinging the workers, in rounds and while they start.

A round asks every watched worker with one ping message, then asks those
that did not answer again with a longer timeout (0.1 s doubling to a cap):
a worker busy for a moment answers a later ping of the same round, and a
round costs one message when all are well.  While workers start, a
L{StartupPoll} pings them every 20 ms so that one is known up (and the
instance's create answered) as soon as it listens.
"""

from twisted.internet import defer


def ping_delays(first=0.1, cap=1.6):
    """The ping timeouts of one liveness round: 0.1, 0.2, … up to C{cap}."""
    delay = first
    while delay <= cap:
        yield delay
        delay *= 2


async def ping_rounds(control, watched, delays, answered, log, clock=None, round_trip=None):
    """
    Ping the nodes of C{watched} (C{{node: lifecycle}}), each of C{delays}
    a timeout for those still silent; C{answered(lifecycle)} for each that
    answers, and the set of the nodes that did.

    C{round_trip(seconds)}, with a C{clock}, for each ping that every node
    it asked answered: the time to the last answer (one ping asks them all,
    so one worker's own round trip is not seen; a ping some did not answer
    lasted its timeout, no round trip at all).
    """
    pongs = set()
    waiting = dict(watched)
    for timeout in delays:
        # A broker lost during the round: its nodes are not asked again.
        waiting = {n: life for n, life in waiting.items() if control.reachable(n)}
        if not waiting:
            break
        sent = clock.seconds() if clock is not None else None
        try:
            replies = await control.ping(sorted(waiting), timeout)
        except defer.CancelledError:
            raise
        except Exception:
            log.failure("ping failed")
            break
        if round_trip is not None and sent is not None and waiting.keys() <= replies.keys():
            round_trip(max(0.0, clock.seconds() - sent))
        for node in replies:
            if node in waiting:
                pongs.add(node)
                answered(waiting.pop(node))
    return pongs


class StartupPoll:
    """
    While workers start, ping them every 20 ms, not once a tick.

    The pings overlap: one sent before a worker listens is lost, and the
    next must not wait for its timeout.  After a worker's first two
    seconds (a loaded machine), every 200 ms with longer timeouts.
    C{starting()} gives C{{node: lifecycle}} of the workers starting now;
    C{answered(lifecycle)} is called for each that answers.

    Every worker on the broker gets each ping (Celery's remote control is
    a fanout) and spends a quarter of a millisecond dropping one meant
    for others: with C{receivers()} workers (say 50, started at once),
    pings every 20 ms would cost more CPU than the workers' own start.
    The pings are spaced by C{per_receiver} s for each receiver at least.
    """

    def __init__(self, clock, control, starting, answered, failed, receivers=lambda: 1,
                 per_receiver=0.002):
        self._clock = clock
        self._control = control
        self._starting = starting
        self._answered = answered
        self._failed = failed
        self._receivers = receivers
        self._per_receiver = per_receiver
        self._call = None
        self._pings = set()
        self._running = False

    def start(self):
        """Poll from now on, when asked."""
        self._running = True

    def poll(self, delay=0.02):
        """Ping the starting workers soon (once, however often asked)."""
        if not self._running or (self._call is not None and self._call.active()):
            return
        self._call = self._clock.callLater(delay, self._once)

    def stop(self):
        """No more pings; those in flight are cancelled."""
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        for d in list(self._pings):
            d.cancel()

    def _once(self):
        self._call = None
        starting = {
            n: life for n, life in self._starting().items() if self._control.reachable(n)
        }
        if not starting:
            return
        now = self._clock.seconds()
        young = min(
            now - (life.worker.started_at or now) for life in starting.values()
        ) < 2.0
        d = self._control.ping(sorted(starting), 0.2 if young else 0.5)
        self._pings.add(d)
        d.addCallback(self._replies, starting)
        d.addErrback(self._failed, "start-up ping")
        d.addBoth(self._done, d)
        self.poll(max(0.02 if young else 0.2, self._per_receiver * self._receivers()))

    def _replies(self, replies, starting):
        for node in replies:
            if node in starting:
                self._answered(starting[node])

    def _done(self, _, d):
        self._pings.discard(d)
