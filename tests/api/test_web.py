"""Tests for the HTTP API (cyme.api.routes, cyme.api.http) through StubTreq.

Every request goes through L{cyme.api.testing.APIClient}, and L{APITestCase.call}
checks that every answer, error or not, is C{application/json}.  The tests
of the routes are mixins run against every L{IOperations} (see
L{tests.api.against_every_ops}).
"""

import json
import uuid

from twisted.internet.task import Clock
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cyme.api.http import MAX_BODY, LimitedRequest, make_site
from cyme.state.models import App, Broker, Instance, Queue
from cyme.state.store import IStore, MemoryStore
from cyme.api.guard import GuardResource
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.interfaces import IOperations
from cyme.operations.local import LocalOperations
from tests.api import against_every_ops
from tests.state.test_models import ORIGINAL_BROKER

FORM = {"Content-Type": ["application/x-www-form-urlencoded"]}
JSON = {"Content-Type": ["application/json"]}


class APITestCase:
    """
    A branch's API over a fresh L{MemoryStore}; C{makeOps(store,
    **collaborators)} (mixed in) builds the operations it serves.
    """

    def setUp(self):
        self.store = MemoryStore()
        self.client, self.ops = self.client_of(self.store)

    def client_of(self, store, **collaborators):
        """A client of a new API over C{store}, and the operations it serves."""
        ops = self.makeOps(store, **collaborators)
        return APIClient(BranchAPI(ops, clock=Clock()).resource()), ops

    def call(self, method, path, **kwargs):
        """Send a request; every answer must be JSON."""
        response = self.successResultOf(self.client.request(method, path, **kwargs))
        self.assertEqual(
            response.headers.getRawHeaders("Content-Type"),
            ["application/json"],
            f"{method} {path} answered {response.code} without the JSON content type",
        )
        json.loads(response.body)  # the body parses as JSON
        return response

    def assertAnswer(self, response, code, body=None):
        self.assertEqual(response.code, code, response.body)
        if body is not None:
            self.assertEqual(response.json, body)
        return response.json

    def assertError(self, response, code, **fields):
        """An error answer: C{{"error": "..."}} plus the C{fields} given."""
        data = self.assertAnswer(response, code)
        self.assertIsInstance(data, dict)
        self.assertIsInstance(data.get("error"), str)
        self.assertTrue(data["error"])
        for key, value in fields.items():
            self.assertEqual(data.get(key), value, data)
        self.assertNotIn(b"Traceback", response.body)
        return data

    def snapshot(self):
        """Everything the store holds, to check that nothing changed."""
        return (
            self.store.apps(),
            {a.name: self.store.queues(a.name) for a in self.store.apps()},
            self.store.instances(),
        )

    def setUpFoo(self):
        """App foo with queue tasks, instance w1 consuming nothing."""
        self.assertAnswer(self.call("PUT", "/foo/"), 201)
        self.assertAnswer(self.call("PUT", "/foo/queues/tasks/"), 201)
        self.assertAnswer(self.call("PUT", "/foo/instances/w1/"), 201)


class WalkthroughTestsMixin(APITestCase):
    """The original Cyme's walkthrough, in its order."""

    def test_walkthrough(self):
        # Create a new application named foo.
        app = self.assertAnswer(self.call("POST", "/foo/"), 201)
        self.assertEqual(app["name"], "foo")
        self.assertEqual(app["broker"], ORIGINAL_BROKER)

        # Edit the broker connection details with a POST, as curl -d does.
        bar = self.assertAnswer(
            self.call(
                "POST", "/bar/", data=b"hostname=w1&userid=me&password=me&vhost=/", headers=FORM
            ),
            201,
        )
        self.assertEqual(
            bar["broker"],
            {"hostname": "w1", "userid": "me", "password": "me", "port": 5672,
             "virtual_host": "/", "ssl": False},
        )

        # Create a new (anonymous) worker instance.
        instance = self.assertAnswer(self.call("PUT", "/foo/instances/"), 201)
        name = instance["name"]
        self.assertEqual(str(uuid.UUID(name)), name)
        self.assertEqual(
            {k: instance[k] for k in ["is_enabled", "name", "queues", "broker",
                                      "max_concurrency", "min_concurrency"]},
            {
                "is_enabled": True,
                "name": name,
                "queues": [],
                "broker": ORIGINAL_BROKER,
                "max_concurrency": 1,
                "min_concurrency": 1,
            },
        )

        # List the available instances.
        self.assertAnswer(self.call("GET", "/foo/instances/"), 200, [name])

        # Declare the queue tasks.
        self.assertAnswer(
            self.call("POST", "/foo/queues/tasks/", data=b"exchange=tasks&routing_key=tasks",
                      headers=FORM),
            201,
            {"name": "tasks", "exchange": "tasks", "routing_key": "tasks",
             "exchange_type": "direct", "options": {}},
        )
        self.assertAnswer(self.call("GET", "/foo/queues/"), 200, ["tasks"])

        # Make the instance consume from it.
        self.assertAnswer(
            self.call("PUT", f"/foo/instances/{name}/queues/tasks"), 201, {"ok": "ok"}
        )
        got = self.assertAnswer(self.call("GET", f"/foo/instances/{name}/"), 200)
        self.assertEqual(got["queues"], ["tasks"])
        self.assertEqual(self.store.get_instance(name).queues, ("tasks",))

        # Clean up: cancel consuming ...
        self.assertAnswer(
            self.call("DELETE", f"/foo/instances/{name}/queues/tasks"), 200, {"ok": "ok"}
        )
        self.assertEqual(self.store.get_instance(name).queues, ())

        # ... delete the queue (consumed again, so it is removed from w) ...
        self.assertAnswer(self.call("PUT", f"/foo/instances/{name}/queues/tasks/"), 201)
        self.assertAnswer(self.call("DELETE", "/foo/queues/tasks/"), 200, {"ok": "ok"})
        self.assertAnswer(self.call("GET", "/foo/queues/"), 200, [])
        self.assertEqual(
            self.assertAnswer(self.call("GET", f"/foo/instances/{name}/"), 200)["queues"], []
        )

        # ... and finally the worker instance.
        self.assertAnswer(self.call("DELETE", f"/foo/instances/{name}/"), 200, {"ok": "ok"})
        self.assertError(self.call("GET", f"/foo/instances/{name}/"), 404, name=name)
        self.assertAnswer(self.call("GET", "/foo/instances/"), 200, [])

        # Deleting an app is the last step of all.
        self.assertAnswer(self.call("GET", "/"), 200, ["bar", "foo"])
        self.assertAnswer(self.call("DELETE", "/foo/"), 200, {"ok": "ok"})
        self.assertAnswer(self.call("GET", "/"), 200, ["bar"])


class PingTestsMixin(APITestCase):
    def test_ping(self):
        for path in ["/ping/", "/ping"]:
            self.assertAnswer(self.call("GET", path), 200, {"ok": "pong"})


