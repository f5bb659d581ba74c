"""A branch's readiness (cyme.operations.health) over the real broker pool,
supervisor and journal, with fake broker clients, processes and disk, on a
Clock; and ``GET /health/`` through the in-memory client.
"""

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp import BrokerPool
from cyme.api.auth import Gate
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.health import BranchHealth
from cyme.operations.local import LocalOperations
from cyme.state.models import App, Broker, Instance
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeControl, FakeLauncher, FakeProcessReactor
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy
from cyme.tasks.journal import ResultJournal, run_at_once
from tests.amqp.fakes import FakeClient, FakeConnection

BUS = Broker.from_url("amqp://cyme:bus-s3cret@rabbit.example:5672/cyme", "broker").as_url()
OTHER = "amqp://foo:app-s3cret@elsewhere.example:5672/foo"


class Disk:
    """The journal's file work, failing while C{full}."""

    def __init__(self):
        self.full = False

    def __call__(self, f, *args):
        if self.full:
            return defer.fail(OSError(28, "No space left on device"))
        return run_at_once(f, *args)


class HealthTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.clients = {}
        self.pool = BrokerPool(Clock(), make_client=self.client)
        self.store = MemoryStore()
        self.store.put_app(App("foo", broker=Broker.from_url(OTHER, "broker")))
        self.store.put_app(App("bar", broker=Broker.from_url(BUS, "broker")))
        root = self.mktemp()
        os.makedirs(root)
        self.supervisor = Supervisor(
            self.store, FakeControl(self.reactor), self.reactor, root, hostname="h",
            python="/py", launcher=FakeLauncher(self.reactor), policy=Policy(interval=5.0))
        self.disk = Disk()
        self.journal = ResultJournal(os.path.join(root, "results.jsonl"), self.reactor,
                                     run=self.disk)
        self.health = BranchHealth("b1", self.store, self.pool, BUS, self.reactor,
                                   supervisor=self.supervisor, journal=self.journal)
        # The bus holds its connection from the start, as the daemon's does.
        self.pool.client(BUS)

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]

    def start(self):
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        self.clients[BUS].connect(FakeConnection())


class ReportTests(HealthTestCase):
    def test_ready(self):
        self.start()
        report = self.health.report()
        self.assertEqual(report["ready"], True)
        self.assertEqual(report["failing"], {})
        self.assertEqual(report["branch"], "b1")
        self.assertEqual(report["apps"], {"foo": {"broker": "unused"},
                                          "bar": {"broker": "connected"}})

    def test_not_connected_yet(self):
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        report = self.health.report()
        self.assertEqual(report["ready"], False)
        self.assertEqual(report["failing"], {"bus": "bus broker not connected yet"})

    def test_bus_broker_unreachable(self):
        self.start()
        self.clients[BUS].lose(Exception("gone"))
        self.clients[BUS].last_error = "Connection refused to amqp://cyme:bus-s3cret@x/"
        report = self.health.report()
        self.assertEqual(report["ready"], False)
        self.assertEqual(report["failing"],
                         {"bus": "bus broker unreachable: Connection refused to "
                                 "amqp://cyme:**@x/"})
        self.assertEqual(report["apps"]["bar"]["broker"], "unreachable")
        self.assertNotIn("s3cret", repr(report))

    def test_an_apps_broker_is_its_own(self):
        # The branch holds a connection to foo's broker (its workers are
        # here): out of reach, foo is listed, and the branch stays ready.
        self.start()
        self.pool.client(OTHER).last_error = "DNS lookup failed"
        report = self.health.report()
        self.assertEqual(report["ready"], True)
        self.assertEqual(report["apps"]["foo"],
                         {"broker": "unreachable", "error": "DNS lookup failed"})
        self.clients[OTHER].last_error = None
        self.assertEqual(self.health.report()["apps"]["foo"], {"broker": "connecting"})

    def test_supervisor_tick_late(self):
        self.start()
        self.reactor.advance(14)
        self.assertEqual(self.health.report()["failing"], {})
        # Its loop dies: three intervals later the branch is not ready.
        self.supervisor.stopService()
        self.reactor.advance(14)
        self.assertEqual(self.health.report()["failing"], {})
        self.reactor.advance(2)
        self.assertEqual(self.health.report()["failing"], {
            "supervisor": "supervisor tick late: none for 16 s (one every 5 s)"})

    def test_supervisor_not_started(self):
        self.clients[BUS].connect(FakeConnection())
        self.assertEqual(self.health.report()["failing"],
                         {"supervisor": "supervisor has not ticked yet"})

    def test_journal_failing_until_a_write_succeeds(self):
        self.start()
        self.disk.full = True
        d = self.journal.record("t1", "SENT")
        self.reactor.advance(0)
        self.failureResultOf(d, OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        report = self.health.report()
        self.assertEqual(report["ready"], False)
        self.assertEqual(report["failing"], {
            "journal": "journal failing: its last write failed "
                       "([Errno 28] No space left on device)"})
        self.disk.full = False
        d = self.journal.record("t2", "SENT")
        self.reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.health.report()["ready"], True)

    def test_every_failing_part(self):
        self.supervisor.startService()
        self.supervisor.stopService()
        self.disk.full = True
        self.journal.record("t1", "SENT").addErrback(lambda _: None)
        self.reactor.advance(20)
        self.flushLoggedErrors(OSError)
        self.assertEqual(sorted(self.health.report()["failing"]),
                         ["bus", "journal", "supervisor"])

    def test_instances(self):
        self.start()
        self.store.put_instance(Instance(name="w1", app="bar"))
        self.store.put_instance(Instance(name="w2", app="bar"))
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.assertEqual(self.health.report()["instances"], {"running": 0, "total": 2})
        self.supervisor.control.up("w1@h")
        self.reactor.pump([0.1] * 20)
        self.assertEqual(self.health.report()["instances"], {"running": 1, "total": 2})
        self.assertEqual(self.health.summary(), "ready; 1 of 2 instances running")
        self.clients[BUS].lose(Exception("gone"))
        self.clients[BUS].last_error = "Connection refused"
        self.assertEqual(self.health.summary(),
                         "not ready: bus broker unreachable: Connection refused; "
                         "1 of 2 instances running")

    def test_without_apps(self):
        self.start()
        self.assertNotIn("apps", self.health.report(apps=False))


