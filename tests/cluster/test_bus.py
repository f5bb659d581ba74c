"""The bus on its own, over the memory network: registered methods, calls
and broadcasts gathered by ticket, timeouts, peer events and beats."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.bus import Bus, RemoteError
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.presence import PROTOCOL_VERSION
from cyme.cluster.seal import OpenSeal
from cyme.errors import GatewayTimeout, NotFound
from tests.cluster import KEY, new_key, seal


def describe(branch_id, instances=None):
    instances = [] if instances is None else instances

    def contents():
        return {"url": f"http://{branch_id}/", "instances": list(instances), "load": {},
                "digest": "d"}
    return contents


class BusTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.network = MemoryBusNetwork(self.clock)
        self.buses = {}
        self.instances = []  # b1's
        for branch_id in ("b1", "b2"):
            bus = Bus(self.network.transport(branch_id), branch_id, self.clock,
                      describe(branch_id, self.instances if branch_id == "b1" else None),
                      seal=OpenSeal())
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
        # Online, then heard from again (its probes) and online still.
        self.assertEqual(set(seen), {("b2", True)})
        heard = len(seen)
        self.buses["b2"].stopService()
        self.settle()
        self.assertEqual(seen[-1], ("b2", False))
        self.assertEqual(bus.live_ids(), ["b1"])
        self.assertEqual(bus.peer("b2").url, "http://b2/")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), heard + 1)

    def test_many_changes_make_one_beat_and_no_change_none(self):
        self.network.sent.clear()
        bus = self.buses["b1"]
        # Called as a store listener: whatever the event, nothing if what
        # others know of this branch did not change...
        bus.announce_soon()
        bus.announce_soon("app.put")
        self.settle()
        self.assertEqual(self.network.sent, [])
        # ... and one beat for many changes.
        self.instances.append(["foo", "w1"])
        bus.announce_soon()
        bus.announce_soon("instance.put")
        self.settle()
        self.assertEqual(self.network.sent, [("b1", "beat", None)])
        self.assertEqual(self.buses["b2"].peer("b1").instances, [["foo", "w1"]])


class BadMessageTests(BusTestCase):
    def test_a_bad_message_is_dropped_counted_and_logged_by_name_not_by_contents(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # A reply whose ticket cannot be looked up, carrying an app's broker.
        self.network.deliver("b2", ["b1"], json.dumps({
            "v": PROTOCOL_VERSION, "from": "b2", "type": "reply",
            "ticket": ["not", "hashable"],
            "result": {"broker": "amqp://u:s3cret@mq:5672//"},
        }).encode())
        self.settle()
        lines = "\n".join(formatEvent(e) for e in events)
        self.assertIn("dropped an invalid bus message from b2 (reply): ticket must be", lines)
        self.assertNotIn("s3cret", lines)
        self.assertEqual(self.buses["b1"].figures()["dropped"]["invalid"], 1)
        self.assertEqual(self.flushLoggedErrors(), [])


class SealedBusTestCase(SynchronousTestCase):
    """b1 and b2 sealed with the same key, b3 with another, on one network."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.network = MemoryBusNetwork(self.clock)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.handled = []
        self.buses = {}
        for branch_id, key in (("b1", KEY), ("b2", KEY), ("b3", new_key())):
            bus = Bus(self.network.transport(branch_id), branch_id, self.clock,
                      describe(branch_id), seal=seal(self.clock, key))
            bus.register({"echo": lambda args, sender, me=branch_id: {"me": me, **args},
                          "write": lambda args, sender: self.handled.append(args)})
            self.buses[branch_id] = bus
            bus.startService()
            self.addCleanup(bus.stopService)
        self.beat()

    def beat(self, seconds=2.0):
        self.clock.advance(seconds)
        for _ in range(50):
            self.clock.advance(0)

    def call(self, caller, *args):
        d = defer.ensureDeferred(self.buses[caller].call(*args))
        for _ in range(50):
            self.clock.advance(0)
        return d

    def call_all(self, caller, *args):
        d = defer.ensureDeferred(self.buses[caller].broadcast(*args, 1.0))
        self.beat(0)
        return d

    def dropped(self, branch_id="b1"):
        return {k: v for k, v in self.buses[branch_id].figures()["dropped"].items() if v}

    def lines(self):
        return [formatEvent(e) for e in self.events if e.get("reason")]

    def inject(self, body, to="b1"):
        """C{body} published straight to C{to}'s queue, as anyone on the broker could."""
        self.network.transports[to].receive(body)
        for _ in range(50):
            self.clock.advance(0)

    def write_request(self):
        """A sealed request to run "write" on b1, as b2 sends it."""
        self.network.bodies.clear()
        self.call("b2", "b1", "write", {"x": 1}, 1.0)
        return self.network.bodies[0]

    def keyed_branch(self, branch_id):
        """Another branch with the cluster key, started, heard by the others."""
        bus = Bus(self.network.transport(branch_id), branch_id, self.clock,
                  describe(branch_id), seal=seal(self.clock))
        bus.register({"write": lambda args, sender: self.handled.append((branch_id, args))})
        bus.startService()
        self.addCleanup(bus.stopService)
        self.buses[branch_id] = bus
        self.beat()
        return bus


