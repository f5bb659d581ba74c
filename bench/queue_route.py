"""The queued-URL route against a baseline checkout, side by side in one run.

Two branches on one broker, this tree's and a baseline's (another checkout
of cyme with its own ``.venv``, such as the tree before a change), each
with app ``bench`` and its own queue; in ``--rounds`` rounds, alternating
which goes first:

paced:     ``--rate`` per second over 16 connections, open loop, with the
           queue consumed as it fills, for ``--seconds``: p50 and p99 of the
           accept latency;
accepted:  16 keep-alive clients (wrk) queueing URLs as fast as they go, in
           ``--slices`` short slices of ``--slice`` seconds alternating
           between the two branches: accepted/s, their p50/p99, and the
           branch's CPU time per 1,000 accepted (utime + stime of its
           process: the cost of the route; short alternating slices make
           the two sides share whatever else loads the machine).

Medians of the rounds and slices, and this tree / baseline::

    git worktree add /tmp/cyme-base <rev> && (cd /tmp/cyme-base && bin/setup)
    .venv/bin/python bench/queue_route.py --baseline /tmp/cyme-base [--rounds 5]

Target: no figure more than 10 % worse than the baseline's.
"""

import argparse
import os
import shutil
import statistics

import _common as c
from _target import Target  # noqa: E402
from tasks_throughput import Drainer, accept_rate, cyme_paced, purge


def accepted(branch, queue, target_port, seconds):
    before = c.cpu_seconds(branch.pid)
    rate, p50, p99 = accept_rate(branch, queue, target_port, seconds)
    cpu = c.cpu_seconds(branch.pid) - before
    return {"accepted/s": rate, "accepted p50 ms": p50, "accepted p99 ms": p99,
            "CPU ms per 1,000 accepted": 1e6 * cpu / (rate * seconds)}


def paced(branch, queue, target_port, rate, seconds):
    with Drainer(queue):
        p50, p99 = cyme_paced(branch, queue, target_port, rate, seconds)
    return {f"p50 ms at {rate:.0f}/s": p50, f"p99 ms at {rate:.0f}/s": p99}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True,
                        help="a checkout of cyme with its own .venv (bin/setup)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--slice", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("queue_route: needs wrk (apt-get install wrk)")
    executable = os.path.join(os.path.abspath(args.baseline), ".venv", "bin", "cyme-branch")
    if not os.path.exists(executable):
        raise SystemExit(f"queue_route: no {executable}: run bin/setup in the baseline")
    c.install_limits(600 + 4 * args.rounds * (args.seconds + 20)
                     + 2 * args.slices * (args.slice + 5))
    tag = c.tag()
    print(f"# the queued-URL route, this tree against {args.baseline}, {c.machine()}")
    target = Target()
    sides = {
        "this": c.Branch(f"route-this-{tag}", "--cluster", f"bench-this-{tag}", "-l", "warn"),
        "base": c.Branch(f"route-base-{tag}", "--cluster", f"bench-base-{tag}", "-l", "warn",
                         executable=executable),
    }
    queues = {side: {part: f"{part}-{side}-{tag}" for part in ("fast", "paced")}
              for side in sides}
    figures = {side: [] for side in sides}
    slices = {side: [] for side in sides}
    try:
        for side, branch in sides.items():
            branch.start()
            c.ensure_app(branch)
            for queue in queues[side].values():
                branch.request("PUT", f"/{c.APP}/queues/{queue}/")
                branch.request(
                    "GET", f"/{c.APP}/queue/{queue}/http://127.0.0.1:{target.server_port}/x")
                purge(queue)
        for n in range(args.rounds):
            order = ("this", "base") if n % 2 == 0 else ("base", "this")
            for side in order:
                branch = sides[side]
                sample = c.undisturbed(branch, paced, branch, queues[side]["paced"],
                                       target.server_port, args.rate, args.seconds)
                figures[side].append(sample)
                print(f"  round {n + 1} {side}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in sample.items()), flush=True)
        for n in range(args.slices):
            order = ("this", "base") if n % 2 == 0 else ("base", "this")
            for side in order:
                branch = sides[side]
                slices[side].append(c.undisturbed(
                    branch, accepted, branch, queues[side]["fast"], target.server_port,
                    args.slice))
        for side in sides:
            purge(queues[side]["fast"], settle=3)
            print(f"  slices {side}: " + ", ".join(
                f"{s['accepted/s']:.0f}/s {s['CPU ms per 1,000 accepted']:.0f} ms"
                for s in slices[side]), flush=True)
    finally:
        for branch in sides.values():
            branch.stop()
        target.close()
        for side in queues.values():
            for queue in side.values():
                purge(queue)
    rows = []
    for samples in (figures, slices):
        for name in samples["this"][0]:
            this = statistics.median(f[name] for f in samples["this"])
            base = statistics.median(f[name] for f in samples["base"])
            rows.append([name, f"{this:.1f}", f"{base:.1f}", f"{this / base:.2f}x"])
    c.table(["medians", "this tree", "baseline", "this/baseline"], rows)


if __name__ == "__main__":
    c.run(main)
