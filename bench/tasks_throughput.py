"""Queued URLs: tasks accepted per second over HTTP, and completed end to end.

accept:   16 concurrent keep-alive clients (wrk) sending
          ``GET /bench/queue/<q>/http://127.0.0.1:<target>/x?n=1`` to one
          branch for ``--seconds``; each 202 means the broker confirmed the
          task and the branch recorded it.  Nobody consumes that queue
          meanwhile (it is purged after), so the figure is the branch's.
end to end: ``--tasks`` tasks against 2 worker instances (prefork, 1
          process each) doing the HTTP request to a local target:
  cyme:     queued over HTTP (16 clients), results awaited with
            ``GET /bench/query/<uuid>/wait/``;
  baseline: Celery's own client on the same workers and queue:
            ``send_task("cyme.webhook", …)`` with the rpc result backend,
            then ``AsyncResult.get()`` for each.
Targets: >= 1,000 accepted/s, p99 accept latency <= 20 ms, end to end
>= 0.8x the baseline.

    .venv/bin/python bench/tasks_throughput.py [--seconds 10] [--tasks 400]
"""

import argparse
import concurrent.futures
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402


class Target(http.server.BaseHTTPRequestHandler):
    """The URL the tasks request: answers at once."""

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_target():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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
    kwargs = {"method": "GET", "url": url, "timeout": 60}
    # Connect first, as the branch is connected before it is timed.
    app.send_task("cyme.webhook", kwargs=kwargs, queue=queue).get(timeout=60)
    t0 = time.monotonic()
    results = [app.send_task("cyme.webhook", kwargs=kwargs, queue=queue) for _ in range(count)]
    for result in results:
        if result.get(timeout=120)["status_code"] != 200:
            raise RuntimeError("baseline task failed")
    return count / (time.monotonic() - t0)


def purge(queue):
    subprocess.run(
        ["rabbitmqctl", "-q", "purge_queue", "-p", c.VHOST, queue],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=400)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("tasks_throughput: needs wrk (apt-get install wrk)")
    c.install_limits(900)
    tag = c.tag()
    print(f"# queued URLs, {c.machine()}")
    target = start_target()
    branch = c.Branch("tasks", "--cluster", f"bench-tasks-{tag}", "-l", "warn")
    try:
        branch.start()
        c.ensure_app(branch)
        idle, busy = f"accept-{tag}", f"work-{tag}"
        for queue in (idle, busy):
            status, body = branch.request("PUT", f"/{c.APP}/queues/{queue}/")
            if status not in (200, 201):
                raise RuntimeError(f"queue {queue}: {status} {body}")
        # Warm-up: the first publish declares the queue on the broker.
        branch.request("GET", f"/{c.APP}/queue/{idle}/http://127.0.0.1:{target.server_port}/x")
        rate, p50, p99 = accept_rate(branch, idle, target.server_port, args.seconds)
        purge(idle)
        for n in range(2):
            status, body = branch.request(
                "PUT", f"/{c.APP}/instances/tp-{tag}-{n}/",
                params={"queues": busy, "max_concurrency": "1", "min_concurrency": "1"},
                timeout=60,
            )
            if status not in (200, 201) or body.get("state") != "running":
                raise RuntimeError(f"worker {n}: {status} {body}")
        cyme_e2e = cyme_end_to_end(branch, busy, target.server_port, 20)  # warm-up
        cyme_e2e = cyme_end_to_end(branch, busy, target.server_port, args.tasks)
        base_e2e = baseline_end_to_end(busy, target.server_port, args.tasks)
    finally:
        branch.stop()
        target.shutdown()
    c.table(
        ["queued URLs", "figure", "target"],
        [
            ["accepted over HTTP (16 clients)", f"{rate:.0f}/s", ">= 1000/s"],
            ["accept latency p50", f"{p50:.1f} ms", ""],
            ["accept latency p99", f"{p99:.1f} ms", "<= 20 ms"],
            ["end to end, cyme (2 workers)", f"{cyme_e2e:.0f}/s", ""],
            ["end to end, Celery client (same workers)", f"{base_e2e:.0f}/s", ""],
        ],
    )
    ratio = cyme_e2e / base_e2e
    print(f"end-to-end ratio cyme/celery: {ratio:.2f}")
    print(f"target >= 1000 accepted/s: {c.verdict(rate >= 1000)}; p99 <= 20 ms: "
          f"{c.verdict(p99 <= 20)}; end to end >= 0.8x: {c.verdict(ratio >= 0.8)}")


if __name__ == "__main__":
    main()
