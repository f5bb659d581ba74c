"""The bus on its own, over the memory network: registered methods, calls
and broadcasts gathered by ticket, timeouts, peer events and beats."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.bus import Bus, RemoteError
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.errors import GatewayTimeout, NotFound


def describe(branch_id):
    def contents():
        return {"url": f"http://{branch_id}/", "instances": [], "load": {}, "digest": "d"}
    return contents


class BusTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.network = MemoryBusNetwork(self.clock)
        self.buses = {}
        for branch_id in ("b1", "b2"):
            bus = Bus(self.network.transport(branch_id), branch_id, self.clock,
                      describe(branch_id), seal=OpenSeal())
            bus.register({
                "echo": lambda args, sender, me=branch_id: {"me": me, "from": sender, **args},
                "missing": self.not_found,
            })
            self.buses[branch_id] = bus
        for bus in self.buses.values():
            bus.startService()
            self.addCleanup(bus.stopService)
        self.settle()

    def not_found(self, args, sender):
        raise NotFound("thing", "x")

    def settle(self):
        for _ in range(50):
            self.clock.advance(0)
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                return

    def call(self, *args):
        d = defer.ensureDeferred(self.buses["b1"].call(*args))
        self.settle()
        return d


class RegisterTests(BusTestCase):
    def test_a_method_registered_twice_is_refused(self):
        bus = self.buses["b1"]
        self.assertRaises(ValueError, bus.register, {"echo": lambda a, s: None})
        bus.register({"other": lambda a, s: "ok"})
        self.assertEqual(self.successResultOf(self.call("b2", "echo", {}, 1.0))["me"], "b2")


class CallTests(BusTestCase):
    def test_call_another_branch(self):
        result = self.successResultOf(self.call("b2", "echo", {"x": 1}, 1.0))
        self.assertEqual(result, {"me": "b2", "from": "b1", "x": 1})

    def test_call_this_branch_does_not_touch_the_network(self):
        self.network.sent.clear()
        result = self.successResultOf(self.call("b1", "echo", {}, 1.0))
        self.assertEqual(result, {"me": "b1", "from": "b1"})
        self.assertEqual(self.network.sent, [])

    def test_error_comes_back_with_its_status_and_body(self):
        failure = self.failureResultOf(self.call("b2", "missing", {}, 1.0), RemoteError)
        self.assertEqual(failure.value.status, 404)
        self.assertEqual(failure.value.body["name"], "x")

    def test_silent_branch_is_a_gateway_timeout_and_its_late_reply_is_dropped(self):
        self.network.partition("b2")
        d = self.call("b2", "echo", {}, 1.0)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertIsInstance(self.failureResultOf(d).value, GatewayTimeout)
        # A reply to a ticket nobody waits for any more: nothing happens.
        self.network.transports["b1"].receive(
            b'{"v": 2, "type": "reply", "from": "b2", "ticket": "gone", "result": 1}'
        )

    def test_broadcast_names_who_did_not_answer(self):
        d = defer.ensureDeferred(self.buses["b1"].broadcast("echo", {}, 1.0))
        self.settle()
        results, errors, missing = self.successResultOf(d)
        self.assertEqual(sorted(results), ["b1", "b2"])
        self.assertEqual((errors, missing), ({}, []))
        self.network.partition("b2")
        d = defer.ensureDeferred(self.buses["b1"].broadcast("missing", {}, 1.0))
        self.settle()
        self.clock.advance(1.0)
        results, errors, missing = self.successResultOf(d)
        self.assertEqual((results, sorted(errors), missing), ({}, ["b1"], ["b2"]))

    def test_stopping_finishes_the_calls_in_flight(self):
        self.network.partition("b2")
        d = self.call("b2", "echo", {}, 30.0)
        self.assertNoResult(d)
        self.buses["b1"].stopService()
        self.assertIsInstance(self.failureResultOf(d).value, GatewayTimeout)


class PresenceEventTests(BusTestCase):
    def test_peer_events_reach_every_subscriber_even_after_one_fails(self):
        seen = []

        def broken(peer):
            raise RuntimeError("listener bug")

        bus = self.buses["b1"]
        bus.subscribe(broken)
        bus.subscribe(lambda peer: seen.append((peer.id, peer.online)))
        self.clock.advance(2.0)
        self.settle()
        self.assertEqual(seen, [("b2", True)])
        self.buses["b2"].stopService()
        self.settle()
        self.assertEqual(seen[-1], ("b2", False))
        self.assertEqual(bus.live_ids(), ["b1"])
        self.assertEqual(bus.peer("b2").url, "http://b2/")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_many_changes_make_one_beat(self):
        self.network.sent.clear()
        bus = self.buses["b1"]
        # Called as a store listener: whatever the event, one beat.
        bus.announce_soon()
        bus.announce_soon("instance.put")
        self.settle()
        self.assertEqual(self.network.sent, [("b1", "beat", None)])


class BadMessageTests(BusTestCase):
    def test_a_bad_message_is_dropped_counted_and_logged_by_name_not_by_contents(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # A reply whose ticket cannot be looked up, carrying an app's broker.
        self.network.deliver("b2", ["b1"], json.dumps({
            "v": 2, "from": "b2", "type": "reply", "ticket": ["not", "hashable"],
            "result": {"broker": "amqp://u:s3cret@mq:5672//"},
        }).encode())
        self.settle()
        lines = "\n".join(formatEvent(e) for e in events)
        self.assertIn("dropped an invalid bus message from b2 (reply): ticket must be", lines)
        self.assertNotIn("s3cret", lines)
        self.assertEqual(self.buses["b1"].figures()["dropped"]["invalid"], 1)
        self.assertEqual(self.flushLoggedErrors(), [])
