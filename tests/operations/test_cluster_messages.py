"""Malformed bus messages on a cluster of three branches (memory bus): dropped,
refused or answered 400, never stored, never an error in a later request;
and branches whose replicas keep differing do not pull at every beat.
"""

import json

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from cyme.cluster.bus import RemoteError
from cyme.state.models import App
from cyme.state.replica import Replica
from cyme.state.store import MemoryStore
from tests.operations.test_cluster import IDS, ClusterTestCase

APP = App("good").to_json()


class MessagesTestCase(ClusterTestCase):
    def setUp(self):
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.request("b1", "PUT", "/foo/")

    def call(self, method, args, caller="b2", callee="b1"):
        """C{method} on C{callee}, asked by C{caller} (a holder of the key)."""
        d = defer.ensureDeferred(self.branches[caller].bus.call(callee, method, args, 1.0))
        self.settle()
        return d

    def refused(self, method, args):
        """A request that must be a 400; its error."""
        error = self.failureResultOf(self.call(method, args), RemoteError).value
        self.assertEqual(error.status, 400, error.body)
        return error

    def still_fine(self, branch="b1"):
        """Every later request on C{branch} answers, as before."""
        self.assertEqual(self.request(branch, "GET", "/branches/").json, list(IDS))
        self.assertEqual(self.request(branch, "GET", "/foo/instances/").code, 200)
        self.assertEqual(self.request(branch, "GET", "/admin/").code, 200)
        for other in IDS:
            self.assertEqual(self.request(branch, "GET", f"/branches/{other}/").code, 200)
        self.assertEqual(self.flushLoggedErrors(), [])

    def dropped(self, branch="b1"):
        return self.request(branch, "GET", f"/branches/{branch}/").json["bus"]["dropped"]

    def inject(self, envelope, to="b1"):
        """C{envelope} (for C{to}, unless it says otherwise) straight to C{to}'s queue."""
        self.network.transports[to].receive(json.dumps({"to": to, **envelope}).encode())
        self.settle()


class HeartbeatTests(MessagesTestCase):
    def test_odd_heartbeats_are_dropped_and_change_nothing(self):
        beats = [
            {"instances": [[1, 2]]},
            {"instances": [["foo", None]]},
            {"url": "javascript:alert(document.cookie)//"},
            {"load": {"loadavg": "high"}},
            {"started": "yesterday"},
            {"limits": {"max_instances": "many"}},
            {"version": {"major": 1}},
        ]
        for fields in beats:
            self.inject({"v": 3, "type": "beat", "from": "b9", **fields})
            self.inject({"v": 3, "type": "beat", "from": "b2", **fields})
        self.assertEqual(self.request("b1", "GET", "/branches/b9/").code, 404)
        shown = self.request("b1", "GET", "/branches/b2/").json
        self.assertEqual(shown["url"], "http://b2:8000/")
        self.assertEqual(self.dropped()["invalid"], 2 * len(beats))
        self.assertNotIn(b"javascript", self.request("b1", "GET", "/admin/").body)
        self.still_fine()

    def test_a_listing_with_an_odd_peer_never_fails(self):
        # Once a 500 until a restart: a name of another type among the
        # names an offline branch last announced.
        self.inject({"v": 3, "type": "beat", "from": "b9", "instances": [["foo", "w9"]]})
        self.wait(8)  # b9 goes offline: its instances are listed from its last beat
        self.assertEqual(self.request("b1", "GET", "/foo/instances/").json, ["w9"])
        self.inject({"v": 3, "type": "beat", "from": "b9", "instances": [["foo", 7]]})
        self.assertEqual(self.request("b1", "GET", "/foo/instances/").json, ["w9"])
        self.assertEqual(self.request("b1", "GET", "/branches/b9/").json["instances"], ["w9"])
        self.still_fine()


