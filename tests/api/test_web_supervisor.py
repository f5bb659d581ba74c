"""The HTTP API of a branch with a supervisor: instances answer once their
worker is up, live stats and queues, restart/enable/disable, /metrics.

The supervisor is the real one, over a fake process reactor and a fake
remote control, so time and worker behaviour are in the test's hands.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from cyme.supervision.fakes import FakeControl, FakeProcessReactor, FakeProcessTable
from cyme.state.store import MemoryStore
from cyme.supervision.supervisor import Supervisor
from cyme.api.testing import api_client


class SupervisedAPITests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.control = FakeControl(self.reactor)
        self.store = MemoryStore()
        root = self.mktemp()
        os.makedirs(root)
        self.supervisor = Supervisor(
            self.store, self.control, self.reactor, root, hostname="h",
            processes=FakeProcessTable(), python="/py",
        )
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        self.client, self.ops = api_client(
            self.store, supervisor=self.supervisor, control=self.control,
            ready_timeout=10.0, query_timeout=2.0
        )
        self.store.subscribe(self.supervisor.reconcile)
        self.result(self.client.request("PUT", "/foo/"))

    def advance(self, seconds):
        """Let time pass, then deliver the answers that became ready."""
        self.reactor.advance(seconds)
        self.client.flush()

    def result(self, d):
        self.advance(0)
        return self.successResultOf(d)

    def create_running(self, name="w1"):
        d = self.client.request("PUT", f"/foo/instances/{name}/")
        self.advance(0)
        self.control.up(f"{name}@h", queues=[f"dq.{name}"])
        self.advance(0.05)
        return self.successResultOf(d)

    def test_create_answers_201_once_the_worker_answers_ping(self):
        d = self.client.request("PUT", "/foo/instances/w1/")
        self.advance(0)
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.live()), 1)
        self.control.up("w1@h")
        self.advance(0.05)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 201)
        body = response.json
        self.assertEqual(body["state"], "running")
        self.assertEqual(body["pid"], self.reactor.live()[0].pid)
        self.assertEqual(body["restarts"], 0)

    def test_create_answers_with_state_starting_after_the_ready_timeout(self):
        d = self.client.request("PUT", "/foo/instances/w1/")
        for _ in range(200):
            self.advance(0.05)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 201)
        self.assertEqual(response.json["state"], "starting")

    def test_no_wait_form_answers_202_at_once(self):
        response = self.result(self.client.request("PUT", "/foo/instances/!/w1/"))
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json["name"], "w1")
        self.assertIn(response.json["state"], ("stopped", "starting"))
        self.advance(0)
        self.assertEqual(len(self.reactor.live()), 1)

    def test_anonymous_no_wait_form(self):
        response = self.result(self.client.request("POST", "/foo/instances/!/"))
        self.assertEqual(response.code, 202)
        self.assertEqual(len(response.json["name"]), 36)

    def test_stats_are_the_workers_live_stats(self):
        self.create_running()
        response = self.result(self.client.request("GET", "/foo/instances/w1/stats/"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json["autoscaler"], {"max": 1, "min": 1})
        singular = self.result(self.client.request("GET", "/foo/instance/w1/stats"))
        self.assertEqual(singular.json, response.json)

    def test_stats_of_a_silent_worker_is_a_504_after_the_timeout(self):
        self.create_running()
        self.control.nodes["w1@h"].responsive = False
        d = self.client.request("GET", "/foo/instances/w1/stats/")
        self.advance(0)
        self.assertNoResult(d)
        self.advance(2)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertIn("did not answer", response.json["error"])

    def test_live_queries_of_a_worker_not_running_answer_at_once(self):
        """A stopped worker is not asked (and waited for): a 409 saying its state."""
        self.result(self.client.request("PUT", "/foo/instances/w1/?is_enabled=false"))
        for path in ["/foo/instances/w1/stats/", "/foo/instances/w1/queues/"]:
            response = self.result(self.client.request("GET", path))
            self.assertEqual(response.code, 409)
            self.assertEqual(response.json["state"], "stopped")
            self.assertIn("only a running worker", response.json["error"])

    def test_live_queries_while_its_broker_is_out_of_reach_are_503(self):
        """Whatever its worker's state then: the branch cannot ask it now, later it can."""
        self.create_running()
        self.control.set_connected(False)
        self.advance(30)
        for path in ["/foo/instances/w1/stats/", "/foo/instances/w1/queues/"]:
            response = self.result(self.client.request("GET", path))
            self.assertEqual(response.code, 503, response.body)
            self.assertIsInstance(response.json["error"], str)

    def test_live_queues(self):
        self.create_running()
        self.result(self.client.request("PUT", "/foo/queues/tasks/"))
        consume = self.result(self.client.request("PUT", "/foo/instances/w1/queues/tasks/"))
        self.assertEqual(consume.code, 201)
        response = self.result(self.client.request("GET", "/foo/instances/w1/queues/"))
        self.assertEqual(response.json, ["dq.w1", "tasks"])

    def test_autoscale_applies_live(self):
        self.create_running()
        response = self.result(
            self.client.request("POST", "/foo/instances/w1/autoscale/?max=4&min=2")
        )
        self.assertEqual(response.json, {"max": 4, "min": 2})
        node = self.control.nodes["w1@h"]
        self.assertEqual((node.max, node.min), (4, 2))

    def test_restart_gives_a_new_worker(self):
        first = self.create_running().json["pid"]
        d = self.client.request("POST", "/foo/instances/w1/restart/")
        self.advance(0)
        self.advance(0.05)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertNotEqual(response.json["pid"], first)
        self.assertEqual(response.json["state"], "running")

    def test_disable_stops_and_enable_starts(self):
        self.create_running()
        response = self.result(self.client.request("POST", "/foo/instances/w1/disable/"))
        self.assertEqual(response.json["is_enabled"], False)
        self.assertEqual(response.json["state"], "stopped")
        self.assertEqual(self.reactor.live(), [])
        d = self.client.request("POST", "/foo/instances/w1/enable/")
        self.advance(0)
        self.advance(0.05)
        response = self.successResultOf(d)
        self.assertEqual((response.json["is_enabled"], response.json["state"]), (True, "running"))
        self.assertEqual(len(self.reactor.live()), 1)

    def test_delete_stops_the_worker(self):
        self.create_running()
        response = self.result(self.client.request("DELETE", "/foo/instances/w1/"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.reactor.live(), [])

    def test_metrics(self):
        self.create_running()
        response = self.result(self.client.request("GET", "/metrics"))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header("content-type").startswith("text/plain"))
        text = response.body.decode()
        self.assertIn('cyme_workers{app="foo",state="running"} 1.0', text)
        self.assertIn('cyme_workers{app="foo",state="stopped"} 0.0', text)
        self.assertIn("cyme_supervisor_ticks_total", text)

    def test_unknown_instance_routes_are_404(self):
        for method, path in [
            ("GET", "/foo/instances/nope/stats/"),
            ("POST", "/foo/instances/nope/restart/"),
            ("POST", "/foo/instances/nope/disable/"),
        ]:
            response = self.result(self.client.request(method, path))
            self.assertEqual(response.code, 404, path)


class WithoutSupervisorTests(SynchronousTestCase):
    def test_live_routes_are_503_without_a_supervisor(self):
        client, _ = api_client(MemoryStore())
        self.successResultOf(client.request("PUT", "/foo/"))
        self.successResultOf(client.request("PUT", "/foo/instances/w1/"))
        response = self.successResultOf(client.request("GET", "/foo/instances/w1/stats/"))
        self.assertEqual(response.code, 503)
        self.assertIn("error", response.json)
