"""The original Cyme client's calls, unchanged: reading the autoscale bounds
with an empty POST, a consumer's declaration, the ``!`` no-wait form of
every write, and empty values meaning absent (JSON null, [] or {} clear).
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from cyme.api.testing import api_client
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeControl, FakeProcessReactor, FakeProcessTable
from cyme.supervision.supervisor import Supervisor
from tests.api import against_every_ops
from tests.api.test_web import FORM, JSON, APITestCase


class OriginalClientTestsMixin(APITestCase):
    """The original client's session, with its requests as it sends them
    (every field it was not given sent empty: C{broker=}, C{max=&min=})."""

    def test_session(self):
        self.assertAnswer(self.call("POST", "/foo/", data={"broker": ""}), 201)
        queue = self.assertAnswer(self.call("POST", "/foo/queues/myqueue/", data={
            "exchange": "myex", "exchange_type": "", "routing_key": "x", "options": ""}), 201)
        self.assertEqual(queue, {"name": "myqueue", "exchange": "myex",
                                 "exchange_type": "direct", "routing_key": "x",
                                 "options": {}})
        anonymous = self.assertAnswer(
            self.call("POST", "/foo/instances/", data={"broker": ""}), 201)
        named = self.assertAnswer(
            self.call("POST", "/foo/instances/w2/", data={"broker": ""}), 201)
        self.assertEqual(named["broker"], anonymous["broker"])
        path = f"/foo/instances/{anonymous['name']}"
        # instance.autoscale(): the current bounds, nothing written.
        before = self.snapshot()
        self.assertAnswer(self.call("POST", path + "/autoscale?max=&min="), 200,
                          {"max": 1, "min": 1})
        self.assertEqual(self.snapshot(), before)
        self.assertAnswer(self.call("POST", path + "/autoscale?max=2&min="), 200,
                          {"max": 2, "min": 1})
        self.assertAnswer(self.call("POST", path + "/queues/myqueue/"), 201, {"ok": "ok"})
        # instance.consumers: the names, then each one's declaration.
        names = self.assertAnswer(self.call("GET", path + "/queues/"), 200)
        self.assertEqual(names, ["myqueue"])
        self.assertAnswer(self.call("GET", path + "/queues/myqueue/"), 200, queue)
        self.assertAnswer(self.call("DELETE", path + "/queues/myqueue/"), 200)
        self.assertError(self.call("GET", path + "/queues/myqueue/"), 404,
                         kind="consumer", name="myqueue")
        self.assertAnswer(self.call("DELETE", "/foo/queues/myqueue/"), 200)
        self.assertAnswer(self.call("DELETE", path + "/"), 200)
        self.assertAnswer(self.call("DELETE", "/foo/instances/!/w2/"), 202)
        self.assertAnswer(self.call("DELETE", "/foo/"), 200)
        self.assertEqual(self.snapshot(), ([], {}, []))


class ConsumerTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.setUpFoo()
        self.call("PUT", "/foo/queues/other/")
        self.call("PUT", "/foo/instances/w1/queues/tasks/")

    def test_the_declaration_of_a_consumed_queue(self):
        for path in ["/foo/instances/w1/queues/tasks/", "/foo/instance/w1/queues/tasks"]:
            self.assertAnswer(self.call("GET", path), 200, {
                "name": "tasks", "exchange": "tasks", "exchange_type": "direct",
                "routing_key": "tasks", "options": {}})

    def test_a_queue_it_does_not_consume(self):
        self.assertError(self.call("GET", "/foo/instances/w1/queues/other/"), 404,
                         kind="consumer", name="other")
        self.assertError(self.call("GET", "/foo/instances/w1/queues/nope/"), 404,
                         name="nope")
        self.assertError(self.call("GET", "/foo/instances/nope/queues/tasks/"), 404,
                         kind="instance", name="nope")
        self.assertError(self.call("GET", "/bar/instances/w1/queues/tasks/"), 404)
        self.assertError(self.call("GET", "/foo/instances/w1/queues/a..b/"), 400,
                         field="queue")


class NoWaitTestsMixin(APITestCase):
    """The C{!} form of every write answers 202 and does what the write does."""

    def setUp(self):
        super().setUp()
        self.setUpFoo()

    def test_apps(self):
        self.assertEqual(self.assertAnswer(self.call("PUT", "/!/bar/"), 202)["name"], "bar")
        self.assertEqual(self.store.get_app("bar").name, "bar")
        self.assertAnswer(self.call("POST", "/!/bar/?arguments=-O%20fair"), 202)
        self.assertEqual(self.store.get_app("bar").arguments, "-O fair")
        self.assertAnswer(self.call("DELETE", "/!/bar/"), 202, {"ok": "ok"})
        self.assertEqual([a.name for a in self.store.apps()], ["foo"])

    def test_queues(self):
        self.assertAnswer(self.call("PUT", "/foo/queues/!/q2/?exchange=x"), 202)
        self.assertEqual(self.store.get_queue("foo", "q2").exchange, "x")
        self.assertAnswer(self.call("DELETE", "/foo/queues/!/q2/"), 202, {"ok": "ok"})
        self.assertEqual([q.name for q in self.store.queues("foo")], ["tasks"])

    def test_consumers(self):
        for path in ["/foo/instances/w1/queues/!/tasks/", "/foo/instance/w1/queues/!/tasks"]:
            self.assertAnswer(self.call("PUT", path), 202, {"ok": "ok"})
            self.assertEqual(self.store.get_instance("w1").queues, ("tasks",))
            self.assertAnswer(self.call("DELETE", path), 202, {"ok": "ok"})
            self.assertEqual(self.store.get_instance("w1").queues, ())

    def test_instances(self):
        self.assertAnswer(self.call("POST", "/foo/instances/!/w1/autoscale/?max=3"), 202,
                          {"max": 3, "min": 1})
        self.assertEqual(self.store.get_instance("w1").max_concurrency, 3)
        self.assertAnswer(self.call("POST", "/foo/instance/!/w1/disable/"), 202)
        self.assertFalse(self.store.get_instance("w1").is_enabled)
        self.assertAnswer(self.call("POST", "/foo/instances/!/w1/enable/"), 202)
        self.assertTrue(self.store.get_instance("w1").is_enabled)
        self.assertAnswer(self.call("DELETE", "/foo/instances/!/w1/"), 202, {"ok": "ok"})
        self.call("PUT", "/foo/instances/!/w2/")
        self.assertAnswer(self.call("DELETE", "/instances/!/w2/"), 202, {"ok": "ok"})
        anonymous = self.assertAnswer(self.call("PUT", "/foo/instance/!/"), 202)
        self.assertAnswer(self.call("DELETE", f"/foo/instance/!/{anonymous['name']}/"), 202)
        self.assertEqual(self.store.instances(), [])

    def test_tokens(self):
        made = self.assertAnswer(self.call("POST", "/tokens/!/?name=ci&scope=read"), 202)
        self.assertTrue(made["token"].startswith("cyme_"))
        self.assertAnswer(self.call("DELETE", "/tokens/!/ci/"), 202, {"ok": "ok"})
        self.assertEqual(self.store.tokens(), [])

    def test_bad_input_is_still_refused(self):
        before = self.snapshot()
        self.assertError(self.call("PUT", "/foo/queues/!/q2/?exchange_type=odd"), 400,
                         field="exchange_type")
        self.assertError(self.call("DELETE", "/foo/instances/!/nope/"), 404, name="nope")
        self.assertError(self.call("POST", "/foo/instances/!/w1/autoscale/?max=0"), 400,
                         field="max")
        self.assertEqual(self.snapshot(), before)

    def test_not_for_reads(self):
        self.assertError(self.call("GET", "/foo/queues/!/tasks/"), 405)


class EmptyMeansAbsentTestsMixin(APITestCase):
    """C{field=} leaves a value as it is, for apps and instances alike; JSON
    null (or [], {}) clears it."""

    def setUp(self):
        super().setUp()
        self.setUpFoo()
        self.assertAnswer(self.call("POST", "/foo/", json={
            "arguments": "-O fair", "extra_config": {"worker_prefetch_multiplier": 2},
            "allowed_hosts": ["example.com"], "task_timeout": 5}), 200)
        self.assertAnswer(self.call("POST", "/foo/instances/w1/", json={
            "arguments": "-O fair", "queues": ["tasks"], "max_concurrency": 3,
            "pool": "solo", "broker": "amqp://me:me@w1:5672//"}), 200)

    def test_empty_values_change_nothing(self):
        before = self.snapshot()
        fields = "broker=&hostname=&arguments=&extra_config=&allowed_hosts=&task_timeout="
        self.assertAnswer(self.call("POST", "/foo/", data=fields.encode(), headers=FORM), 200)
        self.assertAnswer(self.call("POST", f"/foo/?{fields}&imports="), 200)
        fields = ("broker=&arguments=&queues=&max_concurrency=&min_concurrency=&pool="
                  "&is_enabled=&extra_config=")
        self.assertAnswer(self.call("POST", "/foo/instances/w1/", data=fields.encode(),
                                    headers=FORM), 200)
        self.assertAnswer(self.call("POST", "/foo/instances/w1/", json={
            "arguments": "", "queues": "", "broker": ""}), 200)
        self.assertEqual(self.snapshot(), before)

    def test_a_branch_that_is_no_name(self):
        """?branch= of the wrong type is a 400 naming it, not a 500 (the fuzzer's find)."""
        before = self.snapshot()
        for value in [["b1"], {"id": "b1"}, 3, "a/b"]:
            self.assertError(self.call("PUT", "/foo/instances/w2/", json={"branch": value}),
                             400, field="branch")
        self.assertEqual(self.snapshot(), before)
        self.assertAnswer(self.call("PUT", "/foo/instances/w2/", json={"branch": None}), 201)

    def test_null_clears(self):
        app = self.assertAnswer(self.call("POST", "/foo/", json={
            "arguments": None, "extra_config": None, "allowed_hosts": None,
            "task_timeout": None}), 200)
        self.assertEqual(
            (app["arguments"], app["extra_config"], app["allowed_hosts"], app["task_timeout"]),
            ("", {}, [], 60.0))
        instance = self.assertAnswer(self.call("POST", "/foo/instances/w1/", json={
            "arguments": None, "queues": None, "max_concurrency": None, "pool": None,
            "broker": None}), 200)
        self.assertEqual(
            (instance["arguments"], instance["queues"], instance["max_concurrency"],
             instance["pool"], instance["broker"]["hostname"]),
            ("", [], 1, "prefork", "127.0.0.1"))
        self.assertIsNone(self.store.get_instance("w1").broker)  # the app's, again

    def test_empty_list_and_object_clear(self):
        app = self.assertAnswer(self.call("PUT", "/foo/", json={
            "extra_config": {}, "allowed_hosts": []}), 200)
        self.assertEqual((app["extra_config"], app["allowed_hosts"]), ({}, []))
        instance = self.assertAnswer(self.call("PUT", "/foo/instances/w1/", data=b'{"queues": []}',
                                               headers=JSON), 200)
        self.assertEqual(instance["queues"], [])

    def test_an_app_broker_null_is_the_default_broker(self):
        self.call("POST", "/foo/?broker=amqp://me:me@w1:5672//")
        app = self.assertAnswer(self.call("POST", "/foo/", json={"broker": None}), 200)
        self.assertEqual(app["broker"]["hostname"], "127.0.0.1")


against_every_ops(globals(), OriginalClientTestsMixin, ConsumerTestsMixin, NoWaitTestsMixin,
                  EmptyMeansAbsentTestsMixin)


class NoWaitRestartTests(SynchronousTestCase):
    """C{POST .../instances/!/<name>/restart/} answers before the worker is back."""

    def test_restart_answers_at_once(self):
        reactor = FakeProcessReactor()
        control = FakeControl(reactor)
        store = MemoryStore()
        root = self.mktemp()
        os.makedirs(root)
        supervisor = Supervisor(store, control, reactor, root, hostname="h",
                                processes=FakeProcessTable(), python="/py")
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        store.subscribe(supervisor.reconcile)
        client, _ = api_client(store, supervisor=supervisor, control=control,
                               ready_timeout=10.0)
        client.request("PUT", "/foo/")
        created = client.request("PUT", "/foo/instances/w1/")
        reactor.advance(0)
        control.up("w1@h")
        reactor.advance(0.05)
        client.flush()
        self.assertEqual(self.successResultOf(created).code, 201)
        waiting = client.request("POST", "/foo/instances/w1/restart/")
        reactor.advance(0)
        client.flush()
        self.assertNoResult(waiting)
        answer = client.request("POST", "/foo/instances/!/w1/restart/")
        reactor.advance(0)
        client.flush()
        self.assertEqual(self.successResultOf(answer).code, 202)
