"""Queued URLs: tasks accepted per second over HTTP, accept latency, and end to end.

accepted: 16 concurrent keep-alive clients (wrk) sending
          ``GET /bench/queue/<q>/http://127.0.0.1:<target>/x?n=1`` to one
          branch as fast as they can for ``--seconds``; each 202 means the
          broker confirmed the task and the branch recorded it.  Nobody
          consumes that queue meanwhile (it is purged after): the figure
          is the branch's and the broker's at their limit.
latency:  the same requests at a fixed ``--rate`` (1,000/s) over 16
          keep-alive connections, open loop: each latency counts from when
          the request was due (no coordinated omission).  Side by side
          with Celery's own client publishing the same task with publisher
          confirms (``send_task`` with ``confirm_publish``, 16 threads
          paced alike), the broker's floor.  Both with the queue consumed
          as it fills (a fleet that keeps up: ``_drain.py``), then with
          nobody consuming it (a growing backlog, which RabbitMQ confirms
          more slowly).  ``--rounds`` alternating rounds; medians of the
          rounds' p50 and p99.
end to end: ``--tasks`` tasks against 2 worker instances (prefork, 1
          process each) doing the HTTP request to a local target, in
          ``--rounds`` alternating rounds (medians):
  cyme:     queued over HTTP (16 clients), results awaited with
            ``GET /bench/query/<uuid>/wait/``;
  baseline: Celery's own client on the same workers and queue:
            ``send_task("cyme.webhook", …)`` with the rpc result backend,
            then ``AsyncResult.get()`` for each.
Targets: >= 1,000 accepted/s; p99 accept latency <= 20 ms at 1,000/s with
the queue consumed; end to end >= 0.8x the baseline.

    .venv/bin/python bench/tasks_throughput.py [--seconds 10] [--rate 1000]
        [--rounds 5] [--tasks 400]
"""

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402
import _paced  # noqa: E402
from _target import Target  # noqa: E402


def accept_rate(branch, queue, target_port, seconds):
    url = f"http://127.0.0.1:{branch.port}/{c.APP}/queue/{queue}/http://127.0.0.1:{target_port}/x?n=1"
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    rate = p50 = p99 = None
    non2xx = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rate = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = _ms(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _ms(parts[1])
        elif "Non-2xx" in line:
            non2xx = int(parts[-1])
    if rate is None or non2xx:
        raise RuntimeError(f"wrk said:\n{out}")
    return rate, p50, p99


def _ms(text):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def cyme_end_to_end(branch, queue, target_port, count):
    """Queue C{count} tasks over HTTP (16 clients), then await every result.

    Like the baseline (send everything, then get every result), so both
    keep the workers equally busy.
    """
    path = f"/{c.APP}/queue/{queue}/http://127.0.0.1:{target_port}/x"
    local = threading.local()

    def connection():
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", branch.port, timeout=180)
        return local.conn

    def queue_one(_):
        conn = connection()
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())["uuid"]

    def wait_one(task_id):
        conn = connection()
        conn.request("GET", f"/{c.APP}/query/{task_id}/wait/?timeout=120")
        result = json.loads(conn.getresponse().read())
        if result.get("state") != "SUCCESS":
            raise RuntimeError(f"task {task_id}: {result}")

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(queue_one, range(count)))
        list(pool.map(wait_one, ids))
    return count / (time.monotonic() - t0)


def baseline_end_to_end(queue, target_port, count):
    from celery import Celery

    app = Celery("cyme-bench-client", broker=c.BROKER, backend="rpc://")
    app.conf.result_persistent = True
    url = f"http://127.0.0.1:{target_port}/x"
    # The target is on loopback: listed, as the branch lists the app's allow-list.
    kwargs = {"method": "GET", "url": url, "timeout": 60, "allowed_hosts": ["127.0.0.1"]}
    # Connect first, as the branch is connected before it is timed.
    app.send_task("cyme.webhook", kwargs=kwargs, queue=queue).get(timeout=60)
    t0 = time.monotonic()
    results = [app.send_task("cyme.webhook", kwargs=kwargs, queue=queue) for _ in range(count)]
    for result in results:
        if result.get(timeout=120)["status_code"] != 200:
            raise RuntimeError("baseline task failed")
    return count / (time.monotonic() - t0)


