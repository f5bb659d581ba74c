"""Placement: the least loaded branch, the coordinator of a name, and the
count of a create in flight."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.bus import Bus
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.cluster.placement import Placement, coordinator, least_loaded
from cyme.errors import Conflict, NotFound
from cyme.state.models import Instance
from cyme.state.store import MemoryStore


class FunctionTests(SynchronousTestCase):
    def test_every_branch_picks_the_same_coordinator(self):
        ids = ["b1", "b2", "b3", "b4"]
        for name in ("w1", "w2", "w3", "web-7"):
            chosen = coordinator(name, ids)
            self.assertIn(chosen, ids)
            self.assertEqual(coordinator(name, list(reversed(ids))), chosen)
        # Spread over the branches, not always the same one.
        self.assertGreater(len({coordinator(f"w{i}", ids) for i in range(40)}), 1)

    def test_least_loaded_breaks_ties_at_random(self):
        loads = {"b1": 2, "b2": 1, "b3": 1}
        self.assertEqual(least_loaded(loads, lambda: 0.0), "b2")
        self.assertEqual(least_loaded(loads, lambda: 0.99), "b3")
        self.assertEqual(least_loaded({"b1": 0}, lambda: 0.5), "b1")


class TwoBranchesTestCase(SynchronousTestCase):
    """b1 (this one, placing) and b2 on the memory bus, both beaten once."""

    #: What this branch's L{Placement} is told of its own limits.
    limits = {}

    def own_beat(self):
        return self.beat()

    def beat(self):
        return {"url": None, "instances": [], "load": {}, "digest": None}

    def setUp(self):
        self.clock = Clock()
        network = MemoryBusNetwork(self.clock)
        self.store = MemoryStore()
        self.bus = Bus(network.transport("b1"), "b1", self.clock, self.own_beat,
                       seal=OpenSeal())
        self.other = other = Bus(network.transport("b2"), "b2", self.clock, self.beat,
                                 seal=OpenSeal())
        for bus in (self.bus, other):
            bus.startService()
            self.addCleanup(bus.stopService)
        self.clock.advance(2.0)
        self.clock.advance(0)
        self.placement = Placement(self.bus, self.store, rng=lambda: 0.0, limits=self.limits)


class PlacementTests(TwoBranchesTestCase):

    def test_target_is_the_least_loaded_live_branch(self):
        self.assertEqual(self.placement.target(), "b1")
        self.store.put_instance(Instance("w1", "foo"))
        self.assertEqual(self.placement.target(), "b2")

    def test_named_branch_must_be_live(self):
        self.assertEqual(self.placement.target("b2"), "b2")
        self.assertRaises(NotFound, self.placement.target, "b9")

    def test_a_create_in_flight_counts_until_released(self):
        release = self.placement.reserve("b2", "foo", "w1")
        self.assertEqual(self.bus.peer("b2").instances, [["foo", "w1"]])
        self.assertEqual(self.placement.target(), "b1")
        release()
        release()
        self.assertEqual(self.bus.peer("b2").instances, [])
        # Unknown branches have nothing to count.
        self.placement.reserve("b9", "foo", "w1")()


class LimitTests(TwoBranchesTestCase):
    """b1 (this one) and b2, whose beat says it holds at most 2 instances of 4."""

    limits = {"max_instances": 1, "max_concurrency": 8}

    def setUp(self):
        self.peer_instances = []
        super().setUp()

    def own_beat(self):
        return {}

    def beat(self):
        return {"url": None, "instances": self.peer_instances, "load": {}, "digest": None,
                "limits": {"max_instances": 2, "max_concurrency": 4}}

    def test_full_branches_are_skipped(self):
        self.store.put_instance(Instance("w1", "foo"))
        self.assertEqual(self.placement.target(), "b2")
        self.peer_instances.extend([["foo", "w2"], ["foo", "w3"]])
        # As b2's store would on its change: the others learn it at once.
        self.other.announce_soon()
        self.clock.advance(0)
        self.clock.advance(0)
        with self.assertRaises(Conflict) as caught:
            self.placement.target()
        body = caught.exception.to_json()
        self.assertEqual(body["limit"], "max_instances")
        self.assertEqual(body["branches"], {"b1": "max_instances", "b2": "max_instances"})

    def test_a_create_in_flight_counts_against_the_limit(self):
        self.store.put_instance(Instance("w1", "foo"))
        self.placement.reserve("b2", "foo", "w2")
        self.placement.reserve("b2", "foo", "w3")
        self.assertRaises(Conflict, self.placement.target)

    def test_branches_whose_cap_is_below_the_request_are_skipped(self):
        self.assertEqual(self.placement.target(max_concurrency="6"), "b1")
        self.assertEqual(self.placement.target(max_concurrency=2), "b1")
        self.store.put_instance(Instance("w1", "foo"))
        with self.assertRaises(Conflict) as caught:
            self.placement.target(max_concurrency=6)
        self.assertEqual(caught.exception.to_json()["limit"],
                         ["max_concurrency", "max_instances"])
        # A value the target branch will refuse anyway places as 1.
        self.assertEqual(self.placement.target(max_concurrency="lots"), "b2")

    def test_a_named_branch_at_its_limit_is_a_409(self):
        self.store.put_instance(Instance("w1", "foo"))
        self.assertRaises(Conflict, self.placement.target, "b1")
        self.assertEqual(self.placement.target("b2"), "b2")