class AppTestsMixin(APITestCase):
    def test_list_sorted(self):
        self.assertAnswer(self.call("GET", "/"), 200, [])
        for name in ["zeta", "alpha", "beta"]:
            self.call("PUT", f"/{name}/")
        self.assertAnswer(self.call("GET", "/"), 200, ["alpha", "beta", "zeta"])

    def test_get(self):
        created = self.assertAnswer(self.call("PUT", "/foo/"), 201)
        self.assertEqual(self.assertAnswer(self.call("GET", "/foo/"), 200), created)
        self.assertEqual(self.store.get_app("foo"), App(name="foo"))

    def test_update_returns_200_and_keeps_broker(self):
        self.call("PUT", "/foo/?hostname=w1&userid=me")
        updated = self.assertAnswer(self.call("POST", "/foo/?arguments=-O%20fair"), 200)
        self.assertEqual(updated["broker"]["hostname"], "w1")
        self.assertEqual(updated["arguments"], "-O fair")
        self.assertEqual(self.store.get_app("foo").broker, Broker(hostname="w1", userid="me"))

    def test_update_broker(self):
        self.call("PUT", "/foo/?hostname=w1&userid=me")
        updated = self.assertAnswer(self.call("PUT", "/foo/?hostname=w2"), 200)
        # A broker named anew starts from the defaults.
        self.assertEqual(updated["broker"], {**ORIGINAL_BROKER, "hostname": "w2"})

    def test_broker_fields(self):
        app = self.assertAnswer(
            self.call(
                "PUT",
                "/foo/",
                data={"hostname": "w1", "port": "5673", "userid": "me", "password": "pw",
                      "virtual_host": "prod"},
            ),
            201,
        )
        self.assertEqual(
            app["broker"],
            {"hostname": "w1", "port": 5673, "userid": "me", "password": "pw",
             "virtual_host": "prod", "ssl": False},
        )

    def test_broker_url(self):
        app = self.assertAnswer(
            self.call("PUT", "/foo/", data={"broker": "amqp://me:p%40ss@w1:5673//"}), 201
        )
        self.assertEqual(
            app["broker"],
            {"hostname": "w1", "port": 5673, "userid": "me", "password": "p@ss",
             "virtual_host": "/", "ssl": False},
        )

    def test_a_broker_over_tls(self):
        # The form field: TLS on 5671 unless a port is named.
        app = self.assertAnswer(self.call("PUT", "/foo/", data={"hostname": "w1",
                                                                "ssl": "true"}), 201)
        self.assertEqual(app["broker"], {**ORIGINAL_BROKER, "hostname": "w1", "port": 5671,
                                         "ssl": True})
        self.assertEqual(self.store.get_app("foo").broker.as_url(),
                         "amqps://guest:guest@w1:5671/%2F")
        # An amqps:// URL, for an instance's own broker too.
        instance = self.assertAnswer(self.call(
            "PUT", "/foo/instances/w1/",
            data={"broker": "amqps://me:pw@w2:5999/prod", "ssl": "yes"}), 201)
        self.assertEqual(instance["broker"], {"hostname": "w2", "port": 5999, "userid": "me",
                                              "password": "pw", "virtual_host": "prod",
                                              "ssl": True})
        # JSON, and a port of its own.
        app = self.assertAnswer(self.call("PUT", "/bar/", json={
            "hostname": "w3", "port": 5672, "ssl": True}), 201)
        self.assertEqual((app["broker"]["port"], app["broker"]["ssl"]), (5672, True))

    def test_a_broker_tls_cannot_be_said_twice_two_ways(self):
        for data, field in [
            ({"broker": "amqps://w1/", "ssl": "false"}, "ssl"),
            ({"broker": "amqp://w1/", "ssl": "true"}, "ssl"),
            ({"hostname": "w1", "ssl": "maybe"}, "ssl"),
            ({"broker": "amqpx://w1/"}, "broker"),
        ]:
            with self.subTest(data=data):
                response = self.successResultOf(self.client.request("PUT", "/foo/", data=data))
                self.assertEqual(response.code, 400, response.json)
                self.assertEqual(response.json["field"], field)
        self.assertEqual(self.store.apps(), [])

    def test_without_hostname_broker_fields_are_ignored(self):
        # As the original Cyme says: no hostname, the default broker.
        app = self.assertAnswer(self.call("PUT", "/foo/?userid=me&port=1234"), 201)
        self.assertEqual(app["broker"], ORIGINAL_BROKER)

    def test_default_broker_is_the_branchs(self):
        client, _ = self.client_of(MemoryStore(), default_broker=Broker(hostname="rabbit"))
        response = self.successResultOf(client.request("PUT", "/foo/"))
        self.assertEqual(response.json["broker"]["hostname"], "rabbit")

    def test_delete_cascades(self):
        self.setUpFoo()
        self.call("PUT", "/foo/instances/w1/queues/tasks/")
        self.call("PUT", "/foo/instances/w2/")
        self.call("PUT", "/bar/")
        self.call("PUT", "/bar/queues/tasks/")
        self.call("PUT", "/bar/instances/b1/?queues=tasks")
        self.assertAnswer(self.call("DELETE", "/foo/"), 200, {"ok": "ok"})
        self.assertEqual([a.name for a in self.store.apps()], ["bar"])
        self.assertEqual(self.store.queues("foo"), [])
        self.assertEqual([i.name for i in self.store.instances()], ["b1"])
        self.assertError(self.call("GET", "/foo/"), 404, kind="app", name="foo")
        self.assertError(self.call("GET", "/foo/instances/"), 404, kind="app")
        self.assertError(self.call("GET", "/foo/queues/tasks/"), 404, kind="app")
        # A new app of the same name starts empty.
        self.call("PUT", "/foo/")
        self.assertAnswer(self.call("GET", "/foo/instances/"), 200, [])
        self.assertAnswer(self.call("GET", "/foo/queues/"), 200, [])

    def test_reserved_names(self):
        for name in ["ping", "admin", "branches", "metrics", "instances", "queues", "queue",
                     "query"]:
            with self.subTest(name=name):
                self.assertError(self.call("PUT", f"/{name}/"), 400, field="name")
                self.assertError(self.call("POST", f"/{name}"), 400, field="name")
        self.assertEqual(self.store.apps(), [])


class InstanceTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.call("PUT", "/foo/")
        self.call("PUT", "/foo/queues/tasks/")

    def test_named(self):
        created = self.assertAnswer(self.call("PUT", "/foo/instances/w1/"), 201)
        self.assertEqual(created["name"], "w1")
        self.assertEqual(created["broker"], ORIGINAL_BROKER)
        self.assertEqual(self.assertAnswer(self.call("GET", "/foo/instances/w1/"), 200), created)
        self.assertEqual(self.store.get_instance("w1"), Instance(name="w1", app="foo"))

    def test_update(self):
        self.call("PUT", "/foo/instances/w1/?max_concurrency=4")
        updated = self.assertAnswer(self.call("PUT", "/foo/instances/w1/?min_concurrency=2"), 200)
        self.assertEqual((updated["max_concurrency"], updated["min_concurrency"]), (4, 2))
        self.assertEqual(self.store.get_instance("w1").max_concurrency, 4)

    def test_anonymous_names_are_unique(self):
        names = {
            self.assertAnswer(self.call("POST", "/foo/instances"), 201)["name"]
            for _ in range(3)
        }
        self.assertEqual(len(names), 3)
        self.assertEqual(sorted(names), [i.name for i in self.store.instances("foo")])

    def test_no_wait_forms_answer_202(self):
        # Without a supervisor nothing is waited for; the status says which
        # form was asked all the same.
        named = self.assertAnswer(self.call("PUT", "/foo/instances/!/w2/?max_concurrency=2"), 202)
        self.assertEqual((named["name"], named["max_concurrency"]), ("w2", 2))
        anonymous = self.assertAnswer(self.call("POST", "/foo/instances/!/"), 202)
        singular = self.assertAnswer(self.call("PUT", "/foo/instance/!/w3"), 202)
        self.assertEqual(singular["name"], "w3")
        self.assertEqual(
            sorted(i.name for i in self.store.instances("foo")),
            sorted(["w2", "w3", anonymous["name"]]),
        )
        self.assertAnswer(self.call("PUT", "/foo/instances/!/w2/?max_concurrency=3"), 202)
        self.assertEqual(self.store.get_instance("w2").max_concurrency, 3)

    def test_anonymous_with_fields(self):
        created = self.assertAnswer(
            self.call("PUT", "/foo/instances/", json={"max_concurrency": 4, "queues": ["tasks"]}),
            201,
        )
        self.assertEqual((created["max_concurrency"], created["queues"]), (4, ["tasks"]))

    def test_fields(self):
        created = self.assertAnswer(
            self.call(
                "PUT",
                "/foo/instances/w1/",
                data={"max_concurrency": "8", "min_concurrency": "0", "is_enabled": "false",
                      "queues": "tasks", "pool": "threads"},
            ),
            201,
        )
        self.assertEqual(
            {k: created[k] for k in ["max_concurrency", "min_concurrency", "is_enabled",
                                     "queues", "pool"]},
            {"max_concurrency": 8, "min_concurrency": 0, "is_enabled": False,
             "queues": ["tasks"], "pool": "threads"},
        )

    def test_own_broker(self):
        created = self.assertAnswer(
            self.call("PUT", "/foo/instances/w1/?hostname=w9&vhost=prod"), 201
        )
        self.assertEqual(created["broker"], {**ORIGINAL_BROKER, "hostname": "w9",
                                             "virtual_host": "prod"})
        self.assertEqual(self.store.get_instance("w1").broker,
                         Broker(hostname="w9", virtual_host="prod"))

    def test_app_broker_is_shown(self):
        self.call("PUT", "/foo/?hostname=w1")
        self.call("PUT", "/foo/instances/w1/")
        got = self.assertAnswer(self.call("GET", "/foo/instances/w1/"), 200)
        self.assertEqual(got["broker"]["hostname"], "w1")
        # The instance follows its app's broker rather than copying it.
        self.assertIsNone(self.store.get_instance("w1").broker)

    def test_list_sorted_per_app(self):
        self.call("PUT", "/bar/")
        for name in ["w3", "w1", "w2"]:
            self.call("PUT", f"/foo/instances/{name}/")
        self.call("PUT", "/bar/instances/b1/")
        self.assertAnswer(self.call("GET", "/foo/instances/"), 200, ["w1", "w2", "w3"])
        self.assertAnswer(self.call("GET", "/bar/instances"), 200, ["b1"])

    def test_instance_of_another_app_is_not_found(self):
        self.call("PUT", "/bar/")
        self.call("PUT", "/foo/instances/w1/")
        self.assertError(self.call("GET", "/bar/instances/w1/"), 404, kind="instance", name="w1")
        self.assertError(self.call("DELETE", "/bar/instances/w1/"), 404, kind="instance")
        self.assertEqual([i.name for i in self.store.instances()], ["w1"])

    def test_conflict_with_another_app(self):
        self.call("PUT", "/bar/")
        self.call("PUT", "/foo/instances/w1/?max_concurrency=3")
        before = self.snapshot()
        for method in ["PUT", "POST"]:
            data = self.assertError(
                self.call(method, "/bar/instances/w1/?max_concurrency=5"), 409, name="w1",
                app="foo",
            )
            self.assertIn("w1", data["error"])
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.store.get_instance("w1").max_concurrency, 3)

    def test_queues_of_instance(self):
        self.call("PUT", "/foo/instances/w1/?queues=tasks")
        self.assertAnswer(self.call("GET", "/foo/instances/w1/queues/"), 200, ["tasks"])
        self.assertAnswer(self.call("GET", "/foo/instance/w1/queues"), 200, ["tasks"])

    def test_undeclared_queue_in_fields(self):
        data = self.assertError(
            self.call("PUT", "/foo/instances/w1/?queues=tasks,nope"), 404, kind="queue",
            name="nope",
        )
        self.assertIn("nope", data["error"])
        self.assertEqual(self.store.instances(), [])

    def test_delete(self):
        self.call("PUT", "/foo/instances/w1/")
        self.assertAnswer(self.call("DELETE", "/foo/instances/w1"), 200, {"ok": "ok"})
        self.assertEqual(self.store.instances(), [])
        self.assertError(self.call("DELETE", "/foo/instances/w1/"), 404, kind="instance")


class QueueTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.call("PUT", "/foo/")

    def test_defaults_are_stored_and_shown(self):
        expected = {"name": "tasks", "exchange": "tasks", "routing_key": "tasks",
                    "exchange_type": "direct", "options": {}}
        self.assertAnswer(self.call("PUT", "/foo/queues/tasks/"), 201, expected)
        self.assertAnswer(self.call("GET", "/foo/queues/tasks/"), 200, expected)
        self.assertEqual(self.store.get_queue("foo", "tasks"), Queue(name="tasks"))

    def test_fields(self):
        expected = {"name": "img", "exchange": "media", "routing_key": "img.#",
                    "exchange_type": "topic",
                    "options": {"max_priority": 10, "queue_arguments": {"x-queue-mode": "lazy"}}}
        self.assertAnswer(
            self.call(
                "POST",
                "/foo/queues/img/",
                data={"exchange": "media", "routing_key": "img.#", "exchange_type": "topic",
                      "options": '{"max_priority": 10, '
                                  '"queue_arguments": {"x-queue-mode": "lazy"}}'},
            ),
            201,
            expected,
        )
        self.assertEqual(self.store.get_queue("foo", "img"), Queue.from_json(expected))

    def test_replace(self):
        self.call("PUT", "/foo/queues/tasks/?exchange_type=fanout")
        replaced = self.assertAnswer(self.call("PUT", "/foo/queues/tasks/?exchange=ex"), 200)
        self.assertEqual(replaced["exchange"], "ex")
        self.assertEqual(self.store.get_queue("foo", "tasks").exchange, "ex")

    def test_list_per_app(self):
        self.call("PUT", "/bar/")
        for name in ["z", "a"]:
            self.call("PUT", f"/foo/queues/{name}")
        self.assertAnswer(self.call("GET", "/foo/queues"), 200, ["a", "z"])
        self.assertAnswer(self.call("GET", "/bar/queues/"), 200, [])
        self.assertError(self.call("GET", "/bar/queues/a/"), 404, kind="queue", name="a")

    def test_delete_removes_it_from_instances(self):
        self.call("PUT", "/foo/queues/tasks/")
        self.call("PUT", "/foo/queues/images/")
        self.call("PUT", "/foo/instances/w1/?queues=tasks,images")
        self.call("PUT", "/foo/instances/w2/", data=[("queues", "tasks")])
        self.assertAnswer(self.call("DELETE", "/foo/queues/tasks"), 200, {"ok": "ok"})
        self.assertAnswer(self.call("GET", "/foo/instances/w1/queues/"), 200, ["images"])
        self.assertEqual(self.store.get_instance("w2").queues, ())
        self.assertError(self.call("GET", "/foo/queues/tasks/"), 404, kind="queue")
        self.assertError(self.call("DELETE", "/foo/queues/tasks/"), 404, kind="queue")


class ConsumerTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.setUpFoo()

    def test_consume_and_cancel_every_spelling(self):
        for collection in ["instances", "instance"]:
            for slash in ["", "/"]:
                path = f"/foo/{collection}/w1/queues/tasks{slash}"
                with self.subTest(path=path):
                    self.assertAnswer(self.call("PUT", path), 201, {"ok": "ok"})
                    self.assertEqual(self.store.get_instance("w1").queues, ("tasks",))
                    self.assertAnswer(self.call("DELETE", path), 200, {"ok": "ok"})
                    self.assertEqual(self.store.get_instance("w1").queues, ())
                    self.assertAnswer(self.call("POST", path), 201, {"ok": "ok"})
                    self.assertAnswer(self.call("DELETE", path), 200, {"ok": "ok"})

    def test_consuming_twice(self):
        self.assertAnswer(self.call("PUT", "/foo/instances/w1/queues/tasks/"), 201)
        self.assertAnswer(self.call("PUT", "/foo/instances/w1/queues/tasks/"), 200, {"ok": "ok"})
        self.assertEqual(self.store.get_instance("w1").queues, ("tasks",))

    def test_order_is_kept(self):
        self.call("PUT", "/foo/queues/images/")
        self.call("PUT", "/foo/instances/w1/queues/tasks/")
        self.call("PUT", "/foo/instances/w1/queues/images/")
        self.assertEqual(self.store.get_instance("w1").queues, ("tasks", "images"))

    def test_cancel_not_consumed(self):
        self.assertAnswer(self.call("DELETE", "/foo/instances/w1/queues/tasks/"), 200)
        self.assertEqual(self.store.get_instance("w1").queues, ())

    def test_undeclared_queue(self):
        before = self.snapshot()
        for method in ["PUT", "POST", "DELETE"]:
            data = self.assertError(
                self.call(method, "/foo/instances/w1/queues/nope/"), 404, kind="queue",
                name="nope",
            )
            self.assertIn("nope", data["error"])
        self.assertEqual(self.snapshot(), before)

    def test_queue_of_another_app(self):
        self.call("PUT", "/bar/")
        self.call("PUT", "/bar/queues/only-bar/")
        self.assertError(
            self.call("PUT", "/foo/instances/w1/queues/only-bar/"), 404, name="only-bar"
        )

    def test_unknown_instance(self):
        self.assertError(
            self.call("PUT", "/foo/instances/nope/queues/tasks/"), 404, kind="instance",
            name="nope",
        )


class AutoscaleTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.setUpFoo()

    def test_get(self):
        for path in ["/foo/instances/w1/autoscale/", "/foo/instance/w1/autoscale"]:
            self.assertAnswer(self.call("GET", path), 200, {"max": 1, "min": 1})

    def test_set_with_query(self):
        self.assertAnswer(
            self.call("POST", "/foo/instance/w1/autoscale/?max=8&min=2"), 200,
            {"max": 8, "min": 2},
        )
        self.assertAnswer(self.call("GET", "/foo/instances/w1/autoscale"), 200,
                          {"max": 8, "min": 2})
        instance = self.store.get_instance("w1")
        self.assertEqual((instance.max_concurrency, instance.min_concurrency), (8, 2))

    def test_set_one_of_them(self):
        # Within the default --max-concurrency (4 per CPU) of any machine.
        self.call("POST", "/foo/instances/w1/autoscale/?max=3&min=2")
        self.assertAnswer(self.call("PUT", "/foo/instances/w1/autoscale/", data={"max": "4"}),
                          200, {"max": 4, "min": 2})
        self.assertAnswer(self.call("POST", "/foo/instances/w1/autoscale", json={"min": 0}),
                          200, {"max": 4, "min": 0})

    def test_errors_name_the_parameter(self):
        before = self.snapshot()
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?max=lots"), 400,
                         field="max")
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?max=0"), 400,
                         field="max")
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?min=-1"), 400,
                         field="min")
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?max=2&min=3"), 400,
                         field="min")
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?max=2&workers=3"), 400,
                         field="workers")
        self.assertEqual(self.snapshot(), before)

    def test_unknown_instance(self):
        self.assertError(self.call("GET", "/foo/instances/nope/autoscale/"), 404, name="nope")
        self.assertError(self.call("POST", "/foo/instances/nope/autoscale/?max=2"), 404,
                         name="nope")


class RequestFormTestsMixin(APITestCase):
    """POST and PUT, query strings, form and JSON bodies, trailing slashes."""

    def test_post_and_put_are_the_same(self):
        for method, app in [("PUT", "a1"), ("POST", "a2")]:
            self.assertAnswer(self.call(method, f"/{app}/?hostname=w1"), 201)
            self.assertAnswer(self.call(method, f"/{app}/queues/q/?exchange=e"), 201)
            self.assertAnswer(self.call(method, f"/{app}/instances/{app}-w/?queues=q"), 201)
            self.assertAnswer(self.call(method, f"/{app}/instances/"), 201)
            self.assertAnswer(self.call(method, f"/{app}/instances/{app}-w/queues/q/"), 200)
            self.assertAnswer(self.call(method, f"/{app}/instances/{app}-w/autoscale/?max=3"),
                              200)
        self.assertEqual(self.store.get_app("a1").broker, self.store.get_app("a2").broker)
        self.assertEqual(self.store.queues("a1"), self.store.queues("a2"))
        w1, w2 = self.store.get_instance("a1-w"), self.store.get_instance("a2-w")
        self.assertEqual(attrs_without(w1, "name", "app"), attrs_without(w2, "name", "app"))

    def test_query_string_carries_the_data(self):
        for method in ["PUT", "POST"]:
            self.call(method, "/foo/?hostname=w1&port=5673")
            self.assertEqual(self.store.get_app("foo").broker, Broker(hostname="w1", port=5673))
            self.call(method, "/foo/queues/q/?exchange=e&exchange_type=fanout")
            self.assertEqual(self.store.get_queue("foo", "q").exchange_type, "fanout")
            self.call(method, "/foo/instances/w1/?max_concurrency=6&queues=q")
            self.assertEqual(self.store.get_instance("w1").max_concurrency, 6)
            self.call("DELETE", "/foo/")

    def test_body_over_query(self):
        self.call("PUT", "/foo/")
        queue = self.assertAnswer(
            self.call("POST", "/foo/queues/q/?exchange=a&routing_key=r", data={"exchange": "b"}),
            201,
        )
        self.assertEqual((queue["exchange"], queue["routing_key"]), ("b", "r"))

    def test_form_body_without_content_type(self):
        # curl -d sends a form; a bare body is read as one too.
        self.assertAnswer(self.call("POST", "/foo/", data=b"hostname=w1"), 201)
        self.assertEqual(self.store.get_app("foo").broker.hostname, "w1")

    def test_json_body(self):
        app = self.assertAnswer(
            self.call("PUT", "/foo/", json={"hostname": "w1", "port": 5673, "vhost": "v"}), 201
        )
        self.assertEqual(app["broker"], {**ORIGINAL_BROKER, "hostname": "w1", "port": 5673,
                                         "virtual_host": "v"})
        self.call("PUT", "/foo/queues/q/", json={"options": {"max_priority": 10}})
        self.assertEqual(self.store.get_queue("foo", "q").options, {"max_priority": 10})
        instance = self.assertAnswer(
            self.call(
                "PUT",
                "/foo/instances/w1/",
                data=json.dumps({"queues": ["q"], "max_concurrency": 4, "is_enabled": False,
                                 "broker": {"hostname": "w2"}}).encode(),
                headers={"Content-Type": ["application/json; charset=utf-8"]},
            ),
            201,
        )
        self.assertEqual(
            (instance["queues"], instance["max_concurrency"], instance["is_enabled"],
             instance["broker"]["hostname"]),
            (["q"], 4, False, "w2"),
        )

    def test_empty_json_body(self):
        self.assertAnswer(self.call("PUT", "/foo/?hostname=w1", data=b"", headers=JSON), 201)
        self.assertEqual(self.store.get_app("foo").broker.hostname, "w1")

    def test_json_null_is_absent(self):
        self.call("PUT", "/foo/")
        queue = self.assertAnswer(
            self.call("PUT", "/foo/queues/q/", json={"exchange": None, "options": None}), 201
        )
        self.assertEqual((queue["exchange"], queue["options"]), ("q", {}))

    def test_multipart_form(self):
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="hostname"\r\n\r\n'
            b"w1\r\n"
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="userid"\r\n\r\n'
            b"me\r\n"
            b"--XyZ--\r\n"
        )
        self.assertAnswer(
            self.call("POST", "/foo/", data=body,
                      headers={"Content-Type": ["multipart/form-data; boundary=XyZ"]}),
            201,
        )
        self.assertEqual(self.store.get_app("foo").broker, Broker(hostname="w1", userid="me"))
        # PUT as well as POST; a field given twice is a list, as in a form.
        body = (
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="queues"\r\n\r\n'
            b"tasks\r\n"
            b"--XyZ\r\n"
            b'Content-Disposition: form-data; name="queues"\r\n\r\n'
            b"other\r\n"
            b"--XyZ--\r\n"
        )
        for name in ("tasks", "other"):
            self.call("PUT", f"/foo/queues/{name}/")
        instance = self.assertAnswer(
            self.call("PUT", "/foo/instances/w1/", data=body,
                      headers={"Content-Type": ["multipart/form-data; boundary=XyZ"]}),
            201,
        )
        self.assertEqual(instance["queues"], ["tasks", "other"])

    def test_malformed_multipart_form(self):
        self.call("PUT", "/foo/")
        before = self.snapshot()
        for body, ctype in [
            (b"\x86\xc1 not a multipart body", "multipart/form-data; boundary=x"),
            (b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n",
             "multipart/form-data; boundary=x"),
            (b"--x\r\nContent-Disposition: form-data; name=\"hostname\"\r\n\r\n\xff\r\n--x--\r\n",
             "multipart/form-data; boundary=x"),
        ]:
            for method in ("POST", "PUT"):
                with self.subTest(method=method, body=body):
                    self.assertError(
                        self.call(method, "/foo/", data=body, headers={"Content-Type": [ctype]}),
                        400, field="body",
                    )
        self.assertEqual(self.snapshot(), before)

    def test_trailing_slash_optional(self):
        self.setUpFoo()
        for path in ["/", "/foo", "/foo/", "/foo/instances", "/foo/instances/",
                     "/foo/instances/w1", "/foo/instances/w1/", "/foo/instance/w1",
                     "/foo/queues", "/foo/queues/", "/foo/queues/tasks", "/foo/queues/tasks/",
                     "/foo/instances/w1/autoscale", "/foo/instances/w1/autoscale/"]:
            with self.subTest(path=path):
                self.assertAnswer(self.call("GET", path), 200)

    def test_singular_alias(self):
        self.setUpFoo()
        self.assertEqual(
            self.call("GET", "/foo/instance/w1/").json, self.call("GET", "/foo/instances/w1/").json
        )
        self.assertAnswer(self.call("PUT", "/foo/instance/w2/"), 201)
        self.assertAnswer(self.call("DELETE", "/foo/instance/w2"), 200)
        self.assertEqual([i.name for i in self.store.instances()], ["w1"])