class RecordTests(MessagesTestCase):
    def test_a_record_under_another_name_is_refused_and_never_stored(self):
        replica = {"apps": {"good": {**APP, "name": "evil"}},
                   "versions": {"app/good": [10**13, "b2"]}}
        self.assertEqual(self.successResultOf(
            self.call("replica.merge", {"replica": replica}))["ok"], True)
        store = self.branches["b1"].store
        self.assertEqual([a.name for a in store.apps()], ["foo"])
        self.assertIsNone(store.version("app/good"))
        # What the store holds is still a replica any branch takes whole.
        self.assertEqual(Replica.from_json(store.replica()).refused, ())
        lines = [formatEvent(e) for e in self.events if e.get("key") == "app/good"]
        self.assertEqual(lines, ["replica.merge from b2: record app/good refused: "
                                 "the record under 'good' is named 'evil'"])
        self.assertEqual(self.request("b1", "GET", "/").json, ["foo"])
        self.still_fine()

    def test_good_records_of_a_merge_are_taken_and_bad_ones_left_out(self):
        replica = {
            "apps": {"good": APP, "bad": {**App("bad").to_json(), "broker": {"port": 0}},
                     "odd": {**App("odd").to_json(), "extra_config": [1]}},
            "queues": {"good": {"q": {"name": "q", "exchange_type": "sideways"}}},
            "tokens": {"t": {"name": "t", "scopes": ["root"], "hash": "0" * 64}},
            "versions": {"app/good": [10**13, "b2"], "app/bad": [10**13, "b2"],
                         "app/odd": [10**13, "b2"], "queue/good/q": [10**13, "b2"],
                         "token/t": [10**13, "b2"], "app/../x": [10**13, "b2"],
                         "shell/x": [10**13, "b2"], "app/late": ["never", "b2"]},
        }
        self.call("replica.merge", {"replica": replica})
        self.assertEqual(self.request("b1", "GET", "/").json, ["foo", "good"])
        self.assertEqual(self.request("b1", "GET", "/good/queues/").json, [])
        self.assertEqual(self.branches["b1"].store.tokens(), [])
        refused = sorted(e["key"] for e in self.events if "key" in e and e.get("why"))
        self.assertEqual(refused, sorted(k for k in replica["versions"] if k != "app/good"))
        self.still_fine()

    def test_a_merge_that_is_no_replica_is_a_400(self):
        for args in ({"replica": []}, {"replica": {"apps": []}}, {"replica": "x"}, {}):
            with self.subTest(args=args):
                self.refused("replica.merge", args)
        self.assertEqual(self.request("b1", "GET", "/").json, ["foo"])
        self.assertGreaterEqual(self.dropped()["invalid"], 4)
        self.still_fine()

    def test_requests_with_odd_arguments_are_400s_not_errors(self):
        odd = [
            ("instance.op", {"op": "get_instance", "args": ["foo"]}),
            ("instance.op", {"op": "get_instance", "args": ["foo", ["w1"]]}),
            ("instance.op", {"op": "__init__", "args": []}),
            ("instance.op", {"op": "put_instance", "args": ["foo", "w1", "x"]}),
            ("instance.op", {"op": "put_instance", "args": ["foo", "w1", {}],
                             "kwargs": {"branch": "b1"}}),
            ("instance.op", {"op": "set_enabled", "args": ["foo", "w1", "yes"]}),
            ("instance.op", {"op": "stats", "args": "foo w1"}),
            ("instance.put", {"app": "foo", "name": 5}),
            ("instance.put", {"app": "foo", "name": "w1", "values": []}),
            ("instance.lookup", {"name": {"$ne": 1}}),
            ("instances.list", {"app": ["foo"]}),
            ("task.get", {"app": "foo", "uuid": ["x"]}),
            ("task.wait", {"app": "foo", "uuid": "x", "timeout": -1}),
            ("task.wait", {"app": "foo", "uuid": "x", "timeout": "forever"}),
        ]
        for method, args in odd:
            with self.subTest(method=method, args=args):
                self.refused(method, args)
        self.assertEqual(self.branches["b1"].store.instances(), [])
        self.still_fine()


class NewerStore(MemoryStore):
    """The store of a branch of a newer cyme: one record this one refuses."""

    def replica(self):
        replica = super().replica()
        replica["apps"]["future"] = {**App("future").to_json(), "new_field": 1}
        replica["versions"]["app/future"] = [10**13, "b3"]
        return replica

    def digest(self):
        return "newer-" + super().digest()


class PullTests(MessagesTestCase):
    def test_a_replica_that_keeps_differing_is_not_pulled_at_every_beat(self):
        b3 = self.branches["b3"]
        b3.store.__class__ = NewerStore
        self.network.sent.clear()
        self.wait(20)
        dumps = [m for m in self.network.sent if m[2] == "replica.dump"]
        # b1 and b2 pull from b3 once each; b3 may pull from each once.
        self.assertLessEqual(len(dumps), 4, dumps)
        self.assertGreater(len(dumps), 0)
        # A new write changes the digests: one more round, no more.
        self.network.sent.clear()
        self.request("b3", "PUT", "/bar/")
        self.wait(20)
        dumps = [m for m in self.network.sent if m[2] == "replica.dump"]
        self.assertLessEqual(len(dumps), 4, dumps)
        self.assertEqual(self.request("b1", "GET", "/").json, ["bar", "foo"])
        self.still_fine()


class ReplyTests(MessagesTestCase):
    def listing_answered_by_b2_with(self, result):
        """
        GET /foo/instances/?fresh=1 on b1, b2 (which owns w0) answering (as
        another build might) C{result}.
        """
        self.network.partition("b2")
        self.network.bodies.clear()
        d = self.branches["b1"].client.request("GET", "/foo/instances/?fresh=1")
        self.settle()
        [ticket] = [json.loads(b)["ticket"] for b in self.network.bodies
                    if json.loads(b).get("method") == "instances.list"]
        self.network.heal("b2")
        self.inject({"v": 3, "type": "reply", "from": "b2", "ticket": ticket, "result": result})
        return self.successResultOf(d)

    def test_odd_replies_never_make_a_listing_fail(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b1")
        self.request("b1", "PUT", "/foo/instances/w0/?branch=b2")
        for result, names in ((["w2", 7, None, ["w3"]], ["w1", "w2"]), ({"w4": 1}, ["w1"]),
                              ("w5", ["w1"])):
            with self.subTest(result=result):
                response = self.listing_answered_by_b2_with(result)
                self.assertEqual(response.code, 200, response.body)
                self.assertEqual(response.json, names)
        self.still_fine()
