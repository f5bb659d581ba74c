"""Rolling restart: how long restarting an app's instances takes, per instance.

One branch with ``--instances`` (4) instances of ``--pool`` (prefork) on
one queue, under a steady stream of queued URLs (``--rate`` a second, each
answered by a local target after ``--task-seconds``).  Each round times:

- **rolling**: ``POST /bench/restart/?parallel=N`` until ``GET
  /restarts/<id>/`` says ``done`` (polled every 50 ms): the fork server
  replaced, then each instance stopped warm and its replacement answering
  ping before the next; the coordinator's own time per instance comes
  from the progress JSON;
- **baseline**: the same instances restarted one by one through the
  single-instance route, ``POST /bench/instances/<name>/restart/``, which
  answers once the new worker is up: what an operator's script does today.

Rounds alternate (``--rounds``, 3); medians.  Throughout, the bench pings
the workers itself (Celery's ``control.ping`` every ~0.3 s) and prints the
fewest that answered during each kind of restart; at the end it waits for
every queued URL and counts the lost ones (not SUCCESS, or never seen by
the target).

    .venv/bin/python bench/rolling_restart.py [--instances 4] [--rounds 3]
        [--parallel 1] [--pool prefork] [--rate 10] [--task-seconds 0.3]
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402
from _target import Target  # noqa: E402


class Background(threading.Thread):
    """Runs C{step} again and again until stopped; C{step}'s errors are kept."""

    def __init__(self, step, interval):
        super().__init__(daemon=True)
        self.step, self.interval = step, interval
        self.stopping = threading.Event()
        self.errors = []

    def run(self):
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - reported at the end
                self.errors.append(repr(e))
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self):
        self.stopping.set()
        self.join(30)


def rolling(branch, names, parallel, timeout):
    """One rolling restart: C{(total seconds, [seconds of each instance])}."""
    t0 = time.monotonic()
    status, body = branch.request("POST", f"/{c.APP}/restart/", {"parallel": parallel})
    if status != 202:
        raise RuntimeError(f"POST /{c.APP}/restart/: {status} {body}")
    deadline = t0 + timeout
    while True:
        status, progress = branch.request("GET", f"/restarts/{body['id']}/", timeout=5)
        if status == 200 and progress["state"] != "running":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"restart still running after {timeout:g} s: {progress}")
        time.sleep(0.05)
    total = time.monotonic() - t0
    if progress["state"] != "done":
        raise RuntimeError(f"restart failed: {progress['reason']}")
    return total, [i["seconds"] for i in progress["instances"]]