def attrs_without(record, *names):
    data = record.to_json()
    for name in names:
        del data[name]
    return data


class BadInputTestsMixin(APITestCase):
    """400 naming the field, and nothing stored."""

    def setUp(self):
        super().setUp()
        self.setUpFoo()
        self.before = self.snapshot()

    def assertBad(self, method, path, field, **kwargs):
        data = self.assertError(self.call(method, path, **kwargs), 400, field=field)
        self.assertEqual(self.snapshot(), self.before, f"{method} {path} changed the store")
        return data

    def test_bad_values(self):
        self.assertBad("PUT", "/new/?hostname=w1&port=abc", "port")
        self.assertBad("PUT", "/new/?hostname=w1&port=0", "port")
        self.assertBad("PUT", "/new/?hostname=w1&port=65536", "port")
        self.assertBad("PUT", "/new/?broker=http://w1/", "broker")
        self.assertBad("PUT", "/new/?extra_config=nope", "extra_config")
        self.assertBad("PUT", "/foo/?hostname=w1&port=abc", "port")
        self.assertBad("PUT", "/foo/queues/new/?exchange_type=bogus", "exchange_type")
        self.assertBad("PUT", "/foo/queues/tasks/?exchange_type=bogus", "exchange_type")
        self.assertBad("PUT", "/foo/queues/new/?options=%7Bnot%20json", "options")
        self.assertBad("PUT", "/foo/queues/new/?options=%5B1%5D", "options")
        self.assertBad("PUT", "/foo/instances/new/?max_concurrency=0", "max_concurrency")
        self.assertBad("PUT", "/foo/instances/new/?max_concurrency=many", "max_concurrency")
        self.assertBad("PUT", "/foo/instances/new/?max_concurrency=2&min_concurrency=3",
                       "min_concurrency")
        self.assertBad("PUT", "/foo/instances/w1/?min_concurrency=2", "min_concurrency")
        self.assertBad("PUT", "/foo/instances/new/?is_enabled=maybe", "is_enabled")
        self.assertBad("PUT", "/foo/instances/new/?pool=fork", "pool")
        self.assertBad("PUT", "/foo/instances/new/?queues=a/b", "queues")
        self.assertBad("PUT", "/foo/instances/?max_concurrency=0", "max_concurrency")

    def test_reserved_queue_and_exchange_names(self):
        """An app's queue cannot take the results, the remote control, the events or the bus."""
        for path in ("/foo/queues/cyme.results.b1/", "/foo/queues/cyme.branch.b2/",
                     "/foo/queues/dq.w1/", "/foo/queues/celery.pidbox/",
                     "/foo/queues/celeryev.x/", "/foo/queues/reply.celery.pidbox/",
                     "/foo/queues/amq.gen-1/"):
            response = self.assertBad("PUT", path, "name")
            self.assertIn("reserved", response["error"])
        for exchange in ("cyme.bus", "cyme.bus.direct", "celeryev", "celery.pidbox",
                         "reply.celery.pidbox", "amq.rabbitmq.trace", "amq.topic"):
            response = self.assertBad("PUT", f"/foo/queues/spy/?exchange={exchange}",
                                      "exchange")
            self.assertIn("reserved", response["error"])
        # Names that merely contain them are the app's.
        self.assertEqual(self.call("PUT", "/foo/queues/my.cyme.jobs/").code, 201)

    def test_queue_options_are_kombus_with_their_types(self):
        for options in ({"bindings": [{"exchange": "cyme.bus", "routing_key": "#"}]},
                        {"exchange": "cyme.bus"}, {"routing_key": "#"},
                        {"binding_key": "#"}, {"on_declared": "x"},
                        {"durable": "yes"}, {"max_priority": -1}, {"max_priority": True},
                        {"message_ttl": "1h"}, {"queue_arguments": {"x-a": [1]}},
                        {"queue_arguments": []}):
            response = self.assertBad("PUT", "/foo/queues/q/", "options",
                                      json={"options": options})
            self.assertIn("option", response["error"])
        self.assertEqual(self.call("PUT", "/foo/queues/q/", json={"options": {
            "durable": False, "auto_delete": True, "message_ttl": 60000, "max_length": 10,
            "queue_arguments": {"x-queue-type": "quorum"},
            "consumer_arguments": {"x-priority": 5}}}).code, 201)

    def test_wrong_json_types(self):
        for path, body, field in [
            ("/new/", {"hostname": 5}, "hostname"),
            ("/new/", {"hostname": "w1", "port": True}, "port"),
            ("/new/", {"hostname": "w1", "port": 5672.5}, "port"),
            ("/new/", {"broker": 5}, "broker"),
            ("/new/", {"broker": {"hostname": "w1", "bogus": 1}}, "bogus"),
            ("/new/", {"extra_config": [1]}, "extra_config"),
            ("/new/", {"arguments": 5}, "arguments"),
            ("/foo/queues/new/", {"exchange": 5}, "exchange"),
            ("/foo/queues/new/", {"options": [1]}, "options"),
            ("/foo/queues/new/", {"options": "x"}, "options"),
            ("/foo/queues/new/", {"exchange_type": ["direct"]}, "exchange_type"),
            ("/foo/instances/new/", {"max_concurrency": "lots"}, "max_concurrency"),
            ("/foo/instances/new/", {"max_concurrency": [2]}, "max_concurrency"),
            ("/foo/instances/new/", {"min_concurrency": {}}, "min_concurrency"),
            ("/foo/instances/new/", {"is_enabled": "perhaps"}, "is_enabled"),
            ("/foo/instances/new/", {"queues": 5}, "queues"),
            ("/foo/instances/new/", {"queues": [5]}, "queues"),
            ("/foo/instances/new/", {"queues": {"tasks": 1}}, "queues"),
            ("/foo/instances/new/", {"broker": ["w1"]}, "broker"),
            ("/foo/instances/w1/autoscale/", {"max": "x"}, "max"),
            ("/foo/instances/w1/autoscale/", {"min": [1]}, "min"),
        ]:
            with self.subTest(path=path, body=body):
                self.assertBad("PUT", path, field, json=body)

    def test_malformed_json(self):
        for path in ["/new/", "/foo/", "/foo/queues/new/", "/foo/instances/",
                     "/foo/instances/w1/", "/foo/instances/w1/queues/tasks/",
                     "/foo/instances/w1/autoscale/"]:
            for body in [b"{", b'{"hostname": }', b"{'a': 1}", b'{"a": "\xff"}', b"NaN]"]:
                with self.subTest(path=path, body=body):
                    data = self.assertBad("POST", path, "body", data=body, headers=JSON)
                    self.assertIn("JSON", data["error"])

    def test_non_object_json(self):
        for body in [b"[]", b'["hostname", "w1"]', b'"w1"', b"5", b"null", b"true"]:
            with self.subTest(body=body):
                self.assertBad("PUT", "/new/", "body", data=body, headers=JSON)
                self.assertBad("PUT", "/foo/instances/w1/", "body", data=body, headers=JSON)

    def test_unknown_parameters(self):
        self.assertBad("PUT", "/new/?bogus=1", "bogus")
        self.assertBad("PUT", "/new/", "name", json={"name": "other"})
        self.assertBad("PUT", "/foo/queues/new/?exchange=e&durable=1", "durable")
        self.assertBad("PUT", "/foo/instances/new/", "concurrency", data={"concurrency": "2"})
        self.assertBad("PUT", "/foo/instances/", "name", json={"name": "mine"})

    def test_bad_form_bodies(self):
        self.assertBad("PUT", "/new/", "body", data=b"hostname=w\xff", headers=FORM)
        self.assertBad("PUT", "/new/", "body", data=b"hostname=%FF", headers=FORM)
        self.assertBad("PUT", "/new/", "Content-Type", data=b"hostname=w1",
                       headers={"Content-Type": ["text/plain"]})
        self.assertBad("PUT", "/new/?hostname=%FF", "query string")

    def test_bad_names_in_paths(self):
        for method, path in [
            ("PUT", "/../"),
            ("PUT", "/%2e%2e/"),
            ("PUT", "/%2E%2E"),
            ("PUT", "/%2e/"),
            ("PUT", "/a%2Fb/"),
            ("PUT", "/a%2fb"),
            ("PUT", "/a%5Cb/"),
            ("PUT", "/a..b/"),
            ("PUT", "/.hidden/"),
            ("PUT", "/-x/"),
            ("PUT", "/a%20b/"),
            ("PUT", "/a%00b/"),
            ("PUT", "/caf%C3%A9/"),
            ("PUT", "/%FF/"),
            ("PUT", "/" + "a" * 65 + "/"),
            ("GET", "/%2e%2e/"),
            ("DELETE", "/%2e%2e/"),
            ("PUT", "/foo/instances/../"),
            ("PUT", "/foo/instances/%2e%2e/"),
            ("PUT", "/foo/instances/%2E%2e"),
            ("PUT", "/foo/instances/a%2Fb/"),
            ("PUT", "/foo/instances/..%2F..%2Fetc/"),
            ("PUT", "/foo/instances/a..b/"),
            ("POST", "/foo/instance/%2e%2e/"),
            ("DELETE", "/foo/instances/%2e%2e/"),
            ("PUT", "/foo/queues/%2e%2e/"),
            ("PUT", "/foo/queues/a%2Fb/"),
            ("PUT", "/foo/queues/a..b"),
            ("DELETE", "/foo/queues/%2e%2e/"),
            ("PUT", "/foo/instances/w1/queues/%2e%2e/"),
            ("PUT", "/foo/instances/w1/queues/a%2Fb/"),
            ("POST", "/foo/instances/%2e%2e/autoscale/?max=2"),
            ("PUT", "/%2e%2e/instances/w9/"),
        ]:
            with self.subTest(method=method, path=path):
                data = self.assertError(self.call(method, path), 400)
                self.assertIn(data["field"], ("path", "app", "name", "instance", "queue"))
                self.assertEqual(self.snapshot(), self.before, f"{method} {path} changed the store")

    def test_bad_names_through_the_route_name_the_field(self):
        self.assertBad("PUT", "/a..b/", "app")
        self.assertBad("PUT", "/foo/instances/a..b/", "instance")
        self.assertBad("PUT", "/foo/queues/a..b/", "queue")
        self.assertBad("PUT", "/foo/instances/w1/queues/a..b/", "queue")
        self.assertBad("PUT", "/%2e%2e/", "path")
        self.assertBad("PUT", "/foo/queues/a%2Fb/", "path")


