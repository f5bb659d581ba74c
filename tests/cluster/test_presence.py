"""Presence: what a beat says, and peers alive, suspected, dead, back and gone."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.messages import record
from cyme.cluster.presence import PROTOCOL_VERSION, BeatContents, Presence
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


def said(branch_id, status="alive", inc=1, **fields):
    """A record of C{branch_id}, checked as one from the bus."""
    return record({"id": branch_id, "status": status, "inc": inc, **fields})


class PresenceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.presence = Presence(self.clock, grace=10.0, expiry=6.0)
        self.events = []
        self.presence.subscribe(lambda peer: self.events.append((peer.id, peer.online)))

    def test_alive_suspect_dead_and_back_by_incarnation(self):
        self.assertTrue(self.presence.apply(said(
            "b2", url="http://b2/", instances=[["foo", "w1"]])))
        peer = self.presence.get("b2")
        self.assertEqual((peer.url, peer.instances, peer.status),
                         ("http://b2/", [["foo", "w1"]], "alive"))
        # Suspected: online still; an alive record of the same incarnation
        # does not undo it, a newer one does.
        self.assertTrue(self.presence.apply(said("b2", "suspect")))
        self.assertEqual(self.presence.live(), [peer])
        self.assertFalse(self.presence.apply(said("b2", "alive")))
        self.assertTrue(self.presence.apply(said("b2", "dead")))
        self.assertEqual(self.presence.live(), [])
        self.assertEqual(self.presence.known(), [peer])
        # What it last said stays, to be listed offline.
        self.assertEqual(peer.instances, [["foo", "w1"]])
        self.assertFalse(self.presence.apply(said("b2", "suspect")))
        self.assertTrue(self.presence.apply(said("b2", "alive", inc=2)))
        self.assertEqual(self.presence.live(), [peer])
        self.assertEqual(self.events, [("b2", True), ("b2", True), ("b2", False), ("b2", True)])

    def test_an_old_death_gives_way_to_an_alive_record_of_its_incarnation(self):
        self.presence.apply(said("b2"))
        self.presence.apply(said("b2", "dead"))
        self.clock.advance(9.0)
        self.assertFalse(self.presence.apply(said("b2")))
        self.clock.advance(1.0)
        # Past the grace: the record comes from a side of a healed partition.
        self.assertTrue(self.presence.apply(said("b2")))
        self.assertTrue(self.presence.get("b2").online)

    def test_a_message_from_a_dead_branch_itself_revives_it(self):
        self.presence.apply(said("b2", digest=None))
        self.assertIsNone(self.presence.heard("b9", "d9"))
        self.presence.apply(said("b2", "dead"))
        peer = self.presence.heard("b2", "d2")
        self.assertEqual((peer.online, peer.digest), (True, "d2"))

    def test_limits_from_records(self):
        self.presence.apply(said("b2", limits={"max_instances": 2, "max_concurrency": 4}))
        peer = self.presence.get("b2")
        self.assertEqual(peer.limits, {"max_instances": 2, "max_concurrency": 4})
        self.assertIsNone(peer.room())
        self.assertEqual(peer.room(5), "max_concurrency")
        peer.instances = [["a", "w1"], ["a", "w2"]]
        self.assertEqual(peer.room(), "max_instances")
        # A limit this cyme does not know is not kept.
        self.presence.apply(said("b2", inc=2, limits={"max_queues": 3}))
        self.assertEqual(self.presence.get("b2").limits, {})
        self.assertIsNone(self.presence.get("b2").room(1000))

    def test_goodbye(self):
        self.presence.left("b9")
        self.presence.apply(said("b2"))
        self.presence.left("b2")
        self.presence.left("b2")
        self.assertEqual(self.events, [("b2", True), ("b2", False)])
        self.assertIsNone(self.presence.get("b9"))
        self.assertEqual(self.presence.get("b2").status, "left")

    def test_a_branch_of_another_protocol_is_known_apart(self):
        """
        Known by its id and version, shown offline once silent, never among
        the live or known peers (never called, never placed on, never
        pulled from), and nobody is told of it.
        """
        self.presence.other("b3", PROTOCOL_VERSION + 1, "9.0")
        self.assertEqual(self.presence.live(), [])
        self.assertEqual(self.presence.known(), [])
        shown = self.presence.get("b3").to_json(self.clock.seconds())
        self.assertEqual((shown["version"], shown["protocol"], shown["online"]),
                         ("9.0", PROTOCOL_VERSION + 1, True))
        self.assertEqual([p.id for p in self.presence.others()], ["b3"])
        self.clock.advance(7.0)
        self.assertFalse(self.presence.others()[0].online)
        self.assertEqual(self.events, [])

    def test_a_peer_upgraded_in_place_leaves_the_cluster_and_may_come_back(self):
        self.presence.apply(said("b2", instances=[["foo", "w1"]]))
        self.presence.other("b2", PROTOCOL_VERSION + 1, "9.0")
        self.assertEqual(self.presence.live(), [])
        # What it last announced stays listed, offline.
        self.assertEqual([(p.id, p.online, p.instances) for p in self.presence.known()],
                         [("b2", False, [["foo", "w1"]])])
        self.assertEqual(self.presence.get("b2").protocol, PROTOCOL_VERSION + 1)
        # Back on this protocol: restarted, so a newer incarnation.
        self.presence.apply(said("b2", inc=5))
        self.assertEqual([p.id for p in self.presence.live()], ["b2"])
        self.assertEqual(self.presence.others(), [])
        self.assertEqual(self.events, [("b2", True), ("b2", False), ("b2", True)])

    def test_peers_by_state(self):
        none = {"online": 0, "offline": 0, "incompatible": 0}
        self.assertEqual(self.presence.by_state(), none)
        for branch in ("b2", "b3", "b4", "b6"):
            self.presence.apply(said(branch))
        self.presence.left("b3")
        self.presence.apply(said("b6", "suspect"))
        # Upgraded in place: one branch, counted once.
        self.presence.other("b4", PROTOCOL_VERSION + 1, "9.0")
        self.presence.other("b5", PROTOCOL_VERSION + 1, "9.0")
        self.assertEqual(self.presence.by_state(),
                         {"online": 2, "offline": 1, "incompatible": 2})
        self.clock.advance(6.5)  # the strangers silent past the expiry
        self.assertEqual(self.presence.by_state(), {"online": 2, "offline": 3,
                                                    "incompatible": 0})
