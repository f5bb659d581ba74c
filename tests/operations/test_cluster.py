"""Three branches in one process on a memory bus: presence, replication of
apps and queues, placement and routing of instances, partial answers,
offline branches, and catching up after a partition.
"""

import json
import random
import traceback

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.cluster.interfaces import IBusTransport
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.operations import cluster as cluster_module
from cyme.operations.cluster import build_cluster
from cyme.operations.interfaces import IOperations
from cyme.state.models import App, Queue
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.state.replica import Replica
from cyme.api.testing import APIClient
from cyme.api.routes import BranchAPI

IDS = ("b1", "b2", "b3")


class Branch:
    def __init__(self, branch_id, network, clock, local_class=LocalOperations, tasks=None,
                 waits=None, seal=None, store=None, now=None):
        self.id = branch_id
        # A store of its own (a root's state file, for a branch started again).
        self.store = store if store is not None else MemoryStore()
        # The wall clock (default: the real one), for tokens' expiry and versions.
        wall = {} if now is None else {"now": now}
        self.local = local_class(
            self.store, branch_id=branch_id, url=f"http://{branch_id}:8000/", tasks=tasks,
            clock=clock, **wall,
        )
        # As makeService wires a branch.
        self.cluster, self.bus = build_cluster(
            self.local, network.transport(branch_id), clock,
            ready_timeout=self.local.ready_timeout, waits=waits,
            seal=seal or OpenSeal(),
            # Which peer each probes first, and after: the same at every run.
            rng=random.Random(branch_id),
        )
        self.client = APIClient(BranchAPI(self.cluster, waits=waits, clock=Clock()).resource())


class ClusterTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.network = MemoryBusNetwork(self.clock)
        self.branches = self.make_branches()
        for branch in self.branches.values():
            branch.bus.startService()
            self.addCleanup(branch.bus.stopService)
        self.settle()

    def make_branches(self):
        return {i: Branch(i, self.network, self.clock, seal=self.make_seal(i)) for i in IDS}

    def make_seal(self, branch_id):
        """The seal of branch C{branch_id}: open, so that C{network.sent} names types."""
        return OpenSeal()

    def settle(self):
        """Deliver every message and answer that is due now."""
        for _ in range(200):
            self.clock.advance(0)
            for branch in self.branches.values():
                branch.client.flush()
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                return
        self.fail("the bus did not settle")

    def wait(self, seconds, step=0.5):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.settle()

    def slow_request(self, branch, method, path, seconds, **kwargs):
        """A request that waits on a silent branch: let C{seconds} pass."""
        d = self.branches[branch].client.request(method, path, **kwargs)
        self.settle()
        self.wait(seconds)
        return self.successResultOf(d)

    def request(self, branch, method, path, **kwargs):
        d = self.branches[branch].client.request(method, path, **kwargs)
        self.settle()
        return self.successResultOf(d)


class PresenceTests(ClusterTestCase):
    def test_memory_transport_implements_the_interface(self):
        self.assertTrue(verifyObject(IBusTransport, self.network.transports["b1"]))

    def test_cluster_operations_implement_the_interface(self):
        cluster = self.branches["b2"].cluster
        self.assertTrue(verifyObject(IOperations, cluster))
        self.assertEqual(cluster.branch_id, "b2")

    def test_every_branch_sees_every_branch(self):
        for branch in IDS:
            response = self.request(branch, "GET", "/branches/")
            self.assertEqual(response.json, list(IDS))

    def test_branch_details(self):
        self.request("b1", "PUT", "/foo/")
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b2")
        body = self.request("b3", "GET", "/branches/b2/").json
        self.assertEqual(body["id"], "b2")
        self.assertEqual(body["url"], "http://b2:8000/")
        self.assertEqual(body["instances"], ["w1"])
        self.assertEqual(body["load"]["instances"], 1)
        self.assertIn("uptime", body)
        self.assertIn("last_heartbeat", body)
        self.assertEqual(self.request("b3", "GET", "/branches/nope/").code, 404)

    def test_silent_branch_goes_offline_and_comes_back(self):
        self.network.partition("b3")
        self.wait(8)
        self.assertEqual(self.request("b1", "GET", "/branches/").json, ["b1", "b2"])
        self.network.heal("b3")
        self.wait(3)
        self.assertEqual(self.request("b1", "GET", "/branches/").json, list(IDS))

    def test_clean_stop_says_goodbye(self):
        self.branches["b3"].bus.stopService()
        self.settle()
        self.assertEqual(self.request("b1", "GET", "/branches/").json, ["b1", "b2"])