class NotFoundTestsMixin(APITestCase):
    def setUp(self):
        super().setUp()
        self.setUpFoo()
        self.before = self.snapshot()

    def test_unknown_app(self):
        for method, path in [
            ("GET", "/nope/"),
            ("DELETE", "/nope/"),
            ("GET", "/nope/instances/"),
            ("PUT", "/nope/instances/"),
            ("PUT", "/nope/instances/w9/"),
            ("GET", "/nope/instances/w1/"),
            ("GET", "/nope/queues/"),
            ("PUT", "/nope/queues/q/"),
            ("GET", "/nope/queues/tasks/"),
            ("PUT", "/nope/instances/w1/queues/tasks/"),
            ("GET", "/nope/instances/w1/autoscale/"),
        ]:
            with self.subTest(method=method, path=path):
                self.assertError(self.call(method, path), 404, kind="app", name="nope")
        self.assertEqual(self.snapshot(), self.before)

    def test_unknown_instance_and_queue(self):
        for method, path, kind in [
            ("GET", "/foo/instances/nope/", "instance"),
            ("DELETE", "/foo/instances/nope/", "instance"),
            ("GET", "/foo/instances/nope/queues/", "instance"),
            ("DELETE", "/foo/instances/nope/queues/tasks/", "instance"),
            ("GET", "/foo/queues/nope/", "queue"),
            ("DELETE", "/foo/queues/nope/", "queue"),
        ]:
            with self.subTest(method=method, path=path):
                data = self.assertError(self.call(method, path), 404, kind=kind, name="nope")
                self.assertIn("nope", data["error"])
        self.assertEqual(self.snapshot(), self.before)

    def test_unknown_route(self):
        for path in ["/foo/instances/w1/bogus/", "/foo/a/b/c/d/e/", "/foo/queues/tasks/x/"]:
            with self.subTest(path=path):
                self.assertError(self.call("GET", path), 404)

    def test_empty_segment_is_no_route(self):
        """C{//} in a path names nothing: a 404, not a redirect (or a 500)."""
        for method, path in [("GET", "/stats//"), ("DELETE", "/foo//"),
                             ("PUT", "/foo/instances//"), ("POST", "/query///")]:
            with self.subTest(method=method, path=path):
                self.assertError(self.call(method, path), 404)
        self.assertEqual(self.snapshot(), self.before)


