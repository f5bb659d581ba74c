"""Cluster-wide instance listing: three branches against one.

cluster:  three branches (one cluster, one broker) holding 30 instances,
          10 each; ``GET /bench/instances/`` sent to one of them, which
          asks the others over the bus and merges their answers.
baseline: one branch holding the same 30 instances; the same request.

For each: p50/p99 latency over 1,000 sequential requests on one keep-alive
connection, then throughput with 16 concurrent keep-alive clients (wrk
when installed, else 16 threads).  The instances are created disabled:
the listing never touches a worker, and 30 idle workers would only take
CPU from the measurement on a 2-core machine.
Targets: cluster p50 <= 10 ms, p99 <= 50 ms, throughput >= 0.5x baseline.

    .venv/bin/python bench/cluster_listing.py [--requests 1000] [--seconds 10]
"""

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

PATH = f"/{c.APP}/instances/"


def throughput(port, seconds, clients=16):
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run(
            [wrk, "-t2", f"-c{clients}", f"-d{seconds}s", f"http://127.0.0.1:{port}{PATH}"],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1]), "wrk"
        raise RuntimeError(f"wrk said:\n{out}")
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            conn.request("GET", PATH)
            conn.getresponse().read()
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds, "threads"


def populate(entry, owners):
    c.ensure_app(entry)
    for n in range(30):
        owner = owners[n % len(owners)]
        status, body = entry.request(
            "PUT", f"/{c.APP}/instances/list-{n:02d}/",
            params={"is_enabled": "false", "branch": owner},
        )
        if status not in (200, 201):
            raise RuntimeError(f"instance {n}: {status} {body}")
    status, names = entry.request("GET", PATH)
    if status != 200 or len(names) != 30:
        raise RuntimeError(f"listing: {status} {names}")


def measure(entry, requests, seconds):
    c.keepalive_latencies(entry.port, [PATH], 50)  # warm-up
    lat = c.keepalive_latencies(entry.port, [PATH], requests)[PATH]
    rate, how = throughput(entry.port, seconds)
    return c.quantile(lat, 0.5), c.quantile(lat, 0.99), rate, how


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    c.add_branch_options(parser)
    args = parser.parse_args()
    extra = dict(keep_root=args.keep)
    c.install_limits(600)
    tag = c.tag()
    print(f"# cluster listing, {c.machine()}")
    results = {}
    branches = []
    try:
        cluster = [
            c.Branch(f"list-{name}", "--cluster", f"bench-{tag}", "-l", "warn",
                     *args.branch_options, **extra)
            for name in ("a", "b", "c")
        ]
        branches += cluster
        for b in cluster:
            b.start()
        ids = [f"bench-list-{n}" for n in ("a", "b", "c")]
        deadline = time.monotonic() + 20
        while c.Branch.request(cluster[0], "GET", "/branches/")[1] != sorted(ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the three branches did not see each other")
            time.sleep(0.2)
        populate(cluster[0], ids)
        results["cluster (3 branches)"] = measure(cluster[0], args.requests, args.seconds)
        for b in cluster:
            b.stop()
        single = c.Branch("list-single", "--cluster", f"bench-single-{tag}", "-l", "warn",
                          *args.branch_options, **extra)
        branches.append(single)
        single.start()
        populate(single, ["bench-list-single"])
        results["single branch"] = measure(single, args.requests, args.seconds)
        single.stop()
    finally:
        for b in branches:
            b.stop()
    rows = [
        [name, f"{p50 * 1000:.2f} ms", f"{p99 * 1000:.2f} ms", f"{rate:.0f}/s ({how})"]
        for name, (p50, p99, rate, how) in results.items()
    ]
    c.table(["listing 30 instances", "p50", "p99", "16 clients"], rows)
    p50, p99, rate, _ = results["cluster (3 branches)"]
    ratio = rate / results["single branch"][2]
    print(f"throughput ratio cluster/single: {ratio:.2f}")
    print(f"target p50 <= 10 ms: {c.verdict(p50 <= 0.010)}; p99 <= 50 ms: "
          f"{c.verdict(p99 <= 0.050)}; throughput >= 0.5x: {c.verdict(ratio >= 0.5)}")


if __name__ == "__main__":
    main()
