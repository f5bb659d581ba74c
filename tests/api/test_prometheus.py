"""GET /metrics as Prometheus reads it: a branch of a cluster of two, its
supervisor real over fake processes and remote control, its task service
real over a fake broker, on one clock; the page checked by promtool.
"""

import os
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp import BrokerPool
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.cluster.memory import MemoryBusNetwork
from cyme.metrics import Metrics
from cyme.operations.cluster import build_cluster
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import (
    FakeControl, FakeLauncher, FakeProcessReactor, FakeProcessTable,
)
from cyme.supervision.supervisor import Supervisor
from cyme.tasks.journal import ResultJournal
from cyme.tasks.results import TaskService
from tests.amqp.fakes import FakeClient, FakeConnection
from tests.api.test_auth import REMOTE, AuthTestCase
from tests.cluster import seal
from tests.promtool import check_metrics


def samples(page):
    """C{{series: value}} of a page's samples (C{'name{labels}'} as written)."""
    found = {}
    for line in page.decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


class PageTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.control = FakeControl(self.reactor)
        self.launcher = FakeLauncher(self.reactor)
        self.metrics = Metrics()
        self.network = MemoryBusNetwork(self.reactor)
        self.b1 = self.branch("b1", supervised=True)
        self.b2 = self.branch("b2")
        self.client = self.b1["client"]
        self.settle()
        self.call("PUT", "/foo/", data={"allowed_hosts": "m"})
        self.call("PUT", "/foo/queues/tasks/")

    def branch(self, branch_id, supervised=False):
        store = MemoryStore()
        parts = {}
        if supervised:
            root = self.mktemp()
            os.makedirs(root)
            parts["supervisor"] = supervisor = Supervisor(
                store, self.control, self.reactor, root, hostname="h", python="/py",
                processes=FakeProcessTable(), launcher=self.launcher, metrics=self.metrics)
            store.subscribe(supervisor.reconcile)
            supervisor.startService()
            self.addCleanup(supervisor.stopService)
            self.brokers = {}
            journal = ResultJournal(os.path.join(root, "results.jsonl"), self.reactor,
                                    metrics=self.metrics)
            parts["tasks"] = TaskService(
                BrokerPool(self.reactor, make_client=self.broker), journal, branch_id,
                self.reactor, store, publish_timeout=10)
            parts["tasks"].startService()
            self.addCleanup(parts["tasks"].stopService)
            parts["control"] = self.control
        local = LocalOperations(store, branch_id=branch_id, clock=self.reactor,
                                ready_timeout=1.0, **parts)
        ops, bus = build_cluster(local, self.network.transport(branch_id), self.reactor,
                                 ready_timeout=1.0, seal=seal(self.reactor))
        bus.startService()
        self.addCleanup(bus.stopService)
        api = BranchAPI(ops, metrics=self.metrics if supervised else None, clock=Clock())
        return {"ops": ops, "bus": bus, "client": APIClient(api.resource()), **parts}

    def broker(self, url):
        self.brokers[url] = FakeClient()
        return self.brokers[url]

    def settle(self):
        for _ in range(50):
            self.reactor.advance(0)
            for branch in (self.b1, self.b2):
                branch["client"].flush()

    def call(self, method, path, client=None, **kwargs):
        d = (client or self.client).request(method, path, **kwargs)
        self.settle()
        return self.successResultOf(d)

    def page(self):
        response = self.call("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"),
                         "text/plain; version=0.0.4; charset=utf-8")
        return response.body

    def running(self, name):
        d = self.client.request("PUT", f"/foo/instances/{name}/?branch=b1")
        self.settle()
        self.control.up(f"{name}@h")
        self.reactor.advance(0.05)
        self.settle()
        self.assertEqual(self.successResultOf(d).json["state"], "running")

    def busy_branch(self):
        """w1 running and restarted once, w2 whose start failed, URLs queued."""
        self.running("w1")
        [process] = [p for p in self.reactor.live() if p.node() == "w1@h"]
        process.exit(status=1)
        self.reactor.advance(0.05)
        self.settle()
        self.launcher.fail = OSError("fork failed")
        self.call("PUT", "/foo/instances/!/w2/?branch=b1")
        self.flushLoggedErrors(OSError)
        self.launcher.fail = None
        queued = self.client.request("GET", "/foo/queue/tasks/http://m/x")
        self.settle()
        [link] = self.brokers.values()
        link.connect(FakeConnection())
        self.settle()
        self.assertEqual(self.successResultOf(queued).code, 202)
        self.assertEqual(self.call("GET", "/foo/queue/tasks/http://127.0.0.1/x").code, 400)

    def test_the_page_follows_prometheus_conventions(self):
        self.busy_branch()
        self.reactor.advance(5)  # a tick, a ping round
        self.settle()
        page = self.page()
        status, complaints = check_metrics(page)
        self.assertEqual((status, complaints), (0, ""), page.decode())

    def test_workers_by_app_and_state(self):
        self.busy_branch()
        found = samples(self.page())
        self.assertEqual(found['cyme_workers{app="foo",state="running"}'], 1)
        # Its start failed: shown failed, as its instance's JSON says.
        self.assertEqual(self.call("GET", "/foo/instances/w2/").json["state"], "failed")
        self.assertEqual(found['cyme_workers{app="foo",state="failed"}'], 1)
        self.assertEqual(found['cyme_workers{app="foo",state="quarantined"}'], 0)
        self.assertFalse([s for s in found if "start failed" in s])
        self.assertEqual(found['cyme_worker_restarts_total{app="foo",name="w1"}'], 1)
        self.assertEqual(found['cyme_worker_quarantines_total{app="foo",name="w1"}'], 0)

    def test_a_deleted_app_leaves_its_series(self):
        self.running("w1")
        self.call("DELETE", "/foo/")
        self.reactor.advance(0.1)
        self.settle()
        self.assertFalse([s for s in samples(self.page()) if 'app="foo"' in s])

    def test_queued_urls_and_their_results(self):
        self.busy_branch()
        found = samples(self.page())
        self.assertEqual(found['cyme_queued_urls_total{outcome="accepted"}'], 1)
        self.assertEqual(found['cyme_queued_urls_total{outcome="refused"}'], 1)
        self.assertEqual(found['cyme_queued_urls_total{outcome="failed"}'], 0)
        self.assertEqual(found["cyme_results_dropped_total"], 0)
        # The PENDING line of the accepted one was written, and timed.
        self.assertGreaterEqual(found["cyme_journal_write_duration_seconds_count"], 1)

    def test_durations_of_ticks_pings_and_requests(self):
        self.running("w1")
        self.reactor.advance(5)
        self.settle()
        found = samples(self.page())
        self.assertGreaterEqual(found["cyme_supervisor_tick_duration_seconds_count"], 2)
        self.assertGreaterEqual(found["cyme_worker_ping_round_trip_seconds_count"], 1)
        self.assertEqual(found['cyme_http_request_duration_seconds_count{method="PUT",'
                               'route="/<app>/instances/<name>",status="201"}'], 1)
        self.assertEqual(found['cyme_http_request_duration_seconds_bucket{le="+Inf",'
                               'method="PUT",route="/<app>/queues/<name>",status="201"}'], 1)

    def test_bus_peers_and_replication(self):
        found = samples(self.page())
        self.assertEqual(found['cyme_bus_peers{state="online"}'], 1)
        self.assertEqual(found['cyme_bus_peers{state="offline"}'], 0)
        # The branch's own writes came back unchanged; b2's changes it.
        self.assertEqual(
            found['cyme_replication_merges_total{outcome="unchanged",source="write"}'], 2)
        self.call("PUT", "/bar/", client=self.b2["client"])
        found = samples(self.page())
        self.assertEqual(
            found['cyme_replication_merges_total{outcome="changed",source="write"}'], 1)
        self.assertEqual(
            found['cyme_replication_merges_total{outcome="changed",source="catch_up"}'], 0)
        # The series of the bus kept their names.
        self.assertEqual(found['cyme_bus_messages_dropped_total{reason="unsealed"}'], 0)
        self.b2["bus"].stopService()
        self.settle()
        found = samples(self.page())
        self.assertEqual(found['cyme_bus_peers{state="offline"}'], 1)

    def test_unknown_paths_share_one_label(self):
        for n in range(200):
            self.call("GET", f"/a{n}/b/c/d/e/")
            self.call("GET", f"/no{n}/queue/")
        self.call("BREW", "/foo/")
        routes = {m.group(1) for m in re.finditer(
            r'cyme_http_request_duration_seconds_count\{[^}]*route="([^"]*)"',
            self.page().decode())}
        self.assertEqual(routes, {"other", "/<app>", "/<app>/queues/<name>"})
        methods = set(re.findall(r'method="([^"]*)"', self.page().decode()))
        self.assertEqual(methods, {"GET", "PUT", "other"})


class MetricsAuthTests(AuthTestCase):
    """/metrics is read like any other page: loopback trusted, else a read token."""

    def test_remote_callers_need_a_token_with_read(self):
        loopback = self.successResultOf(self.client().request("GET", "/metrics"))
        self.assertEqual(loopback.code, 200)
        stranger = self.call(self.client(peer=REMOTE), "GET", "/metrics")
        self.assertRefused(stranger, 401)
        reader = self.client(peer=REMOTE, secret=self.token("read"))
        page = self.successResultOf(reader.request("GET", "/metrics"))
        self.assertEqual(page.code, 200)
        self.assertIn(b'route="/metrics",status="401"', page.body)
