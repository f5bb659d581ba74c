"""Pinging workers: the rounds of a tick and the start-up poll, on a Clock
and the fake remote control.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from cyme.supervision.fakes import FakeControl
from cyme.supervision.liveness import StartupPoll, ping_delays, ping_rounds
from cyme.supervision.workerstate import Worker


class Starting:
    """What the poll knows of a starting worker: its record."""

    def __init__(self, node, started_at):
        self.worker = Worker(node.split("@")[0], node, "/nowhere", started_at=started_at)


class PingRoundTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.control = FakeControl(self.clock)
        self.answered = []

    def round(self, nodes, round_trip=None):
        watched = {node: f"life of {node}" for node in nodes}
        return defer.ensureDeferred(ping_rounds(
            self.control, watched, ping_delays(0.1, 0.4), self.answered.append, Logger(),
            clock=self.clock, round_trip=round_trip,
        ))

    def test_all_answer_one_message(self):
        self.control.up("a@h")
        self.control.up("b@h")
        self.assertEqual(self.successResultOf(self.round(["a@h", "b@h"])), {"a@h", "b@h"})
        self.assertEqual(len(self.control.messages("ping")), 1)
        self.assertEqual(sorted(self.answered), ["life of a@h", "life of b@h"])

    def test_the_silent_are_asked_again_with_longer_timeouts(self):
        self.control.up("a@h")
        d = self.round(["a@h", "b@h"])
        self.clock.advance(0.05)
        self.control.up("b@h")  # up during the round: the next ping finds it
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), {"a@h", "b@h"})
        self.assertEqual(
            [m[1] for m in self.control.messages("ping")], [["a@h", "b@h"], ["b@h"]]
        )

    def test_a_round_nobody_answers_ends_after_its_last_timeout(self):
        d = self.round(["a@h"])
        self.clock.pump([0.1, 0.2, 0.39])
        self.assertNoResult(d)
        self.clock.advance(0.02)
        self.assertEqual(self.successResultOf(d), set())
        self.assertEqual(len(self.control.messages("ping")), 3)

    def test_the_round_trip_of_a_ping_all_answered(self):
        self.control.latency = 0.008
        self.control.up("a@h")
        self.control.up("b@h")
        trips = []
        d = self.round(["a@h", "b@h"], trips.append)
        self.clock.advance(0.008)
        self.assertEqual(self.successResultOf(d), {"a@h", "b@h"})
        self.assertEqual(trips, [0.008])

    def test_a_ping_someone_missed_is_no_round_trip(self):
        # The first ping's 0.1 s are its timeout, not anybody's round trip:
        # only the second, which b answered in 5 ms, is one.
        self.control.latency = 0.005
        self.control.up("a@h")
        trips = []
        d = self.round(["a@h", "b@h"], trips.append)
        self.clock.advance(0.05)
        self.control.up("b@h")
        self.clock.pump([0.05, 0.005])
        self.assertEqual(self.successResultOf(d), {"a@h", "b@h"})
        self.assertEqual(len(self.control.messages("ping")), 2)
        self.assertEqual([round(t, 6) for t in trips], [0.005])

    def test_no_ping_while_the_broker_is_away(self):
        self.control.set_connected(False)
        self.assertEqual(self.successResultOf(self.round(["a@h"])), set())
        self.assertEqual(self.control.messages("ping"), [])


class StartupPollTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.control = FakeControl(self.clock)
        self.starting = {}
        self.answered = []
        self.failures = []
        self.poll = StartupPoll(
            self.clock, self.control, lambda: dict(self.starting),
            self.answered.append, lambda f, what: self.failures.append(f),
        )
        self.poll.start()

    def pings(self):
        return len(self.control.messages("ping"))

    def test_young_workers_are_pinged_every_20_ms(self):
        self.starting["a@h"] = Starting("a@h", 0.0)
        self.poll.poll()
        self.clock.advance(0.02)
        self.assertEqual(self.pings(), 1)
        self.clock.advance(0.02)
        self.assertEqual(self.pings(), 2)
        self.control.up("a@h")
        self.clock.advance(0.02)
        self.assertEqual(self.answered, [self.starting["a@h"]])

    def test_older_ones_every_200_ms(self):
        self.clock.advance(5)
        self.starting["a@h"] = Starting("a@h", 1.0)
        self.poll.poll()
        self.clock.advance(0.02)
        self.assertEqual(self.pings(), 1)
        self.clock.advance(0.19)
        self.assertEqual(self.pings(), 1)
        self.clock.advance(0.01)
        self.assertEqual(self.pings(), 2)

    def test_polls_once_however_often_asked_and_ends_with_the_starting(self):
        self.starting["a@h"] = Starting("a@h", 0.0)
        self.poll.poll()
        self.poll.poll()
        self.clock.advance(0.02)
        self.assertEqual(self.pings(), 1)
        del self.starting["a@h"]
        self.clock.advance(1)
        self.assertEqual(self.pings(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_the_next_poll_and_the_pings_in_flight(self):
        self.starting["a@h"] = Starting("a@h", 0.0)
        self.poll.poll()
        self.clock.advance(0.02)
        self.poll.stop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        self.poll.poll()
        self.clock.advance(1)
        self.assertEqual(self.pings(), 1)
        # The ping in flight was cancelled, and said so to whoever logs.
        self.assertEqual([f.type for f in self.failures], [defer.CancelledError])

    def test_many_workers_are_pinged_less_often(self):
        """
        Every worker gets every ping: with 50 on the broker, pinging every
        20 ms would cost them more than their start; every 100 ms then.
        """
        receivers = [50]
        poll = StartupPoll(self.clock, self.control, lambda: dict(self.starting),
                           self.answered.append, None, lambda: receivers[0])
        poll.start()
        for n in range(50):
            self.starting[f"w{n}@h"] = Starting(f"w{n}@h", 0.0)
        poll.poll()
        self.clock.pump([0.005] * 60)  # 0.3 s
        self.assertEqual(self.pings(), 3)  # at 0.02, 0.12 and 0.22 s
        # Fewer on the broker: the 20 ms of a lone start again (after the
        # ping already planned, at 0.32 s).
        receivers[0] = 1
        self.clock.pump([0.005] * 22)  # 0.41 s
        self.assertEqual(self.pings(), 3 + 5)
        poll.stop()

    def test_nothing_before_start(self):
        poll = StartupPoll(self.clock, self.control, lambda: {}, None, None)
        poll.poll()
        self.assertEqual(self.clock.getDelayedCalls(), [])