def one_by_one(branch, names, timeout):
    """The baseline: C{(total seconds, [seconds of each instance])}."""
    each = []
    t0 = time.monotonic()
    for name in names:
        began = time.monotonic()
        status, body = branch.request(
            "POST", f"/{c.APP}/instances/{name}/restart/", timeout=timeout)
        if status != 200 or body.get("state") != "running":
            raise RuntimeError(f"restart of {name}: {status} {body}")
        each.append(time.monotonic() - began)
    return time.monotonic() - t0, each


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (3)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--pool", default="prefork", help="instance pool (prefork)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="queued URLs a second during the rounds (10; 0: none)")
    parser.add_argument("--task-seconds", type=float, default=0.3,
                        help="seconds the target takes to answer each URL (0.3)")
    parser.add_argument("--timeout", type=float, default=120.0)
    c.add_branch_options(parser)
    args = parser.parse_args()
    c.install_limits(180 + args.rounds * args.instances * 40)
    run = c.tag()
    names = [f"roll{run}x{i}" for i in range(args.instances)]
    queue = f"rolling{run}"
    branch = c.Branch("rolling", *args.branch_options, keep_root=args.keep)
    target = Target(args.task_seconds)
    queued, answering, figures = [], [], {"rolling": [], "one by one": []}
    load = pinger = None
    try:
        branch.start()
        c.ensure_app(branch)
        status, body = branch.request("PUT", f"/{c.APP}/queues/{queue}/")
        if status not in (200, 201):
            raise RuntimeError(f"cannot declare the queue: {status} {body}")
        nodes = set()
        for name in names:
            status, body = branch.request(
                "PUT", f"/{c.APP}/instances/{name}/",
                {"pool": args.pool, "queues": queue}, timeout=args.timeout)
            if status != 201 or body.get("state") != "running":
                raise RuntimeError(f"PUT {name}: {status} {body}")
            nodes.add(body["node"])
        app = c.celery_app()
        print(f"rolling restart: {args.instances} {args.pool} instances, parallel "
              f"{args.parallel}, {args.rounds} rounds of each, {args.rate:g} URLs/s "
              f"answered in {args.task_seconds:g} s; {c.machine()}", flush=True)

        def queue_one():
            n = len(queued)
            url = f"http://127.0.0.1:{target.server_port}/x?n={n}"
            status, body = branch.request("GET", f"/{c.APP}/queue/{queue}/{url}", timeout=20)
            if status != 202:
                raise RuntimeError(f"queueing: {status} {body}")
            queued.append((n, body["uuid"]))

        def ping_all():
            replies = app.control.ping(timeout=0.3)
            answering.append((time.monotonic(),
                              len(nodes & {n for reply in replies for n in reply})))

        pinger = Background(ping_all, 0.3)
        pinger.start()
        if args.rate > 0:
            load = Background(queue_one, 1.0 / args.rate)
            load.start()
        time.sleep(2)
        for i in range(args.rounds):
            for kind in ("rolling", "one by one"):
                began = time.monotonic()
                if kind == "rolling":
                    total, each = rolling(branch, names, args.parallel, args.timeout)
                else:
                    total, each = one_by_one(branch, names, args.timeout)
                fewest = min((n for t, n in answering if began <= t <= time.monotonic()),
                             default=None)
                figures[kind].append((total, each, fewest))
                print(f"  round {i + 1} {kind}: {total:.2f} s in all, "
                      f"{total / args.instances:.2f} s per instance (each: "
                      f"{', '.join(f'{s:.2f}' for s in each)}); fewest answering "
                      f"{fewest}", flush=True)
                time.sleep(2)
        if load is not None:
            load.stop()
        lost = []
        for n, task_id in queued:
            status, body = branch.request(
                "GET", f"/{c.APP}/query/{task_id}/wait/?timeout=60", timeout=70)
            if status != 200 or body.get("state") != "SUCCESS" or n not in target.seen:
                lost.append((n, status, body.get("state") if isinstance(body, dict) else body))
    finally:
        for thread in (load, pinger):
            if thread is not None:
                thread.stop()
        target.close()
        branch.stop()
    print(f"  load average at the end: {c.loadavg()}")
    report(args, figures, queued, lost, (load.errors if load else []) + pinger.errors)


def report(args, figures, queued, lost, errors):
    def row(label, pick):
        return [label, *(f"{c.median([pick(f) for f in figures[k]]):.2f}"
                         for k in ("rolling", "one by one"))]

    n = args.instances
    print()
    print(f"restarting {n} instances (medians of {args.rounds} rounds)")
    c.table(
        ["measure", "rolling", "one by one"],
        [
            row("all of them (s)", lambda f: f[0]),
            row("per instance: all / instances (s)", lambda f: f[0] / n),
            row("per instance, as each was timed (s)", lambda f: c.median(f[1])),
            ["fewest workers answering",
             *(str(min((f[2] for f in figures[k] if f[2] is not None), default="-"))
               for k in ("rolling", "one by one"))],
        ],
    )
    print()
    print(f"  queued URLs: {len(queued)}, lost: {len(lost)} {lost[:5] if lost else ''}")
    if errors:
        print(f"  background errors: {len(errors)} (first: {errors[0]})")
    keep = max(0, n - args.parallel)
    fewest = min((f[2] for f in figures["rolling"] if f[2] is not None), default=-1)
    print(f"  rolling: at least {keep} answering throughout: {c.verdict(fewest >= keep)}; "
          f"no URL lost: {c.verdict(not lost and not errors)}")


if __name__ == "__main__":
    c.run(main)