class MethodNotAllowedTestsMixin(APITestCase):
    def test_allow_header(self):
        self.call("PUT", "/foo/")
        for method, path, allowed in [
            ("PATCH", "/foo/", {"GET", "PUT", "POST", "DELETE"}),
            ("DELETE", "/", {"GET"}),
            ("PUT", "/", {"GET"}),
            ("DELETE", "/foo/instances/", {"GET", "PUT", "POST"}),
            ("DELETE", "/foo/queues/", {"GET"}),
            ("PATCH", "/foo/instances/w1/queues/tasks/", {"PUT", "POST", "DELETE"}),
            ("DELETE", "/foo/instances/w1/autoscale/", {"GET", "PUT", "POST"}),
            ("POST", "/ping/", None),
        ]:
            with self.subTest(method=method, path=path):
                response = self.call(method, path)
                if allowed is None:
                    # /ping/ is only GET, but POST /ping/ is "create app ping".
                    self.assertError(response, 400, field="name")
                    continue
                data = self.assertError(response, 405)
                header = {m.strip() for m in response.header("Allow").split(",")}
                self.assertTrue(allowed <= header, header)
                self.assertNotIn(method, header)
                self.assertEqual(set(data["allowed"]), header)
                self.assertIn(method, data["error"])
        self.assertEqual([a.name for a in self.store.apps()], ["foo"])


@implementer(IStore)
class BrokenStore:
    """A store whose every method fails the way a bug would."""

    def __init__(self):
        self.calls = []

    def _fail(self, method, *args):
        self.calls.append(method)
        raise RuntimeError("secret internal detail /var/lib/cyme")

    def subscribe(self, listener):
        pass  # it never changes

    def apps(self):
        self._fail("apps")

    def get_app(self, name):
        self._fail("get_app", name)

    def put_app(self, app, version=None):
        self._fail("put_app", app)

    def delete_app(self, name, version=None):
        self._fail("delete_app", name)

    def queues(self, app):
        self._fail("queues", app)

    def get_queue(self, app, name):
        self._fail("get_queue", app, name)

    def put_queue(self, app, queue, version=None):
        self._fail("put_queue", app, queue)

    def delete_queue(self, app, name, version=None):
        self._fail("delete_queue", app, name)

    def instances(self, app=None):
        self._fail("instances", app)

    def get_instance(self, name):
        self._fail("get_instance", name)

    def put_instance(self, instance):
        self._fail("put_instance", instance)

    def delete_instance(self, name):
        self._fail("delete_instance", name)

    def version(self, key):
        self._fail("version", key)

    def replica(self):
        self._fail("replica")

    def merge(self, replica):
        self._fail("merge", replica)

    def digest(self):
        self._fail("digest")

    def tokens(self):
        self._fail("tokens")

    def get_token(self, name):
        self._fail("get_token", name)

    def put_token(self, token, version):
        self._fail("put_token", token)

    def delete_token(self, name, version):
        self._fail("delete_token", name)

    def find_token(self, secret):
        self._fail("find_token")


class UnexpectedErrorTestsMixin(APITestCase):
    def setUp(self):
        self.store = BrokenStore()
        self.assertTrue(verifyObject(IStore, self.store))
        self.client, self.ops = self.client_of(self.store)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_internal_error(self):
        for method, path in [("GET", "/"), ("PUT", "/foo/"), ("GET", "/foo/instances/w1/"),
                             ("DELETE", "/foo/queues/tasks/")]:
            with self.subTest(method=method, path=path):
                response = self.call(method, path)
                self.assertError(response, 500)
                self.assertLess(len(response.body), 200)
                for secret in [b"secret", b"RuntimeError", b"/var/lib", b"File "]:
                    self.assertNotIn(secret, response.body)
        # Each request failed at its first read of the store (a cluster
        # looks an instance up by name before its app).
        calls = self.store.calls
        self.assertEqual(calls[:2] + calls[3:], ["apps", "get_app", "get_app"])
        self.assertIn(calls[2], ("get_app", "get_instance"))
        # Each failure was logged, with what was asked.
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 4)
        self.assertEqual([e["path"] for e in failures],
                         [b"/", b"/foo/", b"/foo/instances/w1/", b"/foo/queues/tasks/"])
        for event in failures:
            self.assertIsInstance(event["log_failure"].value, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 4)


class LimitedRequestTests(SynchronousTestCase):
    def request(self):
        return LimitedRequest(DummyChannel())

    def test_declared_length_over_the_limit(self):
        request = self.request()
        request.gotLength(MAX_BODY + 1)
        self.assertTrue(request.too_large)
        request.handleContentChunk(b"x" * 1000)
        self.assertEqual(request.content.getvalue(), b"")

    def test_huge_declared_length_keeps_nothing(self):
        request = self.request()
        request.gotLength(10 ** 12)
        self.assertTrue(request.too_large)
        for _ in range(5):
            request.handleContentChunk(b"x" * 65536)
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"")

    def test_length_at_the_limit(self):
        request = self.request()
        request.gotLength(MAX_BODY)
        request.handleContentChunk(b"x" * MAX_BODY)
        self.assertFalse(request.too_large)
        request.content.seek(0)
        self.assertEqual(len(request.content.read()), MAX_BODY)

    def test_chunked_over_the_limit(self):
        request = self.request()
        request.gotLength(None)
        chunk = b"x" * (MAX_BODY // 4)
        for _ in range(4):
            request.handleContentChunk(chunk)
        self.assertFalse(request.too_large)
        request.handleContentChunk(b"y")
        self.assertTrue(request.too_large)
        request.handleContentChunk(b"z" * 100)
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"")

    def test_small_body_kept(self):
        request = self.request()
        request.gotLength(None)
        request.handleContentChunk(b"hostname=")
        request.handleContentChunk(b"w1")
        self.assertFalse(request.too_large)
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"hostname=w1")


