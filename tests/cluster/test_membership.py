"""Membership (SWIM) over the memory bus: probes, suspicion, refutation,
healing, and gossip that is forged or malformed changing nothing."""

import json
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.bus import Bus
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.presence import PROTOCOL_VERSION
from cyme.cluster.seal import OpenSeal
from tests.cluster import new_key, seal

IDS = ("b1", "b2", "b3", "b4")


def describe(branch_id):
    def contents():
        return {"url": f"http://{branch_id}/", "instances": [["foo", f"w-{branch_id}"]],
                "load": {}, "digest": "d"}
    return contents


class MembershipTestCase(SynchronousTestCase):
    def make_seal(self, branch_id):
        return OpenSeal()

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.network = MemoryBusNetwork(self.clock)
        self.buses = {}
        for index, branch_id in enumerate(IDS):
            self.buses[branch_id] = Bus(self.network.transport(branch_id), branch_id,
                                        self.clock, describe(branch_id),
                                        seal=self.make_seal(branch_id),
                                        rng=random.Random(index))
        for bus in self.buses.values():
            bus.startService()
            self.addCleanup(bus.stopService)
        self.wait(3)

    def wait(self, seconds, step=0.25):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            for _ in range(20):
                self.clock.advance(0)

    def live(self, branch_id):
        return self.buses[branch_id].live_ids()

    def status(self, of, seen_by="b1"):
        return self.buses[seen_by].peer(of).status


class ProbeTests(MembershipTestCase):
    def test_every_branch_knows_every_other_and_its_instances(self):
        for branch_id in IDS:
            self.assertEqual(self.live(branch_id), list(IDS))
        self.assertEqual(self.buses["b1"].peer("b4").instances, [["foo", "w-b4"]])

    def test_idle_costs_two_messages_a_period_per_branch(self):
        self.network.sent.clear()
        self.wait(10)
        # One probe sent and one answered a second by each, whatever the size.
        kinds = {kind for _, kind, _ in self.network.sent}
        self.assertEqual(kinds, {"ping", "ack"})
        self.assertEqual(len(self.network.sent), 2 * len(IDS) * 10)

    def test_a_silent_branch_is_suspected_then_offline_everywhere(self):
        self.network.partition("b4")
        seen = []
        # Each prober reaches b4 within a round of the 3 others; then one
        # period of probing and 4 s of suspicion.
        for _ in range(32):
            self.wait(0.25)
            seen.append((self.status("b4"), self.live("b1")))
        suspected = [live for status, live in seen if status == "suspect"]
        self.assertTrue(suspected)
        self.assertEqual(suspected[0], list(IDS))  # online, while suspected
        for branch_id in ("b1", "b2", "b3"):
            self.assertEqual(self.live(branch_id), ["b1", "b2", "b3"])
            self.assertEqual(self.status("b4", branch_id), "dead")
        # What it last said stays, for listings.
        self.assertEqual(self.buses["b2"].peer("b4").instances, [["foo", "w-b4"]])

    def test_a_partition_heals_both_ways(self):
        self.network.partition("b4")
        self.wait(10)
        self.assertEqual(self.live("b4"), ["b4"])
        self.network.heal("b4")
        self.wait(3)
        for branch_id in IDS:
            self.assertEqual(self.live(branch_id), list(IDS))

    def test_a_wrong_suspicion_is_refuted_at_once(self):
        # b3 says b2 is suspect (its probe was lost, say): b2 hears it and
        # refutes with a newer incarnation before anyone counts it dead.
        suspicion = {"id": "b2", "inc": self.buses["b1"].peer("b2").incarnation,
                     "status": "suspect"}
        self.network.transports["b3"].broadcast(json.dumps({
            "v": PROTOCOL_VERSION, "type": "gossip", "from": "b3", "to": "*",
            "gossip": [suspicion]}).encode())
        self.wait(10)
        for branch_id in ("b1", "b3", "b4"):
            self.assertEqual(self.status("b2", branch_id), "alive")
            self.assertGreater(self.buses[branch_id].peer("b2").incarnation, suspicion["inc"])

    def test_a_branch_overrides_a_newer_record_of_itself(self):
        # The others hold a record of b4 newer than b4 says (its last run,
        # before the machine's clock stepped back): b4 takes a higher
        # incarnation, and its instances as they are now are what all list.
        old = {"id": "b4", "inc": self.buses["b4"].membership.incarnation + 10**9,
               "status": "alive", "url": "http://b4/", "instances": [["foo", "w-old"]]}
        self.network.transports["b3"].broadcast(json.dumps({
            "v": PROTOCOL_VERSION, "type": "gossip", "from": "b3", "to": "*",
            "gossip": [old]}).encode())
        self.wait(3)
        for branch_id in ("b1", "b2", "b3"):
            peer = self.buses[branch_id].peer("b4")
            self.assertEqual([list(i) for i in peer.instances], [["foo", "w-b4"]])
            self.assertGreater(peer.incarnation, old["inc"])

    def test_a_clean_stop_is_left_at_once_and_a_restart_comes_back(self):
        self.buses["b4"].stopService()
        self.wait(0.25)
        self.assertEqual(self.status("b4"), "left")
        restarted = Bus(self.network.transport("b4"), "b4", self.clock, describe("b4"),
                        seal=OpenSeal())
        restarted.startService()
        self.addCleanup(restarted.stopService)
        self.wait(0.5)
        self.assertEqual(self.status("b4"), "alive")
        self.wait(3)
        self.assertEqual(restarted.live_ids(), list(IDS))


