"""The API's caps: open C{wait/} long-polls per branch and connections per
site, each answered 503 beyond its limit."""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cyme.api.http import ConnectionCap, make_site
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.tasks.journal import ResultJournal
from tests.api.test_web_tasks import FakeTasks


class WaitCapTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        journal = ResultJournal(self.mktemp(), self.clock)
        self.addCleanup(journal.close)
        ops = LocalOperations(MemoryStore(), tasks=FakeTasks(journal), clock=self.clock)
        self.client = APIClient(BranchAPI(ops, max_waits=2).resource())
        self.successResultOf(self.client.request("PUT", "/foo/"))

    def wait(self):
        return self.client.request("GET", "/foo/query/unknown/wait/?timeout=10")

    def test_waits_beyond_the_cap_are_503(self):
        first, second = self.wait(), self.wait()
        self.assertNoResult(first)
        third = self.successResultOf(self.wait())
        self.assertEqual(third.code, 503)
        self.assertEqual(third.json["limit"], 2)
        self.assertIn("/foo/query/unknown/state/", third.json["error"])
        # Once they end, waits are taken again.
        self.clock.advance(10)
        self.client.flush()
        self.assertEqual(self.successResultOf(first).code, 202)
        self.assertEqual(self.successResultOf(second).code, 202)
        again = self.wait()
        self.assertNoResult(again)
        self.clock.advance(10)
        self.client.flush()
        self.assertEqual(self.successResultOf(again).code, 202)

    def test_a_refused_wait_is_no_leak(self):
        # A bad request does not take a place.
        for _ in range(3):
            bad = self.successResultOf(
                self.client.request("GET", "/foo/query/unknown/wait/?timeout=x"))
            self.assertEqual(bad.code, 400)
        d = self.wait()
        self.assertNoResult(d)


class ConnectionCapTests(SynchronousTestCase):
    def connect(self, factory):
        protocol = factory.buildProtocol(IPv4Address("TCP", "203.0.113.7", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_connections_beyond_the_cap_get_503(self):
        # No idle timeout: its timer would outlive this synchronous test.
        site = make_site(BranchAPI(LocalOperations(MemoryStore())).resource(), timeout=None)
        cap = ConnectionCap(site, limit=2)
        first, _ = self.connect(cap)
        second, _ = self.connect(cap)
        third, transport = self.connect(cap)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer)
        self.assertIn(b"Content-Type: application/json", answer)
        self.assertIn(b'{"error": "too many connections: retry later"}', answer)
        self.assertTrue(transport.disconnecting)
        # A place freed is taken again.
        first.connectionLost(None)
        fourth, transport = self.connect(cap)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
