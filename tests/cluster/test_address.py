"""Who a bus envelope is for (L{cyme.cluster.address}): a copy replayed to
another branch, or to a later run of its own, changes nothing; a sender
that missed a run's hello asks once more and is answered."""

from twisted.internet import defer

from cyme.cluster.presence import PROTOCOL_VERSION
from cyme.errors import GatewayTimeout
from tests.cluster import seal
from tests.cluster.test_bus import SealedBusTestCase


class AddressTests(SealedBusTestCase):
    def test_what_was_sealed_for_one_branch_is_dropped_by_another(self):
        """
        A broker user copies what b2 sends b1 (a queue bound under b1's id)
        and publishes it to b4, which holds the key too: b4 acts on none of
        it, and counts it.
        """
        self.keyed_branch("b4")
        self.assertEqual(self.buses["b4"].live_ids(), ["b1", "b2", "b4"])
        self.network.bodies.clear()
        self.call("b2", "b1", "write", {"x": 1}, 1.0)
        self.assertEqual(self.handled, [{"x": 1}])
        copied = list(self.network.bodies)  # the request to b1, b1's reply to b2
        self.assertEqual(len(copied), 2)
        for body in copied:
            self.inject(body, to="b4")
        self.assertEqual(self.handled, [{"x": 1}])
        self.assertEqual(self.dropped("b4"), {"misdirected": 2})
        lines = [line for line in self.lines() if "sealed for another branch" in line]
        self.assertEqual(len(lines), 1)
        self.assertIn("a bus message from b2 sealed for another branch", lines[0])
        # A broadcast is for every branch: b4 takes the ones sent to all.
        self.assertEqual(self.buses["b4"].live_ids(), ["b1", "b2", "b4"])

    def test_an_envelope_that_names_no_recipient_is_dropped(self):
        sealer = seal(self.clock)
        request = {"v": PROTOCOL_VERSION, "type": "request", "from": "b2", "ticket": "t",
                   "method": "write", "args": {"x": 2}}
        before = self.dropped().get("misdirected", 0)
        for envelope in (request, {**request, "to": None}, {**request, "to": ["b1"]},
                         {**request, "to": "b3"}):
            self.inject(sealer.close(envelope))
        self.assertEqual(self.handled, [])
        self.assertEqual(self.dropped()["misdirected"] - before, 4)

    def restart_b1(self, seconds=5.0):
        """b1 stops and starts again C{seconds} later (its memory of ids gone)."""
        self.successResultOf(self.buses["b1"].stopService())
        self.clock.advance(seconds)
        return self.keyed_branch("b1")

    def test_a_request_sent_before_a_restart_is_refused_after_it(self):
        """
        A request copied on its way to b1 (any within the window) and
        replayed once b1 restarted: b1 has forgotten its id, yet refuses it,
        as addressed to its previous run; b2's calls to the new run work.
        """
        body = self.write_request()
        self.handled.clear()
        self.restart_b1()
        self.inject(body)
        self.assertEqual(self.handled, [])
        self.assertEqual(self.dropped(), {"stale": 1})
        result = self.call("b2", "b1", "write", {"x": 2}, 1.0)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(self.handled, [("b1", {"x": 2})])

    def test_a_broadcast_sent_before_a_restart_is_refused_after_it(self):
        self.network.bodies.clear()
        d = defer.ensureDeferred(self.buses["b2"].broadcast("write", {"x": 1}, 1.0))
        self.beat(0)
        self.assertEqual(self.handled, [{"x": 1}, {"x": 1}])  # b2's own, and b1's
        self.successResultOf(d)
        reader = seal(self.clock)  # the key: what each body is, as a branch reads it
        [body] = [b for b in self.network.bodies
                  if (lambda e: (e["type"], e["to"]))(reader.open(b)) == ("request", "*")]
        self.handled.clear()
        self.restart_b1()
        self.inject(body)
        self.assertEqual(self.handled, [])
        self.assertEqual(self.dropped(), {"stale": 1})
        d = defer.ensureDeferred(self.buses["b2"].broadcast("write", {"x": 2}, 1.0))
        self.beat(0)
        self.assertEqual(self.successResultOf(d)[2], [])
        self.assertIn(("b1", {"x": 2}), self.handled)

    def test_a_request_lost_while_a_branch_was_away_is_refused_after_it_reconnects(self):
        """
        b1's connection to the broker dropped (its queue went with it): a
        request b2 sent then never reached it.  Copied on its way and
        replayed after b1 reconnected (its memory of ids intact, but it never
        saw this one), it is refused.
        """
        self.network.partition("b1")
        self.network.bodies.clear()
        d = self.call("b2", "b1", "write", {"x": 1}, 1.0)
        [body] = self.network.bodies
        self.clock.advance(1.0)
        self.assertIsInstance(self.failureResultOf(d).value, GatewayTimeout)
        self.network.heal("b1")
        self.network.reconnect("b1")
        self.beat()
        self.inject(body)
        self.assertEqual(self.handled, [])
        self.assertEqual(self.dropped()["stale"], 1)  # (b3's hello: unopened)
        self.assertIsNone(self.successResultOf(self.call("b2", "b1", "write", {"x": 2}, 1.0)))
        self.assertEqual(self.handled, [{"x": 2}])

    def test_a_branchs_own_broadcast_replayed_after_it_restarted_is_not_answered(self):
        self.network.bodies.clear()
        self.successResultOf(self.call_all("b1", "write", {"x": 1}))
        body = self.network.bodies[0]
        self.restart_b1()
        self.network.bodies.clear()
        self.inject(body)
        self.assertEqual(self.dropped()["stale"], 1)
        self.assertEqual(self.network.bodies, [])  # no answer to itself

    def test_a_sender_that_missed_the_hello_asks_once_more(self):
        """
        b2 has not heard b1's new run yet (its hello lost): b1 refuses its
        request as stale and tells it the new run, and b2 asks once more at
        once, so the caller gets b1's answer, not an error or a timeout.
        """
        self.network.partition("b2")
        restarted = self.restart_b1()
        self.network.heal("b2")
        self.assertLess(self.buses["b2"].peer("b1").incarnation,
                        restarted.membership.hello_incarnation)
        self.assertIsNone(self.successResultOf(self.call("b2", "b1", "write", {"x": 1}, 1.0)))
        self.assertEqual(self.handled, [("b1", {"x": 1})])
        self.assertEqual(self.dropped(), {"stale": 1})
        self.assertEqual(self.buses["b2"].peer("b1").incarnation,
                         restarted.membership.hello_incarnation)