class ReplicationTests(ClusterTestCase):
    def test_app_created_on_one_branch_is_served_by_all(self):
        created = self.request("b1", "POST", "/foo/", data={"hostname": "w1"})
        self.assertEqual(created.code, 201)
        self.assertIsNone(created.header("Cyme-Missing-Branches"))
        for branch in ("b2", "b3"):
            response = self.request(branch, "GET", "/foo/")
            self.assertEqual(response.json["broker"]["hostname"], "w1")
            self.assertEqual(self.request(branch, "GET", "/").json, ["foo"])

    def test_queues_are_replicated_and_deleted_everywhere(self):
        self.request("b1", "PUT", "/foo/")
        self.request("b2", "PUT", "/foo/queues/tasks/", data={"exchange_type": "topic"})
        self.assertEqual(self.request("b3", "GET", "/foo/queues/tasks/").json["exchange_type"], "topic")
        self.request("b3", "PUT", "/foo/instances/w1/?branch=b1", data={"queues": "tasks"})
        self.request("b3", "DELETE", "/foo/queues/tasks/")
        for branch in IDS:
            self.assertEqual(self.request(branch, "GET", "/foo/queues/").json, [])
        self.assertEqual(self.branches["b1"].store.get_instance("w1").queues, ())

    def test_deleting_an_app_deletes_its_instances_on_every_branch(self):
        self.request("b1", "PUT", "/foo/")
        for branch in IDS:
            self.request("b1", "PUT", f"/foo/instances/w-{branch}/?branch={branch}")
        self.request("b2", "DELETE", "/foo/")
        for branch in IDS:
            self.assertEqual(self.branches[branch].store.instances(), [])
            self.assertEqual(self.request(branch, "GET", "/foo/").code, 404)

    def test_write_while_a_branch_is_away_reaches_it_when_it_returns(self):
        self.request("b1", "PUT", "/foo/")
        self.network.partition("b3")
        response = self.slow_request("b1", "PUT", "/foo/queues/late/", 5.5)
        # b3 was still thought alive: the write says it did not answer.
        self.assertEqual(response.header("Cyme-Missing-Branches"), "b3")
        self.assertRaises(Exception, self.branches["b3"].store.get_queue, "foo", "late")
        self.network.heal("b3")
        self.wait(3)
        self.assertEqual(self.request("b3", "GET", "/foo/queues/").json, ["late"])

    def test_the_no_wait_form_answers_without_waiting_for_a_silent_branch(self):
        self.request("b1", "PUT", "/foo/")
        self.network.partition("b3")
        d = self.branches["b1"].client.request("PUT", "/foo/queues/!/late/")
        self.settle()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 202)
        self.assertIsNone(response.header("Cyme-Missing-Branches"))
        # Sent all the same: the live branches have it, the silent one
        # catches up when it returns.
        self.assertEqual(self.request("b2", "GET", "/foo/queues/").json, ["late"])
        self.network.heal("b3")
        self.wait(3)
        self.assertEqual(self.request("b3", "GET", "/foo/queues/").json, ["late"])

    def test_a_branch_away_during_a_delete_deletes_too(self):
        self.request("b1", "PUT", "/foo/")
        self.request("b1", "PUT", "/foo/instances/w3/?branch=b3")
        self.network.partition("b3")
        self.slow_request("b1", "DELETE", "/foo/", 5.5)
        self.network.heal("b3")
        self.wait(3)
        self.assertEqual(self.branches["b3"].store.apps(), [])
        self.assertEqual(self.branches["b3"].store.instances(), [])

    def test_a_merge_that_changed_the_state_is_logged_and_is_a_store_event(self):
        events, changes = [], []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.branches["b2"].store.subscribe(lambda *event: changes.append(event))
        self.request("b1", "PUT", "/foo/")
        merges = [formatEvent(e) for e in events
                  if e.get("log_namespace", "").startswith("cyme.cluster.replication")]
        self.assertEqual(len(changes), 1)
        # b2 and b3 log it; b1, whose write it is, does not.
        self.assertEqual(merges, ["replica.merge sender=b1 removed=[]"] * 2)

    def test_merges_are_counted_by_source_and_outcome(self):
        self.request("b1", "PUT", "/foo/")
        merges = {i: self.branches[i].cluster.metrics()["merges"] for i in IDS}
        # Every branch merges the write, its writer too (which changes nothing).
        self.assertEqual(merges["b1"], {("write", "unchanged"): 1})
        self.assertEqual(merges["b2"], {("write", "changed"): 1})
        self.network.partition("b3")
        self.slow_request("b1", "PUT", "/foo/queues/late/", 5.5)
        self.network.heal("b3")
        self.wait(3)
        merges = self.branches["b3"].cluster.metrics()["merges"]
        self.assertEqual(merges[("catch_up", "changed")], 1)

    def test_concurrent_writes_resolve_the_same_everywhere(self):
        a, b = self.branches["b1"].store, self.branches["b2"].store
        a.put_app(App("foo", arguments="from b1"), (1000, "b1"))
        b.put_app(App("foo", arguments="from b2"), (1000, "b2"))
        replica_a, replica_b = a.replica(), b.replica()
        a.merge(Replica.from_json(replica_b))
        b.merge(Replica.from_json(replica_a))
        self.assertEqual(a.get_app("foo").arguments, "from b2")
        self.assertEqual(b.get_app("foo").arguments, "from b2")
        self.assertEqual(a.digest(), b.digest())

    def test_older_write_does_not_win(self):
        store = self.branches["b1"].store
        store.put_queue("foo", Queue("q", exchange="new"), (2000, "b1"))
        store.merge(Replica.from_json({
            "queues": {"foo": {"q": Queue("q", exchange="old").to_json()}},
            "versions": {"queue/foo/q": [1000, "b9"]}}))
        self.assertEqual(store.get_queue("foo", "q").exchange, "new")


