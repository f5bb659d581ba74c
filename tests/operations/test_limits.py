"""Vetted worker settings and a branch's limits, through the HTTP API in memory.

One branch (L{LocalOperations}) for what is parsed when written and what
each branch enforces; three branches on the in-memory bus for placement
skipping the branches at their limits and the 409 when none can take an
instance.
"""

import functools

from twisted.trial.unittest import SynchronousTestCase

from cyme.api.testing import api_client
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.state.workeroptions import WorkerPolicy

from tests.operations.test_cluster import Branch, ClusterTestCase, IDS


class OneBranchTestCase(SynchronousTestCase):
    policy = WorkerPolicy(max_concurrency=8, max_instances=3)

    def setUp(self):
        self.store = MemoryStore()
        self.client, self.ops = api_client(self.store, worker_policy=self.policy)

    def call(self, method, path, **kwargs):
        return self.successResultOf(self.client.request(method, path, **kwargs))

    def assertError(self, response, code, **fields):
        self.assertEqual(response.code, code, response.body)
        body = response.json
        for key, value in fields.items():
            self.assertEqual(body.get(key), value, body)
        return body

    def snapshot(self):
        return ([a.to_json() for a in self.store.apps()],
                [i.to_json() for i in self.store.instances()])


class WrittenValuesTests(OneBranchTestCase):
    def test_a_forbidden_option_is_a_400_naming_it_and_nothing_is_stored(self):
        for option in ("--logfile=/tmp/x", "--detach", "-n evil@h", "-Q other",
                       "--statedb=/tmp/s", "--pidfile /tmp/p", '"'):
            with self.subTest(option=option):
                before = self.snapshot()
                body = self.assertError(
                    self.call("PUT", "/foo/", data={"arguments": option}), 400,
                    field="arguments")
                self.assertIn("README", body["error"])
                self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.call("GET", "/foo/").code, 404)

    def test_allowed_options_and_settings_are_stored_parsed(self):
        self.assertEqual(self.call("PUT", "/foo/", data={
            "arguments": "-O fair --max-tasks-per-child 10",
            "extra_config": '{"worker_prefetch_multiplier": "4", "task_time_limit": 60}',
        }).code, 201)
        app = self.call("GET", "/foo/").json
        self.assertEqual(app["arguments"], "-O fair --max-tasks-per-child 10")
        self.assertEqual(app["extra_config"],
                         {"worker_prefetch_multiplier": 4, "task_time_limit": 60})
        # No imports: no field, as older versions (and their replicas) show apps.
        self.assertNotIn("imports", app)

    def test_instance_settings_are_vetted_too(self):
        self.call("PUT", "/foo/")
        self.assertError(self.call("PUT", "/foo/instances/w1/", json={
            "extra_config": {"worker_concurrency": 64}}), 400, field="extra_config",
            option="worker_concurrency")
        self.assertError(self.call("PUT", "/foo/instances/w1/", json={
            "arguments": "--autoscale=99,1"}), 400, field="arguments", option="--autoscale")
        self.assertEqual(self.store.instances(), [])
        self.assertEqual(self.call("PUT", "/foo/instances/w1/", json={
            "arguments": "--time-limit 30", "extra_config": {"task_acks_late": "no"}}).code,
            201)
        self.assertEqual(self.store.get_instance("w1").extra_config, {"task_acks_late": False})

    def test_an_unparseable_value_is_a_400_and_the_old_record_stays(self):
        self.call("PUT", "/foo/", data={"arguments": "-O fair"})
        before = self.snapshot()
        self.assertError(self.call("POST", "/foo/", data={"arguments": "--time-limit=soon"}),
                         400, field="arguments", option="--time-limit")
        self.assertError(self.call("POST", "/foo/", json={
            "extra_config": {"task_time_limit": "soon"}}), 400, field="extra_config",
            option="task_time_limit")
        self.assertEqual(self.snapshot(), before)

    def test_serializers_beyond_json_only_if_the_operator_opened_them(self):
        body = self.assertError(self.call("PUT", "/foo/", json={
            "extra_config": {"accept_content": ["json", "pickle"]}}), 400,
            field="extra_config", option="accept_content")
        self.assertIn("--accept-content pickle", body["error"])
        self.assertEqual(self.call("PUT", "/foo/", json={
            "extra_config": {"accept_content": ["json"]}}).code, 201)

    def test_task_modules_only_within_the_operators_patterns(self):
        body = self.assertError(self.call("PUT", "/foo/", json={"imports": ["myproject.tasks"]}),
                                400, field="imports", option="myproject.tasks")
        self.assertIn("patterns: none", body["error"])
        self.assertEqual(self.call("GET", "/foo/").code, 404)

    def test_broker_hosts_no_url_can_carry_are_400(self):
        for data in ({"hostname": "["}, {"hostname": "a b"}, {"broker": "amqp://[/"},
                     {"broker": "amqp://u:p@-h:5672//"}):
            with self.subTest(data=data):
                response = self.call("PUT", "/foo/", data=data)
                self.assertEqual(response.code, 400, response.body)
                self.assertIn(response.json["field"], ("hostname", "broker"))
        self.call("PUT", "/foo/")
        self.assertError(self.call("PUT", "/foo/instances/w1/", data={"hostname": "["}), 400,
                         field="hostname")
        self.assertEqual(self.store.instances(), [])

    def test_reserved_names_cannot_name_a_new_app(self):
        for name in ("tokens", "health", "login", "events", "drift", "restarts"):
            with self.subTest(name=name):
                self.assertEqual(self.call("PUT", f"/{name}/").code, 400)
        self.assertEqual(list(self.store.apps()), [])


