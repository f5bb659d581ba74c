"""Tests for cyme.listeners: every listener called, failures logged, never raised."""

from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme.listeners import Listeners


class ListenersTests(SynchronousTestCase):
    def setUp(self):
        self.listeners = Listeners("thing")
        self.calls = []

    def recorder(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def test_called_in_order_with_the_arguments(self):
        self.listeners.add(self.recorder("a"))
        self.listeners.add(self.recorder("b"))
        self.assertEqual(len(self.listeners), 2)
        self.listeners.notify(1, key="x")
        self.assertEqual(self.calls, [("a", (1,), {"key": "x"}), ("b", (1,), {"key": "x"})])

    def test_none_to_notify(self):
        self.listeners.notify("nobody listens")
        self.assertEqual(len(self.listeners), 0)

    def test_a_failure_is_logged_and_the_others_still_called(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken(*args):
            raise RuntimeError("bug")

        self.listeners.add(broken)
        self.listeners.add(self.recorder("after"))
        self.listeners.notify("event")
        self.assertEqual(self.calls, [("after", ("event",), {})])
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["what"], "thing")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_remove(self):
        a, b = self.recorder("a"), self.recorder("b")
        self.listeners.add(a)
        self.listeners.add(b)
        self.listeners.remove(a)
        self.listeners.remove(a)  # not there any more: nothing
        self.listeners.notify()
        self.assertEqual(self.calls, [("b", (), {})])

    def test_a_listener_may_remove_itself_while_notified(self):
        def once(*args):
            self.calls.append("once")
            self.listeners.remove(once)

        self.listeners.add(once)
        self.listeners.add(self.recorder("always"))
        self.listeners.notify()
        self.listeners.notify()
        self.assertEqual(self.calls, ["once", ("always", (), {}), ("always", (), {})])

    def test_a_listener_added_while_notifying_waits_for_the_next_event(self):
        def adder(*args):
            self.listeners.add(self.recorder("new"))

        self.listeners.add(adder)
        self.listeners.notify(1)
        self.assertEqual(self.calls, [])
        self.listeners.remove(adder)
        self.listeners.notify(2)
        self.assertEqual(self.calls, [("new", (2,), {})])


class DeferredListenerTests(SynchronousTestCase):
    def test_a_failing_deferred_of_a_listener_is_logged(self):
        from twisted.internet import defer

        events = []
        listeners = Listeners("thing")
        self.patch(Listeners, "log", Logger(observer=events.append))
        listeners.add(lambda: defer.fail(ValueError("later")))
        listeners.notify()
        [event] = events
        self.assertIsInstance(event["log_failure"].value, ValueError)
        self.assertEqual(event["what"], "thing")
