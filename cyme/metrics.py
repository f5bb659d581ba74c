"""The branch's durations as Prometheus histograms, in one registry per branch.

The counts and states on ``/metrics`` are read from the branch's parts at
each scrape (L{cyme.api.prometheus}); a duration exists only the moment it
is measured, so the parts that measure one (the supervisor's tick, its
liveness pings, the result journal's writes, the API's requests) observe
it into a histogram of the L{Metrics} handed to them.  ``makeService``
makes one for the branch; a part made without one (a test) gets its own.
"""

from prometheus_client import CollectorRegistry, Histogram

#: Upper bounds (seconds) of the histograms' buckets.
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
JOURNAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Waits for a task's result (?timeout= up to 300 s) are requests too.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


class Metrics:
    """The histograms of one branch, in their own C{registry}."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.tick_seconds = Histogram(
            "cyme_supervisor_tick_duration_seconds",
            "Time a supervisor tick held the reactor (converging; pings and queue "
            "checks run after it).",
            buckets=TICK_BUCKETS, registry=self.registry,
        )
        self.ping_seconds = Histogram(
            "cyme_worker_ping_round_trip_seconds",
            "Time from a liveness ping to the last answer of the workers it asked, "
            "for each ping every one of them answered.",
            buckets=PING_BUCKETS, registry=self.registry,
        )
        self.journal_write_seconds = Histogram(
            "cyme_journal_write_duration_seconds",
            "Time a write of the result journal took (write and fsync of the lines "
            "recorded meanwhile).",
            buckets=JOURNAL_BUCKETS, registry=self.registry,
        )
        self._http = Histogram(
            "cyme_http_request_duration_seconds",
            "Time from a request's arrival to its answer's end, by route template, "
            "method and status (its _count: the requests).",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=self.registry,
        )
        # The label lookup costs more than the observation: on the queued
        # URLs' route, every request would pay it.
        self._http_children = {}

    def http_request(self, route, method, status, seconds):
        """One request to C{route} (a template) answered C{status} after C{seconds}."""
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self._http.labels(route, method, str(status))
        child.observe(seconds)

    def collect(self):
        """The histograms' metric families, without the C{_created} series."""
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
