"""Tests for cyme.gather: scatter-gather by ticket, on a fake clock."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.gather import Gathered, Gatherings


class GatheredTests(SynchronousTestCase):
    def test_missing_is_who_neither_replied_nor_failed(self):
        gathered = Gathered(frozenset(["c", "a", "b"]))
        self.assertEqual(gathered.missing, ["a", "b", "c"])
        self.assertFalse(gathered.complete())
        gathered.replies["b"] = 1
        gathered.errors["a"] = ValueError()
        self.assertEqual(gathered.missing, ["c"])
        gathered.replies["c"] = 2
        self.assertEqual(gathered.missing, [])
        self.assertTrue(gathered.complete())

    def test_nobody_expected_is_complete(self):
        self.assertTrue(Gathered(frozenset()).complete())


class GatheringsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.gatherings = Gatherings(self.clock)

    def start(self, expected=("a", "b"), timeout=5.0, **kwargs):
        return self.gatherings.start(expected, timeout, **kwargs)

    def test_fires_once_everyone_answered(self):
        ticket, d = self.start()
        self.assertEqual(len(self.gatherings), 1)
        self.assertIs(self.gatherings.reply(ticket, "a", 1), True)
        self.assertNoResult(d)
        self.assertIs(self.gatherings.error(ticket, "b", "boom"), True)
        gathered = self.successResultOf(d)
        self.assertEqual(gathered.expected, frozenset(["a", "b"]))
        self.assertEqual((gathered.replies, gathered.errors), ({"a": 1}, {"b": "boom"}))
        self.assertTrue(gathered.complete())
        # Nothing left: no ticket, no timer.
        self.assertEqual(len(self.gatherings), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_fires_with_what_arrived(self):
        ticket, d = self.start(timeout=2.0)
        self.gatherings.reply(ticket, "b", "late-ish")
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        gathered = self.successResultOf(d)
        self.assertEqual(gathered.replies, {"b": "late-ish"})
        self.assertEqual(gathered.missing, ["a"])
        self.assertEqual(len(self.gatherings), 0)

    def test_late_reply_is_dropped(self):
        ticket, d = self.start(timeout=1.0)
        self.clock.advance(1.0)
        gathered = self.successResultOf(d)
        self.assertIs(self.gatherings.reply(ticket, "a", 1), False)
        self.assertIs(self.gatherings.error(ticket, "b", "x"), False)
        self.assertEqual((gathered.replies, gathered.errors), ({}, {}))

    def test_unknown_ticket(self):
        self.assertIs(self.gatherings.reply("nope", "a", 1), False)

    def test_reply_from_someone_not_expected_does_not_complete(self):
        ticket, d = self.start(expected=["a"])
        self.gatherings.reply(ticket, "z", 0)
        self.assertNoResult(d)
        self.gatherings.reply(ticket, "a", 1)
        self.assertEqual(self.successResultOf(d).replies, {"z": 0, "a": 1})

    def test_nobody_expected_fires_at_once(self):
        ticket, d = self.start(expected=[])
        self.assertEqual(self.successResultOf(d).replies, {})
        self.assertEqual(len(self.gatherings), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_tickets_are_distinct_and_may_be_given(self):
        first, _ = self.start()
        second, _ = self.start()
        self.assertNotEqual(first, second)
        given, d = self.start(ticket="t1")
        self.assertEqual(given, "t1")
        self.assertRaises(ValueError, self.start, ticket="t1")
        self.gatherings.reply("t1", "a", 1)
        self.gatherings.reply("t1", "b", 2)
        self.assertEqual(self.successResultOf(d).replies, {"a": 1, "b": 2})

    def test_forget(self):
        ticket, d = self.start()
        self.gatherings.forget(ticket)
        self.assertEqual(len(self.gatherings), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Nobody waited: the failure is consumed, not logged as unhandled.
        self.assertIsNone(self.successResultOf(d))
        self.assertIs(self.gatherings.reply(ticket, "a", 1), False)
        self.gatherings.forget(ticket)  # twice is harmless
        self.gatherings.forget("unknown")

    def test_forget_while_someone_waits(self):
        ticket, d = self.start()
        failures = []
        d.addErrback(failures.append)
        self.gatherings.forget(ticket)
        self.assertEqual(len(failures), 1)
        failures[0].trap(defer.CancelledError)

    def test_cancel_forgets_the_ticket(self):
        ticket, d = self.start()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(self.gatherings), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.gatherings.reply(ticket, "a", 1), False)

    def test_cancel_after_the_ticket_reopened_leaves_the_new_one(self):
        ticket, old = self.start(ticket="t", expected=[])
        self.successResultOf(old)
        _, new = self.start(ticket="t")
        old.cancel()  # fired already: nothing happens
        self.assertEqual(len(self.gatherings), 1)
        self.gatherings.reply("t", "a", 1)
        self.gatherings.reply("t", "b", 2)
        self.assertTrue(self.successResultOf(new).complete())

    def test_finish_all(self):
        first, d1 = self.start()
        second, d2 = self.start(expected=["c"])
        self.gatherings.reply(first, "a", 1)
        self.gatherings.finish_all()
        self.assertEqual(self.successResultOf(d1).replies, {"a": 1})
        self.assertEqual(self.successResultOf(d2).missing, ["c"])
        self.assertEqual(len(self.gatherings), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.gatherings.finish_all()  # none open: nothing to do
