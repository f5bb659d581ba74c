"""Presence: what a beat says, and peers seen, expired and gone."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.presence import BeatContents, Presence
from cyme.state.models import App, Instance
from cyme.state.store import MemoryStore


class BeatContentsTests(SynchronousTestCase):
    def test_from_the_store_the_url_and_the_load(self):
        store = MemoryStore()
        store.put_app(App("foo"))
        store.put_instance(Instance("w1", "foo"))
        contents = BeatContents(store, "http://b1:8000/", lambda n: {"instances": n},
                                limits={"max_instances": 3, "max_concurrency": 8})()
        self.assertEqual(contents, {
            "url": "http://b1:8000/", "instances": [["foo", "w1"]],
            "load": {"instances": 1}, "digest": store.digest(),
            "limits": {"max_instances": 3, "max_concurrency": 8},
        })


class PresenceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.presence = Presence(self.clock, expiry=6.0)
        self.events = []
        self.presence.subscribe(lambda peer: self.events.append((peer.id, peer.online)))

    def test_seen_then_silent_then_back(self):
        self.presence.seen("b2", {"url": "u", "instances": [["foo", "w1"]], "digest": "d"})
        peer = self.presence.get("b2")
        self.assertEqual((peer.url, peer.instances, peer.digest), ("u", [["foo", "w1"]], "d"))
        self.clock.advance(6.0)
        self.assertEqual(self.presence.live(), [peer])
        self.clock.advance(0.5)
        self.assertEqual(self.presence.live(), [])
        self.assertEqual(self.presence.known(), [peer])
        self.presence.seen("b2", {})
        self.assertEqual(self.events, [("b2", True), ("b2", False), ("b2", True)])

    def test_limits_from_beats_are_kept_if_well_formed(self):
        self.presence.seen("b2", {"limits": {"max_instances": 2, "max_concurrency": 4}})
        peer = self.presence.get("b2")
        self.assertEqual(peer.limits, {"max_instances": 2, "max_concurrency": 4})
        self.assertIsNone(peer.room())
        self.assertEqual(peer.room(5), "max_concurrency")
        peer.instances = [["a", "w1"], ["a", "w2"]]
        self.assertEqual(peer.room(), "max_instances")
        for limits in ("x", ["max_instances"], {"max_instances": "2", "other": 1},
                       {"max_instances": True}, None):
            with self.subTest(limits=limits):
                self.presence.seen("b2", {"limits": limits})
                self.assertEqual(self.presence.get("b2").limits, {})
                self.assertIsNone(self.presence.get("b2").room(1000))

    def test_goodbye(self):
        self.presence.left("b9")
        self.presence.seen("b2", {})
        self.presence.left("b2")
        self.presence.left("b2")
        self.assertEqual(self.events, [("b2", True), ("b2", False)])
        self.assertIsNone(self.presence.get("b9"))