class ForgedGossipTests(MembershipTestCase):
    """b1..b4 sealed with one key; what others publish on their bus."""

    def make_seal(self, branch_id):
        return seal(self.clock)

    def inject(self, envelope, sealer=None, to="b1"):
        body = (sealer.close(envelope) if sealer is not None
                else json.dumps(envelope).encode())
        self.network.transports[to].receive(body)
        self.wait(0.25)

    def dropped(self, branch_id="b1"):
        return {k: v for k, v in self.buses[branch_id].figures()["dropped"].items() if v}

    def test_forged_or_malformed_gossip_changes_nothing(self):
        death = {"id": "b2", "inc": 10**15, "status": "dead"}
        frame = {"v": PROTOCOL_VERSION, "from": "b3", "to": "b1"}
        # Not sealed with the cluster key: another key, or none at all.
        self.inject({**frame, "type": "gossip", "gossip": [death]}, seal(self.clock, new_key()))
        self.inject({**frame, "type": "gossip", "gossip": [death]})
        self.inject({**frame, "type": "ping", "seq": 1, "you": {**death, "id": "b1"}},
                    seal(self.clock, new_key()))
        self.assertEqual(self.dropped(), {"unopened": 2, "unsealed": 1})
        # Sealed (a key holder's bug, or an older build): malformed, each
        # refused whole, none of its records taken.
        sealer = seal(self.clock)
        odd = [
            {**frame, "type": "gossip", "gossip": [death, {"id": "b4", "status": "zombie",
                                                           "inc": 1}]},
            {**frame, "type": "gossip", "gossip": [{**death, "id": "../b2"}]},
            {**frame, "type": "gossip", "gossip": [{**death, "inc": -1}]},
            {**frame, "type": "gossip", "gossip": {"b2": death}},
            {**frame, "type": "members", "members": [{**death, "instances": "all"}]},
            {**frame, "type": "ping", "seq": "1", "gossip": [death]},
            {**frame, "type": "ping", "seq": 1, "you": {"id": "b1", "status": "dead"}},
            {**frame, "type": "ping-req", "seq": 1, "target": "../b2"},
            {**frame, "type": "beat", "inc": "9", "url": "http://b3/"},
        ]
        for envelope in odd:
            self.inject(envelope, sealer)
        self.assertEqual(self.dropped()["invalid"], len(odd))
        self.wait(2)
        for branch_id in IDS:
            self.assertEqual(self.live(branch_id), list(IDS))
        self.assertEqual(self.status("b2"), "alive")
        self.assertEqual(self.buses["b1"].peer("b3").url, "http://b3/")
        self.assertEqual(self.flushLoggedErrors(), [])