class SealedBusTests(SealedBusTestCase):
    def test_branches_with_the_key_see_and_call_each_other(self):
        self.assertEqual(self.buses["b1"].live_ids(), ["b1", "b2"])
        result = self.successResultOf(self.call("b1", "b2", "echo", {"x": 1}, 1.0))
        self.assertEqual(result, {"me": "b2", "x": 1})
        self.assertTrue(self.buses["b1"].figures()["sealed"])
        # Every body that crossed the network was sealed.
        self.assertEqual({kind for _, kind, _ in self.network.sent}, {"sealed"})

    def test_a_branch_with_another_key_stays_apart(self):
        self.assertEqual(self.buses["b3"].live_ids(), ["b3"])
        self.assertNotIn("b3", self.buses["b1"].live_ids())
        self.assertGreater(self.dropped("b1")["unopened"], 0)
        self.assertGreater(self.dropped("b3")["unopened"], 0)
        d = self.call("b3", "b1", "write", {"x": 1}, 1.0)
        self.clock.advance(1.0)
        self.assertIsInstance(self.failureResultOf(d).value, GatewayTimeout)
        self.assertEqual(self.handled, [])

    def test_forged_tampered_replayed_expired_and_unsealed_change_nothing(self):
        body = self.write_request()
        self.assertEqual(self.handled, [{"x": 1}])
        token = json.loads(body)["sealed"]
        tampered = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
        attacks = {
            "unopened": [json.dumps({"v": 2, "sealed": tampered}).encode(),
                         seal(self.clock, new_key()).close(
                             {"v": 2, "type": "request", "from": "b2", "ticket": "t",
                              "method": "write", "args": {"x": 2}})],
            "unsealed": [json.dumps({"v": 2, "type": "request", "from": "b2", "ticket": "t",
                                     "method": "write", "args": {"x": 3}}).encode()],
            "replayed": [body],
            "undecodable": [b"\x00garbage"],
        }
        for bodies in attacks.values():
            for attack in bodies:
                self.inject(attack)
        self.assertEqual(self.handled, [{"x": 1}])
        # A sealed request kept for later, past the window.
        late = self.write_request()
        self.handled.clear()
        self.clock.advance(61)
        self.inject(late)
        self.assertEqual(self.handled, [])
        dropped = self.dropped()
        for reason, bodies in attacks.items():
            self.assertGreaterEqual(dropped[reason], len(bodies), reason)
        self.assertEqual(dropped["expired"], 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_drops_are_logged_at_most_once_a_minute_per_reason(self):
        for _ in range(5):
            self.inject(b'{"v": 1, "type": "beat", "from": "old"}')
        lines = [line for line in self.lines() if "unsealed" in line]
        self.assertEqual(len(lines), 1)
        self.assertIn("claims to come from branch old, bus protocol 1", lines[0])
        self.clock.advance(60)
        self.inject(b'{"v": 1, "type": "beat", "from": "old"}')
        lines = [line for line in self.lines() if "unsealed" in line]
        self.assertEqual(len(lines), 2)
        self.assertIn("(4 more since the last such line)", lines[1])
        self.assertEqual(self.dropped()["unsealed"], 6)

    def test_a_key_rotates_without_a_branch_losing_another(self):
        """
        Every branch accepts the new key, then every branch seals with it
        (the old one still accepted), then the old one goes: at each step,
        one branch after the other, b1 and b2 still call each other.
        """
        new = new_key("new.key")
        steps = [[KEY, new], [new, KEY], [new]]
        for keys in steps:
            for branch_id in ("b1", "b2"):
                bus = self.buses[branch_id]
                self.successResultOf(bus.stopService())
                bus = Bus(self.network.transport(branch_id), branch_id, self.clock,
                          describe(branch_id), seal=seal(self.clock, *keys))
                bus.register({"echo": lambda args, sender, me=branch_id: {"me": me}})
                bus.startService()
                self.addCleanup(bus.stopService)
                self.buses[branch_id] = bus
                self.beat()
                for caller, callee in (("b1", "b2"), ("b2", "b1")):
                    result = self.call(caller, callee, "echo", {}, 1.0)
                    self.assertEqual(self.successResultOf(result), {"me": callee})

    def test_a_branch_of_another_protocol_is_said_and_left_alone(self):
        other = self.buses["b2"].seal.close({
            "v": 4, "type": "beat", "from": "b9", "version": "9.0", "hello": True,
            "url": "javascript:x", "instances": "anything"})
        self.network.bodies.clear()
        self.inject(other)
        self.inject(self.buses["b2"].seal.close({
            "v": 4, "type": "request", "from": "b9", "ticket": "t", "method": "write"}))
        self.assertEqual(self.handled, [])
        figures = self.buses["b1"].figures()
        self.assertEqual(figures["other_versions"],
                         [{"id": "b9", "version": "9.0", "protocol": 4, "online": True}])
        self.assertEqual(self.buses["b1"].live_ids(), ["b1", "b2"])
        lines = [formatEvent(e) for e in self.events if e.get("peer") == "b9"]
        self.assertEqual(len(lines), 1)
        self.assertIn("branch b9 speaks bus protocol 4 (cyme 9.0), this one 3", lines[0])
        # No hello answered: the one body b1 sent is its error reply to the request.
        self.assertEqual(len(self.network.bodies), 1)
        reply = self.buses["b2"].seal.open(self.network.bodies[0])
        self.assertEqual((reply["type"], reply["status"]), ("reply", 400))


class StartTests(SynchronousTestCase):
    def started(self, bus_seal):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        bus = Bus(MemoryBusNetwork(clock).transport("b1"), "b1", clock, describe("b1"),
                  seal=bus_seal)
        bus.startService()
        self.addCleanup(bus.stopService)
        return [e for e in events if e.get("log_namespace", "").startswith("cyme.cluster.bus")]

    def test_an_open_bus_warns_at_start(self):
        [event] = self.started(OpenSeal())
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("the bus is OPEN (--insecure-open-bus)", formatEvent(event))
        self.assertFalse(OpenSeal().sealed)

    def test_a_sealed_bus_names_its_key_file_not_its_key(self):
        [event] = self.started(seal(Clock()))
        self.assertEqual(formatEvent(event), "bus sealed with the cluster key in test.key")
        self.assertNotIn(KEY.secret.decode(), repr(event))