def purge(queue, settle=0.0):
    """Empty C{queue}; then give the broker C{settle} seconds to clean up.

    Over AMQP, so that it empties the queue on whichever broker the bench
    uses (a private node too).
    """
    from kombu import Connection

    try:
        with Connection(c.BROKER, connect_timeout=10) as conn:
            conn.default_channel.queue_purge(queue)
    except Exception as e:  # noqa: BLE001 - a queue never declared, a broker gone
        print(f"  cannot purge {queue}: {e!r}", file=sys.stderr)
    time.sleep(settle)


class Drainer:
    """A consumer that keeps C{queue} empty while it runs (L{_drain})."""

    def __init__(self, queue):
        self.queue = queue
        self.process = None

    def __enter__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(here, "_drain.py"), c.BROKER, self.queue],
            stdout=subprocess.PIPE, text=True,
        )
        if self.process.stdout.readline().strip() != "draining":
            raise RuntimeError(f"the consumer of {self.queue} did not start")
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=10)


def cyme_paced(branch, queue, target_port, rate, seconds):
    """p50 and p99 (ms) of queueing at C{rate} over 16 connections."""
    path = f"/{c.APP}/queue/{queue}/http://127.0.0.1:{target_port}/x?n=1"
    latencies, statuses = _paced.paced_get("127.0.0.1", branch.port, path, rate, seconds)
    if set(statuses) != {202}:
        raise RuntimeError(f"not all accepted: {statuses}")
    return _paced.percentile(latencies, 0.5) * 1000, _paced.percentile(latencies, 0.99) * 1000