class InstanceTests(ClusterTestCase):
    def setUp(self):
        super().setUp()
        self.request("b1", "PUT", "/foo/")
        self.request("b1", "PUT", "/foo/queues/tasks/")

    def owners(self):
        return {
            i.name: b for b, branch in self.branches.items() for i in branch.store.instances()
        }

    def test_instances_go_to_the_least_loaded_branch(self):
        for _ in range(6):
            response = self.request("b1", "PUT", "/foo/instances/")
            self.assertEqual(response.code, 201)
        counts = sorted(
            len(branch.store.instances()) for branch in self.branches.values()
        )
        self.assertEqual(counts, [2, 2, 2])

    def test_instances_created_at_once_are_spread_too(self):
        requests = [self.branches["b1"].client.request("PUT", "/foo/instances/")
                    for _ in range(6)]
        self.settle()
        self.assertEqual([self.successResultOf(d).code for d in requests], [201] * 6)
        counts = sorted(len(branch.store.instances()) for branch in self.branches.values())
        self.assertEqual(counts, [2, 2, 2])

    def test_instance_json_names_its_branch(self):
        body = self.request("b1", "PUT", "/foo/instances/w1/?branch=b3").json
        self.assertEqual(body["branch"], "b3")
        self.assertEqual(self.owners(), {"w1": "b3"})
        self.assertEqual(self.request("b2", "GET", "/foo/instances/w1/").json["branch"], "b3")

    def test_an_instance_is_found_from_its_owners_record_with_one_request(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b3")
        received = []
        self.addCleanup(self.network.observe(lambda target, body: received.append(
            (target, json.loads(body).get("method")))))
        self.assertEqual(self.request("b2", "GET", "/foo/instances/w1/").json["branch"], "b3")
        # Asked of b3 alone (its record names w1), not of every branch.
        lookups = [target for target, method in received if method == "instance.lookup"]
        self.assertEqual(lookups, ["b3"])

    def test_unknown_branch_is_404(self):
        self.assertEqual(self.request("b1", "PUT", "/foo/instances/w1/?branch=nope").code, 404)

    def test_listing_covers_every_branch_once(self):
        for branch in IDS:
            self.request("b1", "PUT", f"/foo/instances/w-{branch}/?branch={branch}")
        self.network.sent.clear()
        for branch in IDS:
            response = self.request(branch, "GET", "/foo/instances/")
            self.assertEqual(response.json, ["w-b1", "w-b2", "w-b3"])
            self.assertIsNone(response.header("Cyme-Missing-Branches"))
            response = self.request(branch, "GET", "/foo/instances/?fresh=1")
            self.assertEqual(response.json, ["w-b1", "w-b2", "w-b3"])
        # From what every branch holds: no message but the fresh ones'
        # requests and replies, one each per other owner.
        kinds = [m[1] for m in self.network.sent if m[1] in ("request", "reply")]
        self.assertEqual(kinds.count("request"), 6)
        self.assertEqual(kinds.count("reply"), 6)

    def test_a_suspected_branch_is_named_in_a_listing_from_what_is_held(self):
        self.request("b1", "PUT", "/foo/instances/w2/?branch=b2")
        self.network.partition("b2")
        seen = []
        for _ in range(16):
            self.wait(0.5)
            response = self.request("b1", "GET", "/foo/instances/")
            seen.append(response.header("Cyme-Missing-Branches"))
            self.assertEqual(response.json, ["w2"])
        # Suspected (its part may be stale: named), then offline (its part
        # is what it last said: listed, and shown offline).
        self.assertIn("b2", seen)
        self.assertEqual(seen[-1], None)
        self.assertEqual(self.request("b1", "GET", "/foo/instances/w2/").json["state"],
                         "offline")

    def test_operations_through_a_branch_that_does_not_own_the_instance(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b3")
        self.assertEqual(self.request("b2", "PUT", "/foo/instances/w1/queues/tasks/").code, 201)
        self.assertEqual(self.branches["b3"].store.get_instance("w1").queues, ("tasks",))
        response = self.request("b1", "POST", "/foo/instances/w1/autoscale/?max=5&min=2")
        self.assertEqual(response.json, {"max": 5, "min": 2})
        self.assertEqual(self.request("b2", "GET", "/foo/instances/w1/autoscale/").json,
                         {"max": 5, "min": 2})
        self.assertEqual(self.request("b1", "DELETE", "/foo/instances/w1/queues/tasks/").code, 200)
        self.assertEqual(self.request("b2", "DELETE", "/foo/instances/w1/").code, 200)
        self.assertEqual(self.owners(), {})
        self.assertEqual(self.request("b1", "GET", "/foo/instances/w1/").code, 404)

    def test_names_are_unique_across_the_cluster(self):
        self.request("b1", "PUT", "/bar/")
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b2")
        response = self.request("b3", "PUT", "/bar/instances/w1/")
        self.assertEqual(response.code, 409)
        self.assertEqual(self.owners(), {"w1": "b2"})

    def test_one_name_created_through_every_branch_at_once_is_one_instance(self):
        for round_ in range(4):
            name = f"w{round_}"
            requests = [
                self.branches[b].client.request("PUT", f"/foo/instances/{name}/")
                for b in IDS
            ]
            self.settle()
            responses = [self.successResultOf(d) for d in requests]
            self.assertEqual(sorted(r.code for r in responses), [200, 200, 201], name)
            holders = [b for b, branch in self.branches.items()
                       if any(i.name == name for i in branch.store.instances())]
            self.assertEqual(len(holders), 1, f"{name} is on {holders}")
            self.assertEqual({r.json["branch"] for r in responses}, set(holders))

    def test_updating_goes_to_the_owner(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b2")
        response = self.request("b3", "PUT", "/foo/instances/w1/", data={"max_concurrency": "4"})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.branches["b2"].store.get_instance("w1").max_concurrency, 4)
        self.assertEqual(self.owners(), {"w1": "b2"})

    def test_errors_of_the_owner_come_back_as_they_are(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b2")
        response = self.request("b1", "PUT", "/foo/instances/w1/queues/nope/")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.json["name"], "nope")

    def test_silent_branch_makes_a_partial_listing_then_an_offline_one(self):
        for branch in IDS:
            self.request("b1", "PUT", f"/foo/instances/w-{branch}/?branch={branch}")
        self.network.partition("b2")
        self.network.sent.clear()
        # Live figures asked of each owner: the silent one is named.
        d = self.branches["b1"].client.request("GET", "/foo/instances/?fresh=1")
        self.settle()
        self.wait(5.5)
        response = self.successResultOf(d)
        self.assertEqual(response.header("Cyme-Missing-Branches"), "b2")
        self.assertEqual(response.json, ["w-b1", "w-b2", "w-b3"])
        asked = [m for m in self.network.sent if m[1:] == ("request", "instances.list")]
        self.assertEqual(len(asked), 2)  # one per other owner
        self.wait(4)
        # b2 is offline now: its instances are listed, not lost.
        response = self.request("b1", "GET", "/foo/instances/")
        self.assertEqual(response.json, ["w-b1", "w-b2", "w-b3"])
        shown = self.request("b1", "GET", "/foo/instances/w-b2/").json
        self.assertEqual((shown["state"], shown["branch"]), ("offline", "b2"))
        self.assertEqual(self.request("b1", "DELETE", "/foo/instances/w-b2/").code, 503)

    def test_call_to_a_silent_branch_is_a_504(self):
        self.request("b1", "PUT", "/foo/instances/w2/?branch=b2")
        self.network.partition("b2")
        d = self.branches["b1"].client.request("GET", "/foo/instances/w2/stats/")
        self.settle()
        self.wait(6)
        response = self.successResultOf(d)
        self.assertIn(response.code, (503, 504))


class ProtocolTests(ClusterTestCase):
    def test_unknown_method_gets_an_error_reply(self):
        bus = self.branches["b1"].bus
        d = bus.call("b2", "no.such.method", {}, 1.0)
        from twisted.internet.defer import ensureDeferred

        d = ensureDeferred(d)
        self.settle()
        failure = self.failureResultOf(d)
        self.assertEqual(failure.value.status, 400)
        self.assertIn("unknown bus method", failure.value.message)

    def test_unknown_version_gets_an_error_reply_and_no_crash(self):
        self.network.transports["b1"].send(
            "b2", b'{"v": 99, "type": "request", "from": "b1", "ticket": "t", "method": "x"}'
        )
        self.network.sent.clear()
        self.settle()
        # b2 answered with an error (b1 waits for no ticket "t": dropped).
        self.assertIn(("b2", "reply", None), self.network.sent)
        # b2 is still fine.
        self.assertEqual(self.request("b2", "GET", "/branches/").json, list(IDS))

    def test_garbage_is_ignored(self):
        self.network.transports["b2"].receive(b'"not an envelope"')
        self.network.transports["b2"].receive(b'{"from": "b1", "v": 1, "type": "reply"}')
        self.assertEqual(self.request("b2", "GET", "/branches/").json, list(IDS))


class ListingRoundsTests(ClusterTestCase):
    def test_concurrent_listings_share_a_broadcast_yet_see_earlier_changes(self):
        self.request("b1", "PUT", "/foo/")
        client = self.branches["b1"].client
        first = [client.request("GET", "/foo/instances/") for _ in range(5)]
        self.clock.advance(0)
        # Created after the first listings started: the later ones see it.
        self.request("b2", "PUT", "/foo/instances/late/?branch=b3")
        later = [client.request("GET", "/foo/instances/") for _ in range(5)]
        self.network.sent.clear()
        self.settle()
        for d in first:
            self.assertNotIn("late", self.successResultOf(d).json)
        for d in later:
            self.assertEqual(self.successResultOf(d).json, ["late"])
        lists = [m for m in self.network.sent if m[2] == "instances.list"]
        self.assertLessEqual(len(lists), 2)


class InstanceByNameClusterTests(ClusterTestCase):
    def test_delete_by_name_through_another_branch(self):
        self.request("b1", "PUT", "/foo/")
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b3")
        self.assertEqual(self.request("b2", "GET", "/instances/w1/").json["branch"], "b3")
        self.assertEqual(self.request("b2", "DELETE", "/instances/w1/").code, 200)
        self.assertEqual(self.branches["b3"].store.instances(), [])
        self.assertEqual(self.request("b1", "DELETE", "/instances/w1/").code, 404)


class StackRecordingLocal(LocalOperations):
    """Local operations that note which functions of the cluster led to a create."""

    async def put_instance(self, app, name, values, wait=True, branch=None):
        self.chains.append([
            frame.name for frame in traceback.extract_stack()
            if frame.filename == cluster_module.__file__
        ])
        return await super().put_instance(app, name, values, wait=wait, branch=branch)


class SingleBranchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.branch = Branch("b1", MemoryBusNetwork(self.clock), self.clock,
                             local_class=StackRecordingLocal)
        self.branch.local.chains = []
        self.branch.bus.startService()
        self.addCleanup(self.branch.bus.stopService)
        self.clock.advance(0)

    def test_a_create_reaches_the_local_operations_in_two_functions(self):
        client = self.branch.client
        self.assertEqual(self.successResultOf(client.request("PUT", "/foo/")).code, 201)
        for path in ("/foo/instances/w1/", "/foo/instances/"):
            response = self.successResultOf(client.request("PUT", path))
            self.assertEqual(response.code, 201)
            self.assertEqual(response.json["branch"], "b1")
        self.assertEqual(self.branch.local.chains, [["put_instance", "_decide"]] * 2)
