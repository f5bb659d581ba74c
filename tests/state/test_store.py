"""Tests for cyme.state.store: one mixin of store behaviour, run against every store."""

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.errors import NotFound, StartupError
from cyme.state.models import App, Broker, Instance, Queue
from cyme.state.replica import Replica
from cyme.state.store import (
    SCHEMA_VERSION, IStore, JSONFileStore, MemoryStore, StoreChange,
)


class StoreTestsMixin:
    """
    What every L{IStore} does; C{makeStore} returns an empty store.
    """

    def makeStore(self):
        raise NotImplementedError()

    def setUp(self):
        self.store = self.makeStore()

    def populate(self, store=None):
        """Two apps, their queues and instances; some instances consume."""
        store = store if store is not None else self.store
        store.put_app(App(name="foo"))
        store.put_app(App(name="bar", broker=Broker(hostname="w1", userid="me")))
        for app in ("foo", "bar"):
            store.put_queue(app, Queue(name="tasks"))
            store.put_queue(app, Queue(name="images", exchange_type="topic"))
        store.put_instance(Instance(name="w1", app="foo", queues=["tasks", "images"]))
        store.put_instance(Instance(name="w2", app="foo", queues=["images"]))
        store.put_instance(Instance(name="w3", app="foo"))
        store.put_instance(Instance(name="b1", app="bar", queues=["tasks"]))

    def assertNotFound(self, kind, name, f, *args):
        error = self.assertRaises(NotFound, f, *args)
        self.assertEqual((error.status, error.detail), (404, {"kind": kind, "name": name}))

    def test_interface(self):
        self.assertTrue(verifyObject(IStore, self.store))

    def test_empty(self):
        self.assertEqual(self.store.apps(), [])
        self.assertEqual(self.store.queues("foo"), [])
        self.assertEqual(self.store.instances(), [])
        self.assertEqual(self.store.instances("foo"), [])

    # Apps

    def test_put_app_creates_then_replaces(self):
        self.assertIs(self.store.put_app(App(name="foo")), True)
        replacement = App(name="foo", broker=Broker(hostname="w1"))
        self.assertIs(self.store.put_app(replacement), False)
        self.assertEqual(self.store.get_app("foo"), replacement)
        self.assertEqual(self.store.apps(), [replacement])

    def test_apps_sorted(self):
        for name in ["zeta", "alpha", "Mid", "beta"]:
            self.store.put_app(App(name=name))
        self.assertEqual(
            [a.name for a in self.store.apps()], ["Mid", "alpha", "beta", "zeta"]
        )

    def test_unknown_app(self):
        self.assertNotFound("app", "nope", self.store.get_app, "nope")
        self.assertNotFound("app", "nope", self.store.delete_app, "nope")

    def test_delete_app_cascades(self):
        self.populate()
        removed = self.store.delete_app("foo")
        self.assertEqual(sorted(i.name for i in removed), ["w1", "w2", "w3"])
        self.assertEqual([a.name for a in self.store.apps()], ["bar"])
        self.assertEqual(self.store.queues("foo"), [])
        self.assertEqual(self.store.instances("foo"), [])
        self.assertEqual([i.name for i in self.store.instances()], ["b1"])
        for name in ["w1", "w2", "w3"]:
            self.assertNotFound("instance", name, self.store.get_instance, name)
        self.assertNotFound("queue", "tasks", self.store.get_queue, "foo", "tasks")
        # The other app keeps everything.
        self.assertEqual([q.name for q in self.store.queues("bar")], ["images", "tasks"])
        self.assertEqual(self.store.get_instance("b1").queues, ("tasks",))

    def test_recreated_app_starts_empty(self):
        self.populate()
        self.store.delete_app("foo")
        self.assertIs(self.store.put_app(App(name="foo")), True)
        self.assertEqual(self.store.queues("foo"), [])
        self.assertEqual(self.store.instances("foo"), [])

    # Queues

    def test_put_queue_creates_then_replaces(self):
        self.store.put_app(App(name="foo"))
        self.assertIs(self.store.put_queue("foo", Queue(name="tasks")), True)
        replacement = Queue(name="tasks", exchange="ex", exchange_type="fanout")
        self.assertIs(self.store.put_queue("foo", replacement), False)
        self.assertEqual(self.store.get_queue("foo", "tasks"), replacement)
        self.assertEqual(self.store.queues("foo"), [replacement])

    def test_queues_per_app_and_sorted(self):
        self.store.put_app(App(name="foo"))
        self.store.put_app(App(name="bar"))
        for name in ["z", "a", "m"]:
            self.store.put_queue("foo", Queue(name=name))
        self.assertEqual([q.name for q in self.store.queues("foo")], ["a", "m", "z"])
        self.assertEqual(self.store.queues("bar"), [])
        self.assertNotFound("queue", "a", self.store.get_queue, "bar", "a")

    def test_unknown_queue(self):
        self.store.put_app(App(name="foo"))
        self.assertNotFound("queue", "nope", self.store.get_queue, "foo", "nope")
        self.assertNotFound("queue", "nope", self.store.delete_queue, "foo", "nope")
        self.assertNotFound("queue", "nope", self.store.get_queue, "noapp", "nope")

    def test_delete_queue(self):
        self.populate()
        self.assertEqual(self.store.delete_queue("foo", "tasks"), Queue(name="tasks"))
        self.assertEqual([q.name for q in self.store.queues("foo")], ["images"])
        self.assertNotFound("queue", "tasks", self.store.get_queue, "foo", "tasks")

    def test_delete_queue_removes_it_from_consumers(self):
        self.populate()
        self.store.delete_queue("foo", "images")
        self.assertEqual(self.store.get_instance("w1").queues, ("tasks",))
        self.assertEqual(self.store.get_instance("w2").queues, ())
        self.assertEqual(self.store.get_instance("w3").queues, ())
        # The instance is otherwise unchanged.
        self.assertEqual(
            self.store.get_instance("w1"),
            Instance(name="w1", app="foo", queues=["tasks"]),
        )
        # Another app's queue of the same name is another queue.
        self.assertEqual(self.store.get_queue("bar", "images").name, "images")
        self.assertEqual(self.store.get_instance("b1").queues, ("tasks",))
        self.store.delete_queue("foo", "tasks")
        self.assertEqual(self.store.get_instance("b1").queues, ("tasks",))

    # Instances

    def test_put_instance_creates_then_replaces(self):
        self.store.put_app(App(name="foo"))
        self.assertIs(self.store.put_instance(Instance(name="w1", app="foo")), True)
        replacement = Instance(name="w1", app="foo", max_concurrency=4, is_enabled=False)
        self.assertIs(self.store.put_instance(replacement), False)
        self.assertEqual(self.store.get_instance("w1"), replacement)
        self.assertEqual(self.store.instances(), [replacement])

    def test_instances_filtered_and_sorted(self):
        self.populate()
        self.assertEqual([i.name for i in self.store.instances()], ["b1", "w1", "w2", "w3"])
        self.assertEqual([i.name for i in self.store.instances("foo")], ["w1", "w2", "w3"])
        self.assertEqual([i.name for i in self.store.instances("bar")], ["b1"])
        self.assertEqual(self.store.instances("nope"), [])

    def test_unknown_instance(self):
        self.assertNotFound("instance", "nope", self.store.get_instance, "nope")
        self.assertNotFound("instance", "nope", self.store.delete_instance, "nope")

    def test_delete_instance(self):
        self.populate()
        removed = self.store.delete_instance("w2")
        self.assertEqual(removed, Instance(name="w2", app="foo", queues=["images"]))
        self.assertEqual([i.name for i in self.store.instances("foo")], ["w1", "w3"])
        self.assertNotFound("instance", "w2", self.store.get_instance, "w2")
        # Its queues and app stay.
        self.assertEqual(len(self.store.queues("foo")), 2)
        self.assertEqual(self.store.get_app("foo"), App(name="foo"))

    def test_values_round_trip(self):
        app = App(
            name="foo",
            broker=Broker(hostname="w1", port=5673, userid="me", password="p", virtual_host="v"),
            arguments="-O fair",
            extra_config={"a": [1, {"b": None}]},
        )
        queue = Queue(
            name="q", exchange="e", exchange_type="headers", routing_key="", options={"x": 1}
        )
        instance = Instance(
            name="w",
            app="foo",
            queues=["q"],
            max_concurrency=10,
            min_concurrency=0,
            is_enabled=False,
            broker=Broker(hostname="other"),
            pool="threads",
        )
        self.store.put_app(app)
        self.store.put_queue("foo", queue)
        self.store.put_instance(instance)
        self.assertEqual(self.store.get_app("foo"), app)
        self.assertEqual(self.store.get_queue("foo", "q"), queue)
        self.assertEqual(self.store.get_instance("w"), instance)

    # Change events

    def subscribed(self):
        """The changes the store reports from now on."""
        changes = []
        self.store.subscribe(changes.append)
        return changes

    def test_every_write_is_reported_after_it_is_made(self):
        seen = []
        self.store.subscribe(lambda change: seen.append((change, self.store.apps())))
        changes = self.subscribed()
        self.store.put_app(App(name="foo"))
        self.store.put_queue("foo", Queue(name="tasks"))
        self.store.put_instance(Instance(name="w1", app="foo", queues=["tasks"]))
        self.store.delete_queue("foo", "tasks")
        self.store.delete_instance("w1")
        self.store.put_instance(Instance(name="w2", app="foo"))
        self.store.delete_app("foo")
        self.assertEqual(changes, [
            StoreChange("put_app", "app/foo"),
            StoreChange("put_queue", "queue/foo/tasks"),
            StoreChange("put_instance", "instance/w1"),
            StoreChange("delete_queue", "queue/foo/tasks"),
            StoreChange("delete_instance", "instance/w1"),
            StoreChange("put_instance", "instance/w2"),
            StoreChange("delete_app", "app/foo"),
        ])
        # A listener sees the store as the write left it.
        self.assertEqual(seen[0][1], [App(name="foo")])
        self.assertEqual(seen[-1][1], [])

    def test_reads_and_failed_writes_are_not_reported(self):
        self.populate()
        changes = self.subscribed()
        self.store.apps()
        self.store.get_instance("w1")
        self.store.replica()
        self.assertRaises(NotFound, self.store.delete_app, "nope")
        self.assertRaises(NotFound, self.store.delete_queue, "foo", "nope")
        self.assertRaises(NotFound, self.store.delete_instance, "nope")
        self.assertEqual(changes, [])

    def test_merge_reported_once_and_only_when_it_changed_something(self):
        other = MemoryStore()
        other.put_app(App(name="foo"), (5, "b2"))
        other.put_queue("foo", Queue(name="tasks"), (5, "b2"))
        changes = self.subscribed()
        self.store.merge(Replica.from_json(other.replica()))
        self.assertEqual(changes, [StoreChange("merge")])
        self.store.merge(Replica.from_json(other.replica()))
        self.assertEqual(changes, [StoreChange("merge")])

    def test_a_failing_listener_neither_stops_the_others_nor_the_write(self):
        def broken(change):
            raise RuntimeError("listener bug")

        self.store.subscribe(broken)
        changes = self.subscribed()
        self.assertIs(self.store.put_app(App(name="foo")), True)
        self.assertEqual(self.store.get_app("foo"), App(name="foo"))
        self.assertEqual(changes, [StoreChange("put_app", "app/foo")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class MemoryStoreTests(StoreTestsMixin, SynchronousTestCase):
    def makeStore(self):
        return MemoryStore()


class FailingReplace:
    """C{os.replace} that fails C{failures} times, then works."""

    def __init__(self, failures=1):
        self.failures = failures
        self.calls = []
        self.real = os.replace

    def __call__(self, src, dst):
        self.calls.append((src, dst))
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return self.real(src, dst)


class JSONFileStoreTests(StoreTestsMixin, SynchronousTestCase):
    def makeStore(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "state.json")
        return JSONFileStore(self.path)

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def write(self, content):
        if not isinstance(content, bytes):
            content = json.dumps(content).encode("utf-8")
        with open(self.path, "wb") as f:
            f.write(content)
        return content

    def assertDirectoryHolds(self, names):
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), sorted(names))

    def test_opening_writes_nothing(self):
        self.assertDirectoryHolds([])
        self.store.put_app(App(name="foo"))
        self.assertDirectoryHolds(["state.json"])

    def test_state_survives_reopening(self):
        self.populate()
        self.store.delete_queue("foo", "images")
        reopened = JSONFileStore(self.path)
        self.assertEqual(reopened.apps(), self.store.apps())
        for app in ("foo", "bar"):
            self.assertEqual(reopened.queues(app), self.store.queues(app))
        self.assertEqual(reopened.instances(), self.store.instances())
        self.assertEqual(reopened.get_instance("w1").queues, ("tasks",))

    def test_relative_path(self):
        self.populate()
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(os.path.dirname(self.path))
        store = JSONFileStore("state.json")
        self.assertEqual(store.path, self.path)
        self.assertEqual(store.instances(), self.store.instances())

    def test_file_is_json_with_schema_version(self):
        self.populate()
        data = json.loads(self.read())
        self.assertEqual(data["schema"], SCHEMA_VERSION)
        self.assertEqual(sorted(data["apps"]), ["bar", "foo"])
        self.assertEqual(data["apps"]["bar"]["broker"]["hostname"], "w1")
        self.assertEqual(sorted(data["queues"]["foo"]), ["images", "tasks"])
        self.assertEqual(data["instances"]["w1"]["queues"], ["tasks", "images"])

    def test_permissions(self):
        self.store.put_app(App(name="foo"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.store.put_app(App(name="bar"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_no_temporary_file_left(self):
        self.populate()
        self.store.delete_app("foo")
        self.assertDirectoryHolds(["state.json"])

    def test_interrupted_write_keeps_old_state(self):
        self.populate()
        before = self.read()
        apps, instances = self.store.apps(), self.store.instances()
        replace = FailingReplace(failures=3)
        self.patch(os, "replace", replace)

        self.assertRaises(OSError, self.store.put_app, App(name="baz"))
        self.assertRaises(OSError, self.store.delete_app, "foo")
        self.assertRaises(OSError, self.store.delete_queue, "foo", "tasks")
        self.assertEqual(len(replace.calls), 3)

        # Neither the file nor the memory saw any of the three changes.
        self.assertEqual(self.read(), before)
        self.assertEqual(self.store.apps(), apps)
        self.assertEqual(self.store.instances(), instances)
        self.assertEqual(self.store.get_instance("w1").queues, ("tasks", "images"))
        self.assertNotFound("app", "baz", self.store.get_app, "baz")
        self.assertDirectoryHolds(["state.json"])
        reopened = JSONFileStore(self.path)
        self.assertEqual(reopened.apps(), apps)
        self.assertEqual(reopened.instances(), instances)

        # Once writing works again, the next change is stored whole.
        self.assertIs(self.store.put_app(App(name="baz")), True)
        self.assertEqual(
            [a.name for a in JSONFileStore(self.path).apps()], ["bar", "baz", "foo"]
        )

    def test_interrupted_write_is_not_reported(self):
        changes = []
        self.store.subscribe(changes.append)
        self.patch(os, "replace", FailingReplace())
        self.assertRaises(OSError, self.store.put_app, App(name="foo"))
        self.assertEqual(changes, [])
        self.store.put_app(App(name="foo"))
        self.assertEqual(changes, [StoreChange("put_app", "app/foo")])

    def test_interrupted_first_write(self):
        self.patch(os, "replace", FailingReplace())
        self.assertRaises(OSError, self.store.put_app, App(name="foo"))
        self.assertEqual(self.store.apps(), [])
        self.assertDirectoryHolds([])
        self.assertEqual(JSONFileStore(self.path).apps(), [])

    def assertCorrupt(self, content):
        """Opening a file holding C{content} fails, naming it, untouched."""
        content = self.write(content)
        error = self.assertRaises(StartupError, JSONFileStore, self.path)
        self.assertIn(self.path, str(error))
        self.assertEqual(self.read(), content)
        self.assertDirectoryHolds(["state.json"])
        return error

    def test_corrupt_garbage(self):
        for content in [b"", b"\x00\xffgarbage", b"{", b'{"schema": 1, "apps": {', b"null"]:
            with self.subTest(content=content):
                self.assertCorrupt(content)

    def test_corrupt_schema_version(self):
        good = {"apps": {}, "queues": {}, "instances": {}}
        error = self.assertCorrupt({**good, "schema": SCHEMA_VERSION + 1})
        self.assertIn("schema", str(error))
        for schema in ["1", True, 1.0, None]:
            with self.subTest(schema=schema):
                self.assertCorrupt({**good, "schema": schema})
        self.assertCorrupt(good)

    def test_corrupt_shape(self):
        app = App(name="foo").to_json()
        for content in [
            [],
            "state",
            {"schema": SCHEMA_VERSION},
            {"schema": SCHEMA_VERSION, "apps": [], "queues": {}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": 5}, "queues": {}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": {**app, "name": ".."}},
             "queues": {}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"bar": app}, "queues": {}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": {**app, "broker": {"port": 0}}},
             "queues": {}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": app},
             "queues": {"foo": {"q": {"name": "q", "exchange_type": "x"}}}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": app},
             "queues": {"foo": {"q": {"name": "other"}}}, "instances": {}},
            {"schema": SCHEMA_VERSION, "apps": {"foo": app}, "queues": {},
             "instances": {"w1": {"name": "w1"}}},
        ]:
            with self.subTest(content=content):
                self.assertCorrupt(content)

    def test_unreadable_file(self):
        os.makedirs(self.path)
        error = self.assertRaises(StartupError, JSONFileStore, self.path)
        self.assertIn(self.path, str(error))
