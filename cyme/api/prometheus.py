"""The ``/metrics`` page: a branch's supervision figures as Prometheus text.

A few counters and one gauge in the text exposition format (version
0.0.4), written out directly: the figures are the supervisor's own counts,
read at each scrape, so there is no registry to keep.  Kept by hand only
while the page is these four series with the bytes the restructure had to
keep; the metrics of issue 13 (histograms, HTTP and bus series) move it to
prometheus_client and a collector over the live state.
"""

CONTENT_TYPE = b"text/plain; version=0.0.4"


def render(figures):
    """
    The text of C{figures} (L{IOperations.metrics}: C{ticks}, C{messages},
    C{restarts}, C{states}, C{results_dropped} where the branch queues
    tasks, and C{bus_dropped} on a cluster), as bytes; empty when there are
    none (a branch without a supervisor).
    """
    if figures is None:
        return b""
    lines = [
        "# HELP cyme_supervisor_ticks_total Supervisor ticks since start.",
        "# TYPE cyme_supervisor_ticks_total counter",
        f"cyme_supervisor_ticks_total {figures['ticks']}",
        "# HELP cyme_amqp_messages_published_total Remote-control messages sent.",
        "# TYPE cyme_amqp_messages_published_total counter",
        f"cyme_amqp_messages_published_total {figures['messages']}",
        "# HELP cyme_worker_restarts_total Worker restarts since start.",
        "# TYPE cyme_worker_restarts_total counter",
        f"cyme_worker_restarts_total {figures['restarts']}",
        "# HELP cyme_workers Worker instances of this branch by state.",
        "# TYPE cyme_workers gauge",
    ]
    lines += [f'cyme_workers{{state="{k}"}} {v}' for k, v in sorted(figures["states"].items())]
    if "results_dropped" in figures:
        lines += [
            "# HELP cyme_results_dropped_total Messages on the branch's result queues that "
            "were no result of a task it waits for.",
            "# TYPE cyme_results_dropped_total counter",
            f"cyme_results_dropped_total {figures['results_dropped']}",
        ]
    if "bus_dropped" in figures:
        lines += [
            "# HELP cyme_bus_messages_dropped_total Bus messages dropped unread, by reason "
            "(unsealed, unopened, expired, replayed, invalid, undecodable).",
            "# TYPE cyme_bus_messages_dropped_total counter",
        ]
        lines += [f'cyme_bus_messages_dropped_total{{reason="{k}"}} {v}'
                  for k, v in sorted(figures["bus_dropped"].items())]
    return ("\n".join(lines) + "\n").encode("ascii")
