"""Upgrading: a state file the previous cyme wrote loads without loss, and is
migrated at its first write with its old bytes kept."""

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from cyme import __version__
from cyme.errors import StartupError
from cyme.state.schema import SCHEMA_VERSION
from cyme.state.store import JSONFileStore

#: A state file as cyme 0.1 (schema 1) wrote it: every kind of record, a
#: tombstone, an app with imports and a broker with a password.
PREVIOUS = {
    "schema": 1,
    "versions": {"app/foo": [1700000000000, "b1"], "app/gone": [1700000000500, "b2"],
                 "queue/foo/tasks": [1700000000100, "b1"],
                 "token/ci": [1700000000200, "b1"]},
    "apps": {"foo": {
        "name": "foo", "arguments": "--without-mingle", "extra_config": {"x": 1},
        "broker": {"hostname": "mq", "port": 5672, "userid": "u", "password": "s3cret",
                   "virtual_host": "/v"},
        "allowed_hosts": ["example.com"], "task_timeout": 30.0, "imports": ["proj.tasks"]}},
    "queues": {"foo": {"tasks": {"name": "tasks", "exchange": "tasks", "exchange_type": "topic",
                                 "routing_key": "tasks.#", "options": {"durable": True}}}},
    "instances": {"w1": {
        "name": "w1", "app": "foo", "queues": ["tasks"], "max_concurrency": 4,
        "min_concurrency": 1, "is_enabled": False, "broker": None, "pool": "solo",
        "arguments": "", "extra_config": {}}},
    "tokens": {"ci": {"name": "ci", "scopes": ["read", "write"], "hash": "ab" * 32,
                      "created": 1700000000.0, "expires": None}},
}


class StateFileTestCase(SynchronousTestCase):
    def setUp(self):
        root = self.mktemp()
        os.makedirs(root)
        self.path = os.path.abspath(os.path.join(root, "state.json"))

    def write(self, data):
        raw = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
        with open(self.path, "wb") as f:
            f.write(raw)
        return raw

    def assertKept(self, old, new, where="state"):
        """Every value of C{old} is in C{new}, which may add fields (at their defaults)."""
        if isinstance(old, dict):
            self.assertIsInstance(new, dict, where)
            for key, value in old.items():
                self.assertIn(key, new, where)
                self.assertKept(value, new[key], f"{where}.{key}")
        else:
            self.assertEqual(new, old, where)

    def read(self, path=None):
        with open(path or self.path, "rb") as f:
            return f.read()


class MigrationTests(StateFileTestCase):
    def test_the_previous_versions_file_loads_without_loss_and_untouched(self):
        raw = self.write(PREVIOUS)
        store = JSONFileStore(self.path)
        self.assertEqual(store.migrated_from, 1)
        self.assertEqual(store.migration_notes, [])
        self.assertKept(PREVIOUS, {**store.replica(), "schema": 1, "instances": {
            i.name: i.to_json() for i in store.instances()}})
        self.assertEqual(store.get_app("foo").broker.password, "s3cret")
        self.assertEqual(store.get_app("foo").imports, ("proj.tasks",))
        self.assertEqual(store.version("app/gone"), (1700000000500, "b2"))
        # Loading writes nothing: the previous cyme can still be put back.
        self.assertEqual(self.read(), raw)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), ["state.json"])

    def test_the_first_write_migrates_and_keeps_the_old_file(self):
        raw = self.write(PREVIOUS)
        store = JSONFileStore(self.path)
        store.delete_instance("w1")
        data = json.loads(self.read())
        self.assertEqual((data["schema"], data["written_by"]), (SCHEMA_VERSION, __version__))
        self.assertKept({k: PREVIOUS[k] for k in ("apps", "tokens", "versions")}, data)
        old = self.path + ".schema-1"
        self.assertEqual(self.read(old), raw)
        self.assertEqual(stat.S_IMODE(os.stat(old).st_mode), 0o600)
        # Migrated once: the next write keeps the old file as it was.
        store.delete_queue("foo", "tasks")
        self.assertEqual(self.read(old), raw)
        again = JSONFileStore(self.path)
        self.assertIsNone(again.migrated_from)
        self.assertEqual(again.queues("foo"), [])

    def test_a_record_a_forged_merge_put_under_another_name_is_removed(self):
        # The previous cyme refused to start over this file.
        forged = json.loads(json.dumps(PREVIOUS))
        forged["apps"]["good"] = {**forged["apps"]["foo"], "name": "evil"}
        forged["versions"]["app/good"] = [1800000000000, "b9"]
        forged["queues"]["foo"]["x"] = forged["queues"]["foo"]["tasks"]
        forged["versions"]["queue/foo/x"] = [1800000000000, "b9"]
        self.write(forged)
        store = JSONFileStore(self.path)
        self.assertEqual([a.name for a in store.apps()], ["foo"])
        self.assertEqual([q.name for q in store.queues("foo")], ["tasks"])
        self.assertIsNone(store.version("app/good"))
        self.assertIsNone(store.version("queue/foo/x"))
        self.assertEqual(len(store.migration_notes), 2)
        self.assertIn("app 'evil' stored under the key 'good'", store.migration_notes[0])
        self.assertEqual(store.get_app("foo").broker.password, "s3cret")

    def test_a_corrupt_file_of_the_previous_version_is_still_corrupt(self):
        for section, value in [("apps", []), ("queues", {"foo": []}), ("instances", 5),
                               ("tokens", {"ci": "x"}), ("versions", [])]:
            with self.subTest(section=section):
                raw = self.write({**PREVIOUS, section: value})
                error = self.assertRaises(StartupError, JSONFileStore, self.path)
                self.assertIn(f"state file {self.path} is corrupt", str(error))
                self.assertEqual(self.read(), raw)

    def test_a_newer_cymes_file_is_refused_untouched(self):
        raw = self.write({**PREVIOUS, "schema": SCHEMA_VERSION + 1, "written_by": "9.9"})
        error = self.assertRaises(StartupError, JSONFileStore, self.path)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}, written by a newer cyme (9.9)",
                      str(error))
        self.assertEqual(self.read(), raw)
        for schema in (0, -1):
            self.write({**PREVIOUS, "schema": schema})
            self.assertRaises(StartupError, JSONFileStore, self.path)


