"""A cluster of 10 to 500 branches, simulated: presence and listings against size.

Runs the cluster's own code (cyme.operations.simulation: every branch built
by build_cluster, on the in-memory bus, with a virtual clock and a seeded
network of 1 ms latency + 1 ms mean jitter) and measures, per size:

- idle: bus messages each branch receives per second with nothing to do;
- listing: bus messages (requests and replies) and virtual milliseconds
  one ``GET /<app>/instances/`` costs; ``fresh``: the same with ``?fresh=1``;
- offline: virtual seconds until every live branch sees a killed one offline;
- converge: virtual seconds until apps, queues and tokens written on both
  sides of a 20 s partition are on every branch once it heals.

baseline: the figures of the design before issue 15 (heartbeats from every
branch to every branch, listings asking every branch), measured by this
script at that commit and kept in bench/cluster_scale_before.json
(``--save-baseline``); at 500 branches only idle and listing were
simulated then (a short window: 250,000 heartbeats a simulated second).
Targets at 500 branches: idle <= 5 messages/branch/s, offline <= 30 s,
listing 0 messages, fresh <= one request and one reply per owning branch.

    .venv/bin/python bench/cluster_scale.py [--sizes 10,50,100,500] [--seed 1]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as c  # noqa: E402
import _plot  # noqa: E402

from cyme.operations.simulation import measure  # noqa: E402

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "cluster_scale_before.json")
COLUMNS = [
    ("idle", "idle msg/branch/s", 1),
    ("listing_messages", "listing msgs", 1),
    ("listing_seconds", "listing ms", 1000),
    ("fresh_messages", "fresh msgs", 1),
    ("detection", "offline s", 1),
    ("convergence", "converge s", 1),
]


def shown(value, scale=1):
    return "-" if value is None else f"{value * scale:.3g}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100,500")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick-above", type=int, default=None, metavar="N",
                        help="above N branches, measure idle and listing only")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--save-baseline", metavar="FILE",
                        help="write this run's figures to FILE (the baseline of a later run)")
    _plot.add_plot_option(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"cluster scale (simulated, seed {args.seed}) on {c.machine()}")
    figures = {}
    for size in sizes:
        quick = args.quick_above is not None and size > args.quick_above
        started = time.process_time()
        figures[size] = measure(size, args.seed, detect=not quick, converge=not quick,
                                **({"settle": 2.5, "window": 2.0} if quick else {}))
        figures[size]["cpu"] = time.process_time() - started
        print(f"  {size} branches: {json.dumps(figures[size])}", flush=True)
    if args.save_baseline:
        with open(args.save_baseline, "w") as f:
            json.dump({str(k): v for k, v in figures.items()}, f, indent=1, sort_keys=True)
        print(f"  baseline written to {args.save_baseline}")
    before = {}
    if os.path.exists(args.baseline) and not args.save_baseline:
        with open(args.baseline) as f:
            before = {int(k): v for k, v in json.load(f).items()}
    print()
    header = ["branches"] + [label for _, label, _ in COLUMNS]
    rows = []
    for size in sizes:
        rows.append([f"{size} now"] + [shown(figures[size].get(k), s) for k, _, s in COLUMNS])
        if size in before:
            rows.append([f"{size} before"]
                        + [shown(before[size].get(k), s) for k, _, s in COLUMNS])
    c.table(header, rows)
    big = figures[max(sizes)]
    print()
    print(f"  targets at {max(sizes)} branches:")
    checks = [
        ("idle <= 5 messages/branch/s", big["idle"] <= 5),
        ("killed branch offline everywhere <= 30 s",
         big.get("detection") is not None and big["detection"] <= 30),
        ("listing from replicated state: 0 messages", big["listing_messages"] == 0),
        ("fresh listing <= 2 messages per owning branch",
         big["fresh_messages"] <= 2 * (max(sizes) - 1)),
    ]
    for label, ok in checks:
        print(f"    {c.verdict(ok)}  {label}")
    charts = [
        ("cluster_scale_idle", "Idle bus messages received per branch", "messages/s",
         "idle", 1, True, [("target 5/s", 5)]),
        ("cluster_scale_listing", "Bus messages one instance listing costs", "messages",
         "listing_messages", 1, False, []),
        ("cluster_scale_detection", "Killed branch offline on every branch",
         "virtual seconds", "detection", 1, False, [("target 30 s", 30)]),
        ("cluster_scale_convergence", "Writes of both sides everywhere after a partition",
         "virtual seconds", "convergence", 1, False, []),
    ]
    for name, title, ylabel, key, scale, logy, targets in charts:
        series = {"now": [(n, _scaled(figures[n].get(key), scale)) for n in sizes]}
        if before:
            series["before (heartbeats to all)"] = [
                (n, _scaled(before[n].get(key), scale)) for n in sorted(before)]
        if key == "listing_messages":
            series["now, ?fresh=1"] = [(n, figures[n]["fresh_messages"]) for n in sizes]
        _plot.curves(os.path.join(args.plots, name + ".png"), title, "branches", ylabel,
                     series, logy=logy, targets=targets)


def _scaled(value, scale):
    return None if value is None else value * scale


if __name__ == "__main__":
    main()