class TooLargeTests(SynchronousTestCase):
    """A real site, built as the daemon builds it, answering an oversized body."""

    def setUp(self):
        self.store = MemoryStore()
        ops = LocalOperations(self.store)
        self.api = BranchAPI(ops, clock=Clock())
        # DummyChannel's peer is 192.168.1.1: a remote caller, with a token.
        token, _ = self.successResultOf(defer.ensureDeferred(
            ops.create_token({"name": "t", "scope": "write"})))
        self.secret = token["token"]

    def send(self, length, chunks, path=b"/foo/"):
        channel = DummyChannel()
        channel.site = make_site(self.api.resource())
        request = channel.site.requestFactory(channel)
        self.assertIsInstance(request, LimitedRequest)
        request.requestHeaders.setRawHeaders(
            b"content-type", [b"application/x-www-form-urlencoded"]
        )
        request.requestHeaders.setRawHeaders(
            b"authorization", [b"Bearer " + self.secret.encode("ascii")]
        )
        request.gotLength(length)
        for chunk in chunks:
            request.handleContentChunk(chunk)
        request.requestReceived(b"POST", path, b"HTTP/1.1")
        head, _, body = channel.transport.written.getvalue().partition(b"\r\n\r\n")
        return head.split(b"\r\n"), body

    def test_declared_length(self):
        head, body = self.send(MAX_BODY + 1, [b"hostname=w1&arguments=" + b"x" * 1000])
        self.assertEqual(head[0], b"HTTP/1.1 413 Request Entity Too Large")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn("1 MiB", json.loads(body)["error"])
        self.assertEqual(self.store.apps(), [])

    def test_audited_with_its_sender(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        head, body = self.send(MAX_BODY + 1, [b"x" * 10])
        self.assertEqual(head[0], b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual([(e["who"], e["status"]) for e in events if e.get("audit")],
                         [("token:t", 413)])

    def test_chunked(self):
        chunk = b"arguments=" + b"x" * MAX_BODY
        head, body = self.send(None, [b"hostname=w1&", chunk])
        self.assertEqual(head[0], b"HTTP/1.1 413 Request Entity Too Large")
        self.assertEqual(self.store.apps(), [])

    def test_under_the_limit(self):
        head, body = self.send(11, [b"hostname=w1"])
        self.assertEqual(head[0], b"HTTP/1.1 201 Created")
        self.assertEqual(self.store.get_app("foo").broker.hostname, "w1")

    def test_guard_answers_413_for_a_flagged_request(self):
        # Any request the site marks too large, whatever its route.
        guard = GuardResource(self.api.app.resource(), self.api.gate)
        request = LimitedRequest(DummyChannel())
        request.too_large = True
        request.method = b"PUT"
        request.uri = request.path = b"/foo/instances/w1/"
        body = guard.render(request)
        self.assertEqual(request.code, 401)  # a stranger learns nothing more
        request = LimitedRequest(DummyChannel())
        request.too_large = True
        request.method = b"PUT"
        request.uri = request.path = b"/foo/instances/w1/"
        request.requestHeaders.setRawHeaders(
            b"authorization", [b"Bearer " + self.secret.encode("ascii")]
        )
        body = guard.render(request)
        self.assertEqual(request.code, 413)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body), {"error": "the request body is larger than 1 MiB"})
        self.assertEqual(self.store.apps(), [])

    def test_through_stubtreq(self):
        # StubTreq's own site has plain requests: a flag set on the way in
        # is enough for the guard.
        guard = GuardResource(self.api.app.resource(), self.api.gate)

        class Flagging(GuardResource):
            def render(self, request):
                request.too_large = True
                return guard.render(request)

        client = APIClient(Flagging(None, None))
        response = self.successResultOf(client.request("PUT", "/foo/", data={"hostname": "w1"}))
        self.assertEqual(response.code, 413)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(self.store.apps(), [])


class InstanceByNameTestsMixin(APITestCase):
    """The original Cyme's DELETE /instances/<name>/: the app can be left out."""

    def test_get_and_delete_without_the_app(self):
        client = self.client
        self.successResultOf(client.request("PUT", "/foo/"))
        self.successResultOf(client.request("PUT", "/foo/instances/w1/"))
        shown = self.successResultOf(client.request("GET", "/instances/w1/"))
        self.assertEqual((shown.code, shown.json["app"]), (200, "foo"))
        deleted = self.successResultOf(client.request("DELETE", "/instances/w1/"))
        self.assertEqual(deleted.code, 200)
        self.assertEqual(self.store.instances(), [])
        missing = self.successResultOf(client.request("DELETE", "/instances/w1"))
        self.assertEqual(missing.code, 404)


class BranchTestsMixin(APITestCase):
    """The operations as an L{IOperations}, /admin and /metrics."""

    def test_operations_implement_the_interface(self):
        self.assertTrue(verifyObject(IOperations, self.ops))

    def test_metrics_of_a_branch_without_supervisor_show_no_workers(self):
        self.successResultOf(self.client.request("GET", "/ping/"))
        response = self.successResultOf(self.client.request("GET", "/metrics"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"),
                         "text/plain; version=0.0.4; charset=utf-8")
        text = response.body.decode()
        self.assertNotIn("cyme_workers", text)
        self.assertIn('cyme_http_request_duration_seconds_count{method="GET",route="/ping",'
                      'status="200"} 1.0', text)

    def test_admin_page_shows_apps_and_instances_escaped(self):
        client = self.client
        self.successResultOf(client.request("PUT", "/foo/", data={"hostname": "w1"}))
        self.successResultOf(client.request("PUT", "/foo/queues/tasks/"))
        self.successResultOf(client.request(
            "PUT", "/foo/instances/w1/", data={"arguments": "-O fair"}))
        response = self.successResultOf(client.request("GET", "/admin/"))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header("content-type").startswith("text/html"))
        page = response.body.decode("utf-8")
        for text in ("foo", "w1:5672/", "tasks", "<td>w1</td>"):
            self.assertIn(text, page)
        # One script, the page's own (allowed by its hash, and by nothing else).
        self.assertEqual(page.count("<script"), 1)
        policy = response.header("content-security-policy")
        self.assertIn("script-src 'sha256-", policy)
        self.assertIn("default-src 'none'", policy)

    def test_admin_page_links_only_to_http_and_https_urls(self):
        for url, link in [
            ("http://b1:8000/", '<a href="http://b1:8000/admin/">'),
            ("https://b1.example/cyme/", '<a href="https://b1.example/cyme/admin/">'),
            ("javascript:alert(1)//", None),
            ("data:text/html,x", None),
        ]:
            with self.subTest(url=url):
                client, _ = self.client_of(MemoryStore(), url=url)
                page = self.successResultOf(client.request("GET", "/admin/")).body.decode()
                if link is None:
                    self.assertNotIn("<a ", page)
                    self.assertIn(f"<td>{url}</td>", page)
                else:
                    self.assertIn(link, page)


class ChangeLogTestsMixin(APITestCase):
    """Every change of the desired state writes one info line saying what changed."""

    def changes(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_each_change_is_logged_once(self):
        events = self.changes()
        self.setUpFoo()
        self.call("PUT", "/foo/instances/w1/queues/tasks/")
        self.call("PUT", "/foo/instances/w1/autoscale/", data={"max": "3"})
        self.call("DELETE", "/foo/instances/w1/")
        self.call("DELETE", "/foo/queues/tasks/")
        self.call("DELETE", "/foo/")
        self.call("GET", "/foo/")  # a read: no line
        lines = [formatEvent(e) for e in events if "what" in e]
        self.assertEqual(lines, [
            "app.put app=foo created=True",
            "queue.put app=foo queue=tasks created=True",
            "instance.put app=foo instance=w1 created=True",
            "instance.consume app=foo instance=w1 queue=tasks",
            "instance.autoscale app=foo instance=w1 max=3 min=1",
            "instance.delete app=foo instance=w1",
            "queue.delete app=foo queue=tasks",
            "app.delete app=foo instances=[]",
        ])


against_every_ops(
    globals(),
    WalkthroughTestsMixin, PingTestsMixin, AppTestsMixin, InstanceTestsMixin,
    QueueTestsMixin, ConsumerTestsMixin, AutoscaleTestsMixin, RequestFormTestsMixin,
    BadInputTestsMixin, NotFoundTestsMixin, MethodNotAllowedTestsMixin,
    UnexpectedErrorTestsMixin, InstanceByNameTestsMixin, BranchTestsMixin,
    ChangeLogTestsMixin,
)
