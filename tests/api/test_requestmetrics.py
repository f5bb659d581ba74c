"""Each HTTP request timed by route template, method and status
(L{cyme.api.requestmetrics}), through the guard of a real branch API."""

from twisted.internet.task import Clock
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from cyme.api.guard import GuardResource
from cyme.api.requestmetrics import OTHER, QUEUE_ROUTE, RequestMetrics
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.metrics import Metrics
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore

NAME = "cyme_http_request_duration_seconds"


class RequestMetricsTests(SynchronousTestCase):
    def setUp(self):
        self.metrics = Metrics()
        self.api = BranchAPI(LocalOperations(MemoryStore()), metrics=self.metrics, clock=Clock())
        self.times = []
        observe = RequestMetrics(self.metrics, self.api.app.url_map, timer=self.timer)
        self.client = APIClient(GuardResource(self.api.app.resource(), self.api.gate,
                                              self.api.queue_task, observe=observe))
        self.routes = RequestMetrics(self.metrics, self.api.app.url_map)
        self.call("PUT", "/foo/")

    def timer(self):
        return self.times.pop(0) if self.times else 0.0

    def call(self, method, path, **kwargs):
        return self.successResultOf(self.client.request(method, path, **kwargs))

    def count(self, route, method, status):
        return self.metrics.registry.get_sample_value(
            NAME + "_count", {"route": route, "method": method, "status": str(status)})

    def route(self, method, path):
        request = Request(DummyChannel())
        request.method, request.path = method.encode(), path.encode()
        return self.routes.route(request)

    def test_routes_are_templates(self):
        for method, path, route in [
            ("GET", "/", "/"),
            ("GET", "/branches/", "/branches"),
            ("GET", "/foo/instances/w1/", "/<app>/instances/<name>"),
            ("DELETE", "/foo/instance/w1", "/<app>/instance/<name>"),
            ("PUT", "/foo/instances/!/w1/", "/<app>/instances/!/<name>"),
            ("GET", "/instances/w1/", "/instances/<name>"),
            ("GET", "/foo/query/abc/wait/", "/<app>/query/<task_id>/wait"),
            ("POST", "/foo/queue/tasks/http://m/x?y=1", QUEUE_ROUTE),
            ("GET", "/foo/queue/tasks/https%3A%2F%2Fm%2Fx", QUEUE_ROUTE),
            ("GET", "/a/b/c/d/e/f/", OTHER),
            ("DELETE", "/", OTHER),  # no such method here
            ("GET", "/a%20b/", "/<app>"),
            ("GET", "/a/b/c%2Fd/e/", OTHER),
        ]:
            self.assertEqual(self.route(method, path), route, (method, path))

    def test_a_request_is_timed_from_arrival_to_answer(self):
        self.times = [100.0, 100.25]
        self.call("GET", "/foo/instances/w1/")
        labels = {"route": "/<app>/instances/<name>", "method": "GET", "status": "404"}
        self.assertEqual(self.metrics.registry.get_sample_value(NAME + "_sum", labels), 0.25)
        self.assertEqual(self.metrics.registry.get_sample_value(
            NAME + "_bucket", {**labels, "le": "0.1"}), 0)
        self.assertEqual(self.metrics.registry.get_sample_value(
            NAME + "_bucket", {**labels, "le": "0.25"}), 1)

    def test_refused_requests_are_counted_under_their_route(self):
        self.assertEqual(self.call("PUT", "/foo/%2e%2e/").code, 400)
        self.assertEqual(self.call("GET", "/foo/queue/q/http://m/").code, 404)
        self.assertEqual(self.call("TRACE", "/foo/").code, 405)
        self.assertEqual(self.count(OTHER, "PUT", 400), 1)
        self.assertEqual(self.count(QUEUE_ROUTE, "GET", 404), 1)
        self.assertEqual(self.count(OTHER, OTHER, 405), 1)
        self.assertEqual(self.count("/<app>", "PUT", 201), 1)

    def test_a_client_that_left_is_counted(self):
        request = Request(DummyChannel())
        request.method, request.path = b"GET", b"/foo/queue/q/http://m/"
        self.times = [5.0, 7.0]
        RequestMetrics(self.metrics, self.api.app.url_map, timer=self.timer)(request)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.count(QUEUE_ROUTE, "GET", 200), 1)