class RouteTests(HealthTestCase):
    def setUp(self):
        super().setUp()
        self.ops = LocalOperations(self.store, branch_id="b1", readiness=self.health)
        self.resource = BranchAPI(self.ops, Gate(self.ops), clock=Clock()).resource()

    def get(self, peer=None, base="http://localhost", headers=None):
        client = APIClient(self.resource, peer=peer, base=base, headers=headers)
        response = self.successResultOf(client.request("GET", "/health/"))
        self.assertEqual(response.header("Content-Type"), "application/json")
        return response

    def test_ready_is_200(self):
        self.start()
        response = self.get()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json["ready"], True)
        self.assertEqual(self.successResultOf(
            APIClient(self.resource).request("GET", "/health")).code, 200)

    def test_not_ready_is_503_with_the_reasons(self):
        self.start()
        self.clients[BUS].lose(Exception("gone"))
        self.clients[BUS].last_error = "Connection refused"
        response = self.get()
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json["failing"],
                         {"bus": "bus broker unreachable: Connection refused"})

    def test_no_token_needed_and_no_apps_for_strangers(self):
        # A load balancer's probe from elsewhere: the verdict and the
        # reasons, not the names of the apps.
        self.start()
        self.pool.client(OTHER).last_error = "Connection refused"
        response = self.get(peer="203.0.113.7")
        self.assertEqual(response.code, 200)
        self.assertNotIn("apps", response.json)
        self.assertEqual(sorted(response.json),
                         ["branch", "failing", "instances", "ready"])
        self.assertIn("foo", self.get().json["apps"])

    def test_a_rebound_page_is_a_stranger(self):
        # A page of another site whose name now resolves to 127.0.0.1 gets
        # the probe's answer, not the loopback caller's.
        self.start()
        response = self.get(base="http://evil.example:8000")
        self.assertEqual(response.code, 200)
        self.assertNotIn("apps", response.json)

    def test_a_bad_token_is_refused(self):
        self.start()
        response = self.get(peer="203.0.113.7", headers={"Authorization": ["Bearer nope"]})
        self.assertEqual(response.code, 401)

    def test_no_secret_in_any_answer(self):
        self.start()
        self.clients[BUS].lose(Exception("gone"))
        self.clients[BUS].last_error = f"cannot reach {BUS}"
        self.pool.client(OTHER).last_error = f"cannot reach {OTHER}"
        for peer in (None, "203.0.113.7"):
            body = self.get(peer=peer).body
            self.assertNotIn(b"s3cret", body)
            self.assertNotIn(b"Traceback", body)

    def test_a_branch_without_its_parts_is_ready(self):
        ops = LocalOperations(MemoryStore(), branch_id="b2")
        response = self.successResultOf(
            APIClient(BranchAPI(ops, clock=Clock()).resource()).request("GET", "/health/"))
        self.assertEqual((response.code, response.json),
                         (200, {"ready": True, "branch": "b2", "failing": {}}))
