"""The API's caps: open C{wait/} long-polls per branch and connections per
site, each answered 503 beyond its limit; the capped site over TLS."""

import os
import socket
import ssl

from twisted.internet import reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cyme.api.http import make_site
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.tasks.journal import ResultJournal
from cyme.cluster.memory import MemoryBusNetwork
from cyme.waits import WaitCap
from tests.operations.test_cluster import Branch, ClusterTestCase
from tests.api.test_web_tasks import FakeTasks
from tests.localhost import self_signed


class WaitCapTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        journal = ResultJournal(self.mktemp(), self.clock)
        self.addCleanup(journal.close)
        ops = LocalOperations(MemoryStore(), tasks=FakeTasks(journal), clock=self.clock)
        self.client = APIClient(BranchAPI(ops, waits=WaitCap(2), clock=Clock()).resource())
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


class ClusterWaitCapTests(ClusterTestCase):
    """A wait sent to the task's owner counts against the owner's cap too."""

    def setUp(self):
        self.clock = Clock()
        self.network = MemoryBusNetwork(self.clock)
        self.branches = {}
        for branch_id in ("b1", "b2"):
            journal = ResultJournal(self.mktemp(), self.clock)
            self.addCleanup(journal.close)
            self.branches[branch_id] = Branch(branch_id, self.network, self.clock,
                                              tasks=FakeTasks(journal), waits=WaitCap(2))
            self.branches[branch_id].journal = journal
        for branch in self.branches.values():
            branch.bus.startService()
            self.addCleanup(branch.bus.stopService)
        self.settle()
        self.request("b1", "PUT", "/foo/")
        # A task b2 queued: b2 owns its result.
        self.branches["b2"].journal.record("t-1", "PENDING", app="foo")
        self.settle()

    def wait(self, branch):
        d = self.branches[branch].client.request("GET", "/foo/query/t-1/wait/?timeout=10")
        self.settle()
        return d

    def test_waits_relayed_to_the_owner_count_there(self):
        relayed = [self.wait("b1"), self.wait("b1")]
        for d in relayed:
            self.assertNoResult(d)
        # b2 serves two waits for b1: its own clients find it full.
        refused = self.successResultOf(self.wait("b2"))
        self.assertEqual(refused.code, 503, refused.body)
        self.assertEqual(refused.json["limit"], 2)
        # And so would a third client of b1 (b1's own cap is full as well).
        self.assertEqual(self.successResultOf(self.wait("b1")).code, 503)
        self.branches["b2"].journal.record("t-1", "SUCCESS", app="foo", result=1)
        self.settle()
        for d in relayed:
            self.assertEqual(self.successResultOf(d).json["state"], "SUCCESS")
        self.assertEqual(self.successResultOf(self.wait("b2")).json["state"], "SUCCESS")


class ConnectionCapTests(SynchronousTestCase):
    def connect(self, factory):
        protocol = factory.buildProtocol(IPv4Address("TCP", "203.0.113.7", 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_connections_beyond_the_cap_get_503(self):
        # No idle timeout: its timer would outlive this synchronous test.
        site = make_site(BranchAPI(LocalOperations(MemoryStore()), clock=Clock()).resource(),
                         timeout=None, limit=2)
        first, _ = self.connect(site)
        second, _ = self.connect(site)
        third, transport = self.connect(site)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer)
        self.assertIn(b"Content-Type: application/json", answer)
        self.assertIn(b'{"error": "too many connections: retry later"}', answer)
        self.assertTrue(transport.disconnecting)
        # A place freed is taken again.
        first.connectionLost(None)
        fourth, transport = self.connect(site)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)


def _tls_get(port, cafile, path):
    """In a thread: GET C{path} over TLS, offering ALPN as curl and browsers do."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                        f"Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            return tls.selected_alpn_protocol(), answer


class TLSConnectionCapTests(TestCase):
    def test_a_client_offering_alpn_gets_http_1_1(self):
        """
        Over TLS (C{--http ssl:...}), a client that offers ALPN (curl,
        browsers, urllib3) is served HTTP/1.1, not refused.
        """
        key, cert = self_signed(self.mktemp_dir(), "localhost", addresses=["127.0.0.1"])
        site = make_site(BranchAPI(LocalOperations(MemoryStore()), clock=Clock()).resource(),
                         timeout=None)
        endpoint = serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        d = endpoint.listen(site)

        def listening(port):
            self.addCleanup(port.stopListening)
            return threads.deferToThread(_tls_get, port.getHost().port, cert, "/ping/")

        def check(result):
            protocol, answer = result
            self.assertEqual(protocol, "http/1.1")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
            self.assertTrue(answer.endswith(b'{"ok": "pong"}\n'), answer)

        return d.addCallback(listening).addCallback(check)

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path)
        return path
