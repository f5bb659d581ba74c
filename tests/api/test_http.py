"""The API's site as the daemon builds it (cyme.api.http): its access log."""

import io

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from cyme.amqp import BrokerPool
from cyme.api.http import make_site
from cyme.api.routes import BranchAPI
from cyme.operations.health import BranchHealth
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore


class AccessLogTests(SynchronousTestCase):
    def setUp(self):
        self.site = make_site(BranchAPI(LocalOperations(MemoryStore()), clock=Clock()).resource())
        self.site.logFile = io.StringIO()

    def get(self, path):
        channel = DummyChannel()
        channel.site = channel.factory = self.site
        request = self.site.requestFactory(channel)
        request.gotLength(0)
        request.requestReceived(b"GET", path, b"HTTP/1.1")
        return request

    def logged(self):
        return self.site.logFile.getvalue().splitlines()

    def test_probes_answered_200_are_left_out(self):
        # A load balancer's probe every few seconds would bury the rest.
        for path in (b"/ping/", b"/ping", b"/health/", b"/health"):
            self.assertEqual(self.get(path).code, 200, path)
        self.assertEqual(self.logged(), [])

    def test_other_requests_are_logged(self):
        # DummyChannel's peer is remote: without a token, a 401.
        self.get(b"/")
        (line,) = self.logged()
        self.assertIn('"GET / HTTP/1.1" 401', line)

    def test_a_probe_that_fails_is_logged(self):
        # A branch whose bus broker was never reached.
        store, clock = MemoryStore(), Clock()
        readiness = BranchHealth("b", store, BrokerPool(clock), "amqp://rabbit//", clock)
        ops = LocalOperations(store, readiness=readiness)
        self.site.resource = BranchAPI(ops, clock=Clock()).resource()
        self.assertEqual(self.get(b"/health/").code, 503)
        (line,) = self.logged()
        self.assertIn('"GET /health/ HTTP/1.1" 503', line)