class OpenedBranchTests(OneBranchTestCase):
    policy = WorkerPolicy.from_options(["myproject.tasks*"], ["pickle"], 8, 3)

    def test_the_operators_patterns_and_serializers(self):
        self.assertEqual(self.call("PUT", "/foo/", json={
            "imports": ["myproject.tasks", "myproject.tasks.mail"],
            "extra_config": {"accept_content": ["json", "pickle"]}}).code, 201)
        self.assertEqual(self.call("GET", "/foo/").json["imports"],
                         ["myproject.tasks", "myproject.tasks.mail"])
        self.assertError(self.call("POST", "/foo/", data={"imports": "myproject.tasks,os"}),
                         400, field="imports", option="os")
        self.assertError(self.call("POST", "/foo/", json={
            "extra_config": {"accept_content": ["yaml"]}}), 400, option="accept_content")


class BranchLimitTests(OneBranchTestCase):
    def test_max_concurrency_is_capped(self):
        self.call("PUT", "/foo/")
        body = self.assertError(self.call("PUT", "/foo/instances/w1/?max_concurrency=9"), 400,
                                field="max_concurrency")
        self.assertIn("at most 8", body["error"])
        self.assertEqual(self.call("PUT", "/foo/instances/w1/?max_concurrency=8").code, 201)
        self.assertError(self.call("POST", "/foo/instances/w1/autoscale/?max=9"), 400,
                         field="max")
        self.assertEqual(self.store.get_instance("w1").max_concurrency, 8)

    def test_max_instances_is_a_409_naming_the_limit(self):
        self.call("PUT", "/foo/")
        for name in ("w1", "w2", "w3"):
            self.assertEqual(self.call("PUT", f"/foo/instances/{name}/").code, 201)
        self.assertError(self.call("PUT", "/foo/instances/w4/"), 409, limit="max_instances")
        self.assertEqual(len(self.store.instances()), 3)
        # Changing one that exists is no new instance.
        self.assertEqual(self.call("PUT", "/foo/instances/w1/?max_concurrency=2").code, 200)

    def test_the_branch_says_its_limits(self):
        body = self.call("GET", "/branches/branch/").json
        self.assertEqual(body["limits"], {"max_instances": 3, "max_concurrency": 8})


class ClusterLimitTests(ClusterTestCase):
    """Each branch holds one instance of at most 2 processes, b3 of at most 8."""

    def setUp(self):
        super().setUp()
        for branch in self.branches.values():
            branch.bus.stopService()
        self.settle()
        caps = {"b1": 2, "b2": 2, "b3": 8}
        self.branches = {
            i: Branch(i, self.network, self.clock, functools.partial(
                LocalOperations, worker_policy=WorkerPolicy(max_concurrency=caps[i],
                                                            max_instances=1)))
            for i in IDS
        }
        for branch in self.branches.values():
            branch.bus.startService()
            self.addCleanup(branch.bus.stopService)
        self.wait(3)
        self.request("b1", "PUT", "/foo/")
        self.settle()

    def owners(self):
        return {i.name: b for b, branch in self.branches.items()
                for i in branch.store.instances()}

    def test_heartbeats_carry_the_limits(self):
        peer = self.branches["b1"].bus.peer("b3")
        self.assertEqual(peer.limits, {"max_instances": 1, "max_concurrency": 8})

    def test_placement_skips_full_branches_then_409(self):
        for name in ("w1", "w2", "w3"):
            response = self.request("b1", "PUT", f"/foo/instances/{name}/")
            self.assertEqual(response.code, 201, response.body)
            self.wait(2.5)
        self.assertEqual(sorted(self.owners().values()), ["b1", "b2", "b3"])
        response = self.request("b2", "PUT", "/foo/instances/w4/")
        self.assertEqual(response.code, 409, response.body)
        self.assertEqual(response.json["limit"], "max_instances")
        self.assertIn("no live branch can take", response.json["error"])
        self.assertNotIn("w4", self.owners())

    def test_placement_skips_branches_whose_cap_is_too_low(self):
        response = self.request("b1", "PUT", "/foo/instances/w1/?max_concurrency=5")
        self.assertEqual(response.code, 201, response.body)
        self.assertEqual(self.owners(), {"w1": "b3"})
        self.wait(2.5)
        response = self.request("b1", "PUT", "/foo/instances/w2/?max_concurrency=5")
        self.assertEqual(response.code, 409, response.body)
        self.assertEqual(sorted(response.json["limit"]), ["max_concurrency", "max_instances"])

    def test_a_named_branch_at_its_limit_is_a_409(self):
        self.request("b1", "PUT", "/foo/instances/w1/?branch=b2")
        self.wait(2.5)
        response = self.request("b1", "PUT", "/foo/instances/w2/?branch=b2")
        self.assertEqual(response.code, 409, response.body)
        self.assertEqual(response.json["limit"], "max_instances")