class OlderAllowedHostsEntryTests(StateFileTestCase):
    """The previous version took as C{allowed_hosts} entries the fence
    cannot read (C{[1:2]}, a mistyped IPv6 address): such a file loads,
    the entry allows nothing, and only new writes through the API refuse it."""

    def test_it_loads_with_a_warning_naming_the_app_and_the_entry(self):
        from twisted.logger import globalLogPublisher

        older = json.loads(json.dumps(PREVIOUS))
        older["apps"]["foo"]["allowed_hosts"] = ["[1:2]", "example.com"]
        self.write(older)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = JSONFileStore(self.path)
        self.assertEqual(store.get_app("foo").allowed_hosts, ("[1:2]", "example.com"))
        (warning,) = [e for e in events if e.get("entry") is not None]
        self.assertEqual((warning["app"], warning["entry"]), ("foo", "[1:2]"))
        self.assertIn("allows nothing", warning["log_format"])

    def test_the_entry_allows_nothing_and_the_list_stays_a_list(self):
        from cyme.fence import Fence, Refused

        fence = Fence(["[1:2]", "example.com"])
        fence.check("example.com", 80, "93.184.216.34")
        for host in ("93.184.216.34", "10.0.0.1", "1:2::"):
            self.assertRaises(Refused, fence.check, host, 80, host)
        # Not the default policy of an empty list, which allows these.
        self.assertRaises(Refused, Fence(["[1:2]"]).check, "93.184.216.34", 80, "93.184.216.34")

    def test_only_a_write_through_the_api_refuses_it(self):
        import attrs

        from cyme.errors import BadRequest
        from cyme.state import params
        from cyme.state.models import App

        app = App("foo", allowed_hosts=["[1:2]", "example.com"])  # as a replica or a file
        # The app's other fields can still be changed.
        changed = attrs.evolve(app, **params.app_changes({"task_timeout": "5"}))
        self.assertEqual(changed.allowed_hosts, ("[1:2]", "example.com"))
        for written in ("[1:2]", ["example.com", "[:]"], "[...]"):
            error = self.assertRaises(BadRequest, params.app_changes, {"allowed_hosts": written})
            self.assertEqual((error.status, error.field), (400, "allowed_hosts"))
        self.assertEqual(params.app_changes({"allowed_hosts": "example.com, 10.0.0.0/8"}),
                         {"allowed_hosts": ("example.com", "10.0.0.0/8")})
        # What neither version took is refused everywhere: the file is corrupt.
        self.assertRaises(BadRequest, App, "foo", allowed_hosts=["a b"])
        older = json.loads(json.dumps(PREVIOUS))
        older["apps"]["foo"]["allowed_hosts"] = ["http://x/"]
        self.write(older)
        self.assertRaises(StartupError, JSONFileStore, self.path)