class CeleryPaced:
    """Celery's own client publishing with confirms, paced like L{cyme_paced}."""

    clients = 16

    def __init__(self, target_port):
        from celery import Celery

        self.app = Celery("cyme-bench-paced", broker=c.BROKER)
        self.app.conf.broker_transport_options = {"confirm_publish": True}
        # One connection per client thread, as cyme's clients each have one.
        self.app.conf.broker_pool_limit = self.clients
        self.kwargs = {"method": "GET", "url": f"http://127.0.0.1:{target_port}/x?n=1",
                       "timeout": 60, "allowed_hosts": ["127.0.0.1"]}

    def __call__(self, queue, rate, seconds):
        total = int(rate * seconds)
        start = time.perf_counter() + 0.05
        latencies = []

        def client(first):
            mine = []
            for n in range(first, total, self.clients):
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.app.send_task("cyme.webhook", kwargs=self.kwargs, queue=queue)
                mine.append(time.perf_counter() - due)
            return mine

        with concurrent.futures.ThreadPoolExecutor(self.clients) as pool:
            for mine in pool.map(client, range(self.clients)):
                latencies.extend(mine)
        return _paced.percentile(latencies, 0.5) * 1000, _paced.percentile(latencies, 0.99) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--parts", default="latency,accept,e2e",
                        help="which figures (comma-separated: latency, accept, e2e)")
    c.add_branch_options(parser)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("tasks_throughput: needs wrk (apt-get install wrk)")
    c.install_limits(900 + 60 * args.rounds)
    tag = c.tag()
    print(f"# queued URLs, {c.machine()}")
    target = Target()
    branch = c.Branch("tasks", "--cluster", f"bench-tasks-{tag}", "-l", "warn",
                      *args.branch_options, keep_root=args.keep)
    names = ("accept", "consumed", "backlog", "base-consumed", "base-backlog", "work")
    queues = {name: f"{name}-{tag}" for name in names}
    paced = {key: [] for key in ("cyme-consumed", "base-consumed", "cyme-backlog",
                                 "base-backlog")}
    parts = set(args.parts.split(","))
    rate = p50 = p99 = math.nan
    e2e = {"cyme": [], "base": []}
    try:
        branch.start()
        c.ensure_app(branch)
        for queue in queues.values():
            status, body = branch.request("PUT", f"/{c.APP}/queues/{queue}/")
            if status not in (200, 201):
                raise RuntimeError(f"queue {queue}: {status} {body}")
            # Warm-up: the first publish declares the queue on the broker.
            branch.request(
                "GET", f"/{c.APP}/queue/{queue}/http://127.0.0.1:{target.server_port}/x"
            )
            purge(queue)
        # The latency rounds first, on a quiet broker: the saturated run
        # leaves it tens of thousands of persistent messages to purge,
        # whose clean-up on disk would stall the rounds after it.
        if "latency" in parts:
            celery_paced = CeleryPaced(target.server_port)
            celery_paced(queues["base-consumed"], args.rate, 1)  # connects its clients
            with Drainer(queues["consumed"]), Drainer(queues["base-consumed"]):
                for _ in range(args.rounds):
                    paced["cyme-consumed"].append(c.undisturbed(
                        branch, cyme_paced, branch, queues["consumed"], target.server_port,
                        args.rate, args.seconds,
                    ))
                    paced["base-consumed"].append(c.undisturbed(
                        branch, celery_paced, queues["base-consumed"], args.rate, args.seconds
                    ))
            for _ in range(args.rounds):
                paced["cyme-backlog"].append(c.undisturbed(
                    branch, cyme_paced, branch, queues["backlog"], target.server_port,
                    args.rate, args.seconds,
                ))
                purge(queues["backlog"], settle=3)
                paced["base-backlog"].append(c.undisturbed(
                    branch, celery_paced, queues["base-backlog"], args.rate, args.seconds
                ))
                purge(queues["base-backlog"], settle=3)
        if "accept" in parts:
            rate, p50, p99 = accept_rate(branch, queues["accept"], target.server_port, args.seconds)
            purge(queues["accept"], settle=5)

        if "e2e" in parts:
            for n in range(2):
                status, body = branch.request(
                    "PUT", f"/{c.APP}/instances/tp-{tag}-{n}/",
                    params={"queues": queues["work"], "max_concurrency": "1",
                            "min_concurrency": "1"},
                    timeout=60,
                )
                if status not in (200, 201) or body.get("state") != "running":
                    raise RuntimeError(f"worker {n}: {status} {body}")
            busy = queues["work"]
            cyme_end_to_end(branch, busy, target.server_port, 20)  # warm-up
            for _ in range(args.rounds):
                e2e["cyme"].append(c.undisturbed(
                    branch, cyme_end_to_end, branch, busy, target.server_port, args.tasks
                ))
                e2e["base"].append(c.undisturbed(
                    branch, baseline_end_to_end, busy, target.server_port, args.tasks
                ))
        cyme_e2e, base_e2e = c.median(e2e["cyme"]), c.median(e2e["base"])
    finally:
        branch.stop()
        target.close()
        for queue in queues.values():
            purge(queue)

    def ms(key, which):
        return c.median([sample[which] for sample in paced[key]])

    each = f"at {args.rate:.0f}/s"
    c.table(
        ["queued URLs", "cyme", "Celery client", "target"],
        [
            ["accepted, 16 clients as fast as they go", f"{rate:.0f}/s", "", ">= 1000/s"],
            ["  their latency p50 / p99", f"{p50:.1f} / {p99:.1f} ms", "", ""],
            [f"accept latency {each}, queue consumed", "", "", ""],
            ["  p50", f"{ms('cyme-consumed', 0):.1f} ms", f"{ms('base-consumed', 0):.1f} ms", ""],
            ["  p99", f"{ms('cyme-consumed', 1):.1f} ms", f"{ms('base-consumed', 1):.1f} ms",
             "<= 20 ms"],
            [f"accept latency {each}, no consumer (backlog)", "", "", ""],
            ["  p50", f"{ms('cyme-backlog', 0):.1f} ms", f"{ms('base-backlog', 0):.1f} ms", ""],
            ["  p99", f"{ms('cyme-backlog', 1):.1f} ms", f"{ms('base-backlog', 1):.1f} ms", ""],
            ["end to end (2 workers)", f"{cyme_e2e:.0f}/s", f"{base_e2e:.0f}/s", ">= 0.8x"],
        ],
    )
    p99 = ms("cyme-consumed", 1)
    ratio = cyme_e2e / base_e2e if base_e2e else math.nan
    print("rounds of the latency figures (p50/p99 ms): "
          + "; ".join(f"{k} " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in v)
                      for k, v in paced.items()))
    print("rounds of the end-to-end figures (tasks/s): "
          + "; ".join(f"{k} " + ", ".join(f"{v:.0f}" for v in vs) for k, vs in e2e.items()))
    print(f"p99 at {args.rate:.0f}/s, queue consumed, cyme/celery: "
          f"{p99 / ms('base-consumed', 1):.2f}; end-to-end ratio cyme/celery: {ratio:.2f}")
    print(f"target >= 1000 accepted/s: {c.verdict(rate >= 1000, not math.isnan(rate))}; "
          f"p99 <= 20 ms: {c.verdict(p99 <= 20, not math.isnan(p99))}; end to end >= 0.8x: "
          f"{c.verdict(ratio >= 0.8, not math.isnan(ratio))}")


if __name__ == "__main__":
    main()
