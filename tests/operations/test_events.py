"""A branch's event log: ids that keep growing, a ring that says what it no
longer holds, and events from other branches checked as data."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.messages import BadMessage
from cyme.errors import BadRequest
from cyme.operations.events import Event, EventBuffer, EventLog, parse_id, parse_ids, short


class EventLogTests(SynchronousTestCase):
    def test_events_are_numbered_timed_and_told(self):
        clock = Clock()
        clock.advance(5)
        log = EventLog("b1", clock)
        heard = []
        log.subscribe(heard.append)
        first = log.record("created", "foo", "w1", "consumes tasks")
        clock.advance(1)
        second = log.record("ready", "foo", "w1", "pid 12 answered ping")
        self.assertEqual(heard, [first, second])
        self.assertEqual(first.id, "b1:5000")
        self.assertEqual(second.id, "b1:5001")
        self.assertEqual(second.to_json(), {
            "id": "b1:5001", "time": 6.0, "branch": "b1", "type": "ready", "app": "foo",
            "instance": "w1", "reason": "pid 12 answered ping", "peer": None})

    def test_ids_of_a_later_run_are_greater(self):
        # A restart starts from the clock's milliseconds: an id of the run
        # before is never taken for one of this run.
        clock = Clock()
        clock.advance(100)
        before = EventLog("b1", clock)
        for _ in range(50):
            old = before.record("started")
        clock.advance(1)
        after = EventLog("b1", clock)
        self.assertGreater(after.record("started").n, old.n)
        self.assertEqual(after.buffer.since(old.n), ([], False))

    def test_reasons_are_one_bounded_line(self):
        log = EventLog("b1", Clock())
        event = log.record("failed", reason="line one\nline\x1b[31m two\t" + "x" * 900)
        self.assertNotIn("\n", event.reason)
        self.assertLessEqual(len(event.reason), 500)
        self.assertTrue(event.reason.startswith("line one line[31m two x"), event.reason)
        self.assertIsNone(short(None))

    def test_the_ring_keeps_the_last_and_says_what_is_lost(self):
        log = EventLog("b1", Clock(), size=3)
        events = [log.record("started") for _ in range(5)]
        self.assertEqual(len(log.buffer), 3)
        # After the 2nd: the 3rd, 4th and 5th are held.
        self.assertEqual(log.buffer.since(events[1].n), (events[2:], True))
        self.assertEqual(log.buffer.since(events[4].n), ([], True))
        # After the 1st: the 2nd is gone.
        self.assertEqual(log.buffer.since(events[0].n), ([], False))
        # An id from the future (another run, or made up).
        self.assertEqual(log.buffer.since(events[4].n + 1), ([], False))
        self.assertEqual(log.buffer.get(events[3].n), events[3])
        self.assertIsNone(log.buffer.get(events[0].n))

    def test_what_other_branches_are_given(self):
        log = EventLog("b1", Clock(), size=10)
        events = [log.record("started") for _ in range(6)]
        self.assertEqual(log.since(None, 2), (events[-2:], True))
        self.assertEqual(log.since(events[1].n, 3), (events[2:5], True))
        log = EventLog("b1", Clock(), size=2)
        events = [log.record("started") for _ in range(6)]
        self.assertEqual(log.since(events[0].n, 10), (events[-2:], False))

    def test_a_buffer_that_knows_nothing_holds_nothing(self):
        self.assertEqual(EventBuffer().since(0), ([], False))


class CheckedTests(SynchronousTestCase):
    def good(self, **changes):
        data = {"id": "b2:7", "time": 3.5, "branch": "b2", "type": "ready", "app": "foo",
                "instance": "w1", "reason": "pid 1 answered ping", "peer": None}
        data.update(changes)
        return data

    def test_an_event_from_its_own_branch(self):
        event = Event.from_json(self.good(), "b2")
        self.assertEqual((event.branch, event.n, event.type, event.instance),
                         ("b2", 7, "ready", "w1"))
        self.assertEqual(event.to_json(), self.good())

    def test_what_no_event_may_be(self):
        for bad in [
            self.good(id="b3:7"),  # another branch's, as if its own
            self.good(id="b2"), self.good(id="b2:-1"), self.good(id="../x:1"),
            self.good(type="rm -rf"), self.good(type="reset"),
            self.good(time="soon"), self.good(time=float("nan")),
            self.good(instance="../../etc"), self.good(app=5),
            self.good(reason="a\nb"), self.good(reason="x" * 501),
            [], "event",
        ]:
            self.assertRaises(BadMessage, Event.from_json, bad, "b2")

    def test_ids_a_client_resumes_from(self):
        self.assertEqual(parse_id("b1:12"), ("b1", 12))
        self.assertEqual(parse_ids("b1:12, b2:40,,"), [("b1", 12), ("b2", 40)])
        self.assertEqual(parse_ids("b1:12,b1:14"), [("b1", 14)])
        for bad in ["12", "b1:", "b1:x", ":3", "b/1:3", "b1:٣", "b1:" + "9" * 19,
                    ",".join(f"b{i}:1" for i in range(65)), "b1:1," * 2000]:
            self.assertRaises(BadRequest, parse_ids, bad)
