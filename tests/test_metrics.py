"""The branch's histograms (L{cyme.metrics.Metrics}): one registry each."""

from prometheus_client.exposition import generate_latest
from twisted.trial.unittest import SynchronousTestCase

from cyme.metrics import Metrics


class MetricsTests(SynchronousTestCase):
    def test_each_branch_its_own_registry(self):
        one, two = Metrics(), Metrics()
        one.tick_seconds.observe(0.002)
        one.http_request("/<app>", "GET", 200, 0.01)
        one.http_request("/<app>", "GET", 200, 0.03)
        sample = one.registry.get_sample_value
        self.assertEqual(sample("cyme_supervisor_tick_duration_seconds_count"), 1)
        labels = {"route": "/<app>", "method": "GET", "status": "200"}
        self.assertEqual(sample("cyme_http_request_duration_seconds_count", labels), 2)
        self.assertAlmostEqual(sample("cyme_http_request_duration_seconds_sum", labels), 0.04)
        self.assertEqual(two.registry.get_sample_value(
            "cyme_supervisor_tick_duration_seconds_count"), 0)

    def test_no_created_series(self):
        # prometheus_client adds a <name>_created gauge to every histogram:
        # the time it was made, which nobody graphs.
        metrics = Metrics()
        metrics.http_request("/", "GET", 200, 0.01)
        self.assertIn(b"_created", generate_latest(metrics.registry))
        page = generate_latest(metrics)
        self.assertNotIn(b"_created", page)
        self.assertIn(b'cyme_http_request_duration_seconds_count{method="GET",route="/",'
                      b'status="200"} 1.0', page)
