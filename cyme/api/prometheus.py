"""The ``/metrics`` page: the branch in Prometheus' text format.

Everything on it is read at the scrape, from two places.  The branch's
figures as they are now (L{IOperations.metrics}: the supervisor's workers,
the queued URLs and results, the bus and the replication), which
L{FiguresCollector} turns into metric families: no part keeps a second
count beside its own for this page.  And the durations the branch's parts
observed as they happened, in histograms (L{cyme.metrics.Metrics}): ticks,
pings, journal writes, HTTP requests.  prometheus_client writes the text.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: The replication merges shown even before the first: C{(source, outcome)}.
_MERGES = [(source, outcome) for source in ("write", "catch_up")
           for outcome in ("changed", "unchanged")]


def render(figures, metrics):
    """The page (bytes): C{figures} (L{IOperations.metrics}) and C{metrics}' histograms."""
    return generate_latest(_Page(FiguresCollector(figures), metrics))


class _Page:
    """The collectors of one scrape (C{generate_latest} asks for C{collect})."""

    def __init__(self, *collectors):
        self._collectors = collectors

    def collect(self):
        for collector in self._collectors:
            yield from collector.collect()


def _family(kind, name, documentation, labels, values):
    """A metric family of C{kind} with a sample per C{labels-tuple: value}."""
    family = kind(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class FiguresCollector:
    """The metric families of a branch's figures (L{IOperations.metrics})."""

    def __init__(self, figures):
        self.figures = figures

    def collect(self):
        f = self.figures
        if "ticks" in f:
            yield from self._supervision(f)
        if "queued" in f:
            yield _family(
                CounterMetricFamily, "cyme_queued_urls",
                "URLs queued on this branch by outcome: accepted (the broker has the task), "
                "refused (the URL is not allowed), failed (the broker or journal did not "
                "take it).", ["outcome"], {(k,): v for k, v in f["queued"].items()})
            yield _family(
                CounterMetricFamily, "cyme_results_stored",
                "Task results of the workers written to the result journal, by task state.",
                ["state"], {(k,): v for k, v in f["results_stored"].items()})
            yield _family(
                CounterMetricFamily, "cyme_results_dropped",
                "Messages on the branch's result queues that were no result of a task it "
                "waits for.", [], {(): f["results_dropped"]})
        if "bus_dropped" in f:
            yield from self._cluster(f)

    def _supervision(self, f):
        yield _family(CounterMetricFamily, "cyme_supervisor_ticks",
                      "Supervisor ticks since the branch started.", [], {(): f["ticks"]})
        yield _family(CounterMetricFamily, "cyme_amqp_messages_published",
                      "Remote-control messages sent to workers.", [], {(): f["messages"]})
        yield _family(
            GaugeMetricFamily, "cyme_workers",
            "Worker instances of this branch by app and state (a deleted instance's "
            "worker, while it stops, has app \"\").", ["app", "state"], f["by_app"])
        # "name", not "instance": Prometheus gives every series it scrapes
        # an "instance" label of its own (the branch's address).
        workers = f["workers"]
        yield _family(
            CounterMetricFamily, "cyme_worker_restarts",
            "Restarts of each instance's worker after it failed, since the branch started.",
            ["app", "name"], {(w["app"], w["instance"]): w["restarts"] for w in workers})
        yield _family(
            CounterMetricFamily, "cyme_worker_quarantines",
            "Times each instance was quarantined for failing too often, since the "
            "branch started.", ["app", "name"],
            {(w["app"], w["instance"]): w["quarantines"] for w in workers})

    def _cluster(self, f):
        yield _family(
            CounterMetricFamily, "cyme_bus_messages_dropped",
            "Bus messages dropped unread, by reason (unsealed, unopened, expired, "
            "replayed, misdirected, stale, invalid, undecodable).", ["reason"],
            {(k,): v for k, v in f["bus_dropped"].items()})
        yield _family(
            GaugeMetricFamily, "cyme_bus_peers",
            "Other branches this one heard of, by state (online, offline, incompatible: "
            "online but speaking another bus protocol).", ["state"],
            {(k,): v for k, v in f["peers"].items()})
        yield _family(
            CounterMetricFamily, "cyme_replication_merges",
            "Replicas of other branches merged into this one's store, by source (write: "
            "a branch sent its write; catch_up: this branch pulled one) and outcome "
            "(changed the store or unchanged).", ["source", "outcome"],
            {key: f["merges"].get(key, 0) for key in _MERGES} | f["merges"])
