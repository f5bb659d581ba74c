"""The cluster's events from any branch: two branches on a memory bus, each
with its log, its feeds and its hub (as makeService wires them)."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.errors import Unavailable
from cyme.operations.cluster import build_cluster
from cyme.operations.drift import DriftWatch
from cyme.operations.eventfeeds import EventFeeds
from cyme.operations.eventhub import EventHub
from cyme.operations.events import EventLog
from cyme.operations.local import LocalOperations
from cyme.state.models import App, Instance
from cyme.state.store import MemoryStore


class Branch:
    def __init__(self, branch_id, network, clock, size=1000):
        self.id = branch_id
        self.store = MemoryStore()
        self.log = EventLog(branch_id, clock, size=size)
        self.feeds = EventFeeds(self.log, self.store)
        self.store.subscribe(self.feeds.store_changed)
        self.local = LocalOperations(self.store, branch_id=branch_id, clock=clock,
                                     events=EventHub(self.log, clock), drift=DriftWatch(clock))
        self.cluster, self.bus = build_cluster(
            self.local, network.transport(branch_id), clock, ready_timeout=1.0,
            seal=OpenSeal())
        self.bus.subscribe(self.feeds.peer_changed)


class Watcher:
    def __init__(self, ops, **kwargs):
        self.got = []
        self.watch = ops.watch_events(self.got.append, **kwargs)

    def said(self):
        found, self.got[:] = [(e["type"], e["branch"], e["instance"] or e["peer"])
                              for e in self.got], []
        return found


class HubTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)
        self.network = MemoryBusNetwork(self.clock)
        self.b1 = Branch("b1", self.network, self.clock)
        self.clock.advance(1)
        self.b2 = Branch("b2", self.network, self.clock, size=5)
        for branch in (self.b1, self.b2):
            branch.store.put_app(App("foo"))
            branch.bus.startService()
            self.addCleanup(branch.bus.stopService)
        self.settle()

    def settle(self, seconds=0.0):
        for _ in range(int(seconds / 0.5) + 1):
            for _ in range(50):
                self.clock.advance(0)
            self.clock.advance(min(seconds, 0.5))

    def create(self, branch, name):
        branch.store.put_instance(Instance(name=name, app="foo"))


class LocalWatchTests(HubTestCase):
    def test_local_watch_sees_this_branch_only_at_once(self):
        watcher = Watcher(self.b1.local, last=2)
        self.assertEqual(watcher.said(), [("app", "b1", None), ("online", "b1", "b2")])
        self.create(self.b1, "w1")
        self.assertEqual(watcher.said(), [("created", "b1", "w1")])
        watcher.watch.stop()
        self.create(self.b1, "w2")
        self.assertEqual(watcher.said(), [])

    def test_a_branch_keeping_no_events_says_so(self):
        ops = LocalOperations(MemoryStore())
        self.assertRaises(Unavailable, ops.watch_events, lambda e: None)

    def test_too_many_watches(self):
        hub = EventHub(self.b1.log, self.clock, max_watches=2)
        hub.watch(lambda e: None)
        second = hub.watch(lambda e: None)
        self.assertRaises(Unavailable, hub.watch, lambda e: None)
        second.stop()
        hub.watch(lambda e: None)


class ClusterWatchTests(HubTestCase):
    def test_the_cluster_events_through_one_branch(self):
        watcher = Watcher(self.b1.cluster)
        self.settle(1)
        self.assertEqual(watcher.said(), [])
        self.create(self.b2, "w2")
        self.create(self.b1, "w1")
        self.assertEqual(watcher.said(), [("created", "b1", "w1")])
        self.settle(1)
        self.assertEqual(watcher.said(), [("created", "b2", "w2")])

    def test_nobody_watching_asks_nobody(self):
        watcher = Watcher(self.b1.cluster)
        self.settle(2)
        asked = len([s for s in self.network.sent if s[2] == "events.since"])
        self.assertGreater(asked, 0)
        watcher.watch.stop()
        self.settle(5)
        self.assertEqual(len([s for s in self.network.sent if s[2] == "events.since"]), asked)

    def test_latest_events_of_every_branch_in_time_order(self):
        self.clock.advance(1)
        self.create(self.b1, "w1")
        self.clock.advance(1)
        self.create(self.b2, "w2")
        self.clock.advance(1)
        self.create(self.b1, "w3")
        watcher = Watcher(self.b1.cluster, last=3)
        self.assertEqual(watcher.said(), [])  # after the first round of asking
        self.settle()
        self.assertEqual(watcher.said(), [
            ("created", "b1", "w1"), ("created", "b2", "w2"), ("created", "b1", "w3")])

    def test_other_branches_views_of_presence_are_not_shown(self):
        watcher = Watcher(self.b1.cluster, last=100)
        self.settle()
        shown = watcher.said()
        self.assertIn(("online", "b1", "b2"), shown)
        self.assertNotIn("b2", [b for t, b, _ in shown if t in ("online", "offline")])

    def test_filtered(self):
        watcher = Watcher(self.b1.cluster, match=lambda e: e.instance == "w2")
        self.settle()
        self.create(self.b1, "w1")
        self.create(self.b2, "w2")
        self.settle(1)
        self.assertEqual(watcher.said(), [("created", "b2", "w2")])

    def test_resume_after_ids_of_both_branches(self):
        first = Watcher(self.b1.cluster)
        self.settle()
        self.create(self.b1, "w1")
        self.create(self.b2, "w2")
        self.settle(1)
        seen = {e["branch"]: e["id"] for e in first.got}
        first.watch.stop()
        self.create(self.b1, "w3")
        self.create(self.b2, "w4")
        after = [tuple(seen[b].split(":")) for b in ("b1", "b2")]
        after = [(b, int(n)) for b, n in after]
        second = Watcher(self.b1.cluster, after=after)
        self.settle(1)
        self.assertEqual(sorted(second.said()), [("created", "b1", "w3"), ("created", "b2", "w4")])

    def test_resume_after_one_id_takes_the_others_from_its_time(self):
        first = Watcher(self.b1.cluster)
        self.settle()
        self.create(self.b1, "w1")
        [created] = first.got
        first.watch.stop()
        self.clock.advance(1)
        self.create(self.b2, "w2")
        second = Watcher(self.b1.cluster, after=[("b1", int(created["id"].split(":")[1]))])
        self.settle()
        self.assertEqual(second.said(), [("created", "b2", "w2")])

    def test_an_id_no_longer_held_is_a_reset(self):
        # b2 keeps 5 events.
        first = Watcher(self.b1.cluster)
        self.settle()
        self.create(self.b2, "w0")
        self.settle(1)
        [created] = first.got
        first.watch.stop()
        for n in range(6):
            self.create(self.b2, f"w{n + 1}")
        self.settle(2)
        second = Watcher(self.b1.cluster, after=[("b2", int(created["id"].split(":")[1]))])
        self.settle(1)
        [reset] = second.got
        self.assertEqual((reset["type"], reset["branch"], reset["id"]), ("reset", "b2", None))
        self.assertIn("no longer held", reset["reason"])
        self.create(self.b2, "w9")
        self.settle(1)
        self.assertEqual(second.said()[1:], [("created", "b2", "w9")])

    def test_events_lost_on_the_way_are_a_reset(self):
        watcher = Watcher(self.b1.cluster)
        self.settle(1)
        self.network.partition("b1")
        for n in range(7):
            self.create(self.b2, f"w{n}")
        self.settle(1)
        self.network.heal("b1")
        self.settle(40)  # b1 asks again once its quiet time is over
        said = watcher.said()
        self.assertEqual(said[0], ("reset", "b2", None), said)
        self.assertIn(("created", "b2", "w6"), said)
        self.assertNotIn(("created", "b2", "w0"), said)

    def test_a_peer_answering_nonsense_is_not_believed(self):
        self.b2.bus._handlers["events.since"] = lambda args, sender: {
            "complete": True, "events": [
                {"id": "b3:1", "time": 1, "type": "created", "instance": "forged"},
                {"id": "b2:99999999", "time": 1, "type": "created", "instance": "../x"},
                {"id": "b2:99999999", "time": 1, "type": "created", "instance": "fine"}]}
        watcher = Watcher(self.b1.cluster, last=100)
        self.settle(2)
        said = watcher.said()
        self.assertIn(("created", "b2", "fine"), said)
        self.assertEqual([s for s in said if s[1] != "b1"], [("created", "b2", "fine")])

    def test_offline_branch(self):
        watcher = Watcher(self.b1.cluster)
        self.settle()
        self.network.partition("b2")
        self.settle(8)
        self.assertIn(("offline", "b1", "b2"), watcher.said())
        self.flushLoggedErrors()
