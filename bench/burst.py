"""Burst: 50 instances created at once until every one answers ping.

cyme:     ``--count`` (50) parallel ``PUT /bench/instances/<name>/`` (pool
          prefork, max and min concurrency 1), one thread and connection
          each, all sent at once; timed from sending the first to reading
          the last answer.  The branch answers 201 only once the worker
          answered its first ping (an answer that is not a 201 with state
          ``running`` is a failed request); right after, one broadcast
          ping from the bench must be answered by every node.
baseline: ``celery multi start <count nodes> -A cyme.tasks.worker -b
          <broker> -P prefork -c 1 --pidfile=… --logfile=…`` (Celery's
          defaults otherwise, as in cold_start.py), then broadcast pings
          (100 ms each) from a Celery app connected beforehand, asking the
          nodes that have not answered yet, until every node has; timed
          from running ``celery multi start`` to the last node's first
          pong; stopped with ``celery multi stopwait``.

One warm-up burst of 5 each first (not counted: the page cache, the fork
server's imports), then the samples alternate cyme / baseline
(``--samples`` each, default 3), then the scaling curve: one burst of each
size of ``--curve`` (10, 25) for both, the full count's points being the
samples' medians; the chart goes to bench/plots/burst.png.

The supervisor's tick (every ``--sup-interval`` s, 5 by default as the
branch's) is read from the branch's ``GET /metrics`` before each cyme
burst and again two ticks after it (those right after a burst judge the
new workers): ``cyme_supervisor_tick_duration_seconds`` (the largest
bucket bound a tick of the window fell under, the mean) and
``cyme_supervisor_ticks_total`` (ticks held back by a busy reactor would
be missing).  Also printed for each burst, as they do not depend on the
machine's load as the times do: the CPU seconds the workers used until
they answered, the branch's and fork server's (cyme), ``celery multi``'s
and its detaching processes' (baseline), the broker's, and how busy the
whole machine was meanwhile (others' work included).

Targets: the cyme burst of ``--count`` answering within 5 s (median of
the samples), >= 5x faster than the baseline, no request of any burst
failed, and every tick of every window shorter than its interval.

    .venv/bin/python bench/burst.py [--count 50] [--samples 3] [--curve 10,25]
"""

import argparse
import concurrent.futures
import contextlib
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402
import _plot  # noqa: E402

TARGET_SECONDS = 5.0
TARGET_RATIO = 5.0
TICK = "cyme_supervisor_tick_duration_seconds"
TICKS = "cyme_supervisor_ticks_total"
PUBLISHED = "cyme_amqp_messages_published_total"
WORKER_OPTIONS = ("-P", "prefork", "-c", "1")


# The supervisor's ticks, from /metrics


def tick_buckets(values):
    """C{{upper bound: cumulative count}} of the tick histogram, C{count}, C{sum}."""
    buckets = {}
    prefix = f'{TICK}_bucket{{le="'
    for key, value in values.items():
        if key.startswith(prefix):
            buckets[float(key[len(prefix):].split('"', 1)[0])] = value
    return buckets, values.get(f"{TICK}_count", 0.0), values.get(f"{TICK}_sum", 0.0)


def tick_window(before, after):
    """
    The ticks between two scrapes: C{(ticks, the smallest bucket bound
    every one of them fell under (inf: above the largest), mean seconds)}.
    """
    b0, n0, s0 = tick_buckets(before)
    b1, n1, s1 = tick_buckets(after)
    ticks = n1 - n0
    bound = math.inf
    for le in sorted(b1):
        if b1[le] - b0.get(le, 0.0) >= ticks:
            bound = le
            break
    return int(ticks), bound, ((s1 - s0) / ticks if ticks else math.nan)


# cyme


class CymeBurst:
    """Bursts of instance creations on one branch."""

    def __init__(self, branch, app, run, timeout, interval):
        self.branch = branch
        self.app = app
        self.run = run
        self.timeout = timeout
        self.interval = interval
        self.serial = 0
        #: One entry per burst: {"count", "seconds", "failed", "ticks", ...}.
        self.bursts = []

    def put(self, name):
        t0 = time.monotonic()
        try:
            status, body = self.branch.request(
                "PUT", f"/{c.APP}/instances/{name}/",
                {"pool": "prefork", "max_concurrency": 1, "min_concurrency": 1},
                timeout=self.timeout,
            )
        except OSError as e:
            return name, time.monotonic() - t0, f"{e!r}", None
        elapsed = time.monotonic() - t0
        if status != 201 or not isinstance(body, dict) or body.get("state") != "running":
            return name, elapsed, f"{status} {str(body)[:200]}", None
        return name, elapsed, None, body.get("pid")

    def sample(self, count):
        self.serial += 1
        names = [f"u{self.run}s{self.serial}n{i}" for i in range(count)]
        before = self.branch.metrics()
        managers0 = self.managers_cpu()
        costs0 = COSTS.now()
        w0 = time.monotonic()
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
                t0 = time.monotonic()
                answers = list(pool.map(self.put, names))
                seconds = time.monotonic() - t0
            failed = [(n, why) for n, _, why, _ in answers if why is not None]
            pids = [pid for *_, pid in answers if pid]
            cpu = sum(map(c.tree_cpu_seconds, pids))
            managers = self.managers_cpu() - managers0
            published = self.branch.metrics().get(PUBLISHED, 0) - before.get(PUBLISHED, 0)
            costs = COSTS.since(costs0, COSTS.now())
            nodes = [f"{n}@{c.HOSTNAME}" for n in names]
            # The 201s say so; the workers must say it too.
            pongs = c.wait_pongs(self.app, nodes, 2.0, interval=0.5)
            silent = sorted(set(nodes) - set(pongs))
            # Two more ticks: those right after the burst judge 50 new workers.
            ticks0 = self.branch.metrics().get(TICKS, 0)
            deadline = time.monotonic() + 4 * self.interval + 5
            while (self.branch.metrics().get(TICKS, 0) < ticks0 + 2
                   and time.monotonic() < deadline):
                time.sleep(self.interval / 4)
            after = self.branch.metrics()
            window = time.monotonic() - w0
            spawn = [t for t in map(self.branch.up_after, pids) if t is not None]
        finally:
            self.delete(names)
        ticks, bound, mean = tick_window(before, after)
        result = {
            "count": count, "seconds": seconds, "failed": failed, "silent": silent,
            "ticks": ticks, "tick_bound": bound, "tick_mean": mean,
            "window_ticks": after.get(TICKS, 0) - before.get(TICKS, 0), "window": window,
            "requests": sorted(e for _, e, _, _ in answers),
            "spawn_to_pong": spawn, "cpu": cpu, "managers_cpu": managers, **costs,
            "published": published,
        }
        self.bursts.append(result)
        return result

    def managers_cpu(self):
        """CPU seconds of the branch and its fork server(s) so far."""
        total = c.cpu_seconds(self.branch.pid)
        for pid in c.descendants(self.branch.pid):
            if (c.parent_pid(pid) == self.branch.pid
                    and "cyme.supervision.forkserver" in c.command_line(pid)):
                with contextlib.suppress(OSError):
                    total += c.cpu_seconds(pid)
        return total

    def delete(self, names):
        def one(name):
            try:
                self.branch.request("DELETE", f"/{c.APP}/instances/{name}/", timeout=60)
            except OSError:
                pass

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(one, names))
        for name in names:
            self.branch.wait_gone(name)


# The baseline


class MultiBurst:
    def __init__(self, multi, app, run, timeout, options=()):
        self.multi = multi
        self.options = (*WORKER_OPTIONS, *options)
        self.app = app
        self.run = run
        self.timeout = timeout
        self.serial = 0
        self.bursts = []

    def sample(self, count):
        self.serial += 1
        names = [f"m{self.run}s{self.serial}n{i}" for i in range(count)]
        nodes = [f"{n}@{c.HOSTNAME}" for n in names]
        try:
            costs0 = COSTS.now()
            t0 = time.monotonic()
            launched0 = children_cpu()
            self.multi.start(*names, options=self.options, timeout=self.timeout)
            managers = children_cpu() - launched0
            started = time.monotonic() - t0
            pongs = c.wait_pongs(self.app, nodes, self.timeout - started)
            silent = sorted(set(nodes) - set(pongs))
            if silent:
                raise RuntimeError(f"{len(silent)} nodes did not answer within "
                                   f"{self.timeout:g} s: {silent[:3]}...")
            seconds = max(pongs.values()) - t0
            pids = [c.read_pid(self.multi.pidfile.replace("%n", n)) for n in names]
            cpu = sum(c.tree_cpu_seconds(p) for p in pids if p)
            costs = COSTS.since(costs0, COSTS.now())
        finally:
            self.multi.stopwait(*names, timeout=120)
            c.sweep(self.multi.dir + os.sep + names[0][:-1])
        result = {"count": count, "seconds": seconds, "multi_start": started, "cpu": cpu,
                  "managers_cpu": managers, **costs}
        self.bursts.append(result)
        return result


class Costs:
    """CPU seconds spent meanwhile by the broker and by the whole machine."""

    def __init__(self):
        self.broker = c.broker_pid()

    def now(self):
        broker = 0.0
        if self.broker is not None:
            with contextlib.suppress(OSError):
                broker = c.cpu_seconds(self.broker)
        return broker, c.machine_cpu_seconds(), time.monotonic()

    @staticmethod
    def since(before, after):
        return {"broker_cpu": after[0] - before[0], "machine_cpu": after[1] - before[1],
                "machine_seconds": after[2] - before[2]}


COSTS = Costs()


def children_cpu():
    """CPU seconds of this process's ended children (celery multi, and the
    processes it waited for: each node's detaching ``celery worker``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# The run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50,
                        help="instances (and nodes) per burst (default 50)")
    parser.add_argument("--samples", type=int, default=3,
                        help="bursts of --count of each, alternated (default 3)")
    parser.add_argument("--curve", default="10,25",
                        help="smaller burst sizes for the scaling curve, one burst "
                             "each ('' for none; default 10,25)")
    parser.add_argument("--sup-interval", type=float, default=5.0,
                        help="the branch's --sup-interval (default 5 s, its default)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one burst may take (default 300: the baseline "
                             "of 50 took 115 s on a busy machine)")
    parser.add_argument("--baseline-options", default="",
                        help="more options for the baseline's workers (e.g. "
                             "'--without-mingle --without-gossip'; default: Celery's)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="cyme only (development runs; no ratio)")
    _plot.add_plot_option(parser)
    c.add_branch_options(parser)
    args = parser.parse_args()
    curve = sorted({int(x) for x in args.curve.split(",") if x.strip()} - {args.count})
    bursts = args.samples + len(curve)
    c.install_limits(120 + bursts * (2 * args.timeout + 60))
    run = c.tag()
    branch = c.Branch(
        "burst", "--sup-interval", str(args.sup_interval), "--ready-timeout",
        str(args.timeout), "--max-instances", str(max(100, args.count)),
        *args.branch_options, keep_root=args.keep,
    )
    multi = c.Multi()
    try:
        branch.start()
        c.ensure_app(branch)
        app = c.celery_app()
        cyme = CymeBurst(branch, app, run, args.timeout, args.sup_interval)
        base = MultiBurst(multi, app, run, args.timeout, args.baseline_options.split())
        print(f"burst: {args.samples} bursts of {args.count} each, curve {curve or '-'}, "
              f"--sup-interval {args.sup_interval:g}, baseline worker options "
              f"{' '.join(base.options)}; {c.machine()}", flush=True)
        # Not counted: the page cache, and the fork server's imports.
        warm = min(5, args.count)
        print(f"  warm-up ({warm} each): cyme "
              f"{c.undisturbed(branch, cyme.sample, warm)['seconds']:.2f} s", end="")
        print(", baseline " + ("-" if args.no_baseline else
              f"{c.undisturbed(branch, base.sample, warm)['seconds']:.2f} s"), flush=True)
        cyme.bursts.clear()
        base.bursts.clear()
        plan = [(args.count, i + 1) for i in range(args.samples)] + [(n, None) for n in curve]
        for count, i in plan:
            label = f"sample {i}" if i else f"curve {count}"
            result = c.undisturbed(branch, cyme.sample, count)
            print(f"  {label}: cyme {describe(result, args.sup_interval)}", flush=True)
            if not args.no_baseline:
                result = c.undisturbed(branch, base.sample, count)
                print(f"  {label}: baseline {result['seconds']:.2f} s "
                      f"(celery multi start returned after {result['multi_start']:.2f} s; "
                      f"CPU until up: workers {result['cpu']:.1f} s, celery multi and "
                      f"the detaching processes {result['managers_cpu']:.1f} s, "
                      f"{machine(result)})", flush=True)
    finally:
        branch.stop()
        multi.cleanup()
    print(f"  load average at the end: {c.loadavg()}")
    report(args, cyme.bursts, base.bursts, curve)


def describe(result, interval):
    requests = result["requests"]
    text = (f"{result['seconds']:.2f} s (requests: first {requests[0]:.2f} s, median "
            f"{c.median(requests):.2f} s, last {requests[-1]:.2f} s; ")
    if result["spawn_to_pong"]:
        text += f"branch spawn -> pong median {c.median(result['spawn_to_pong']):.2f} s; "
    text += (f"CPU until up: workers {result['cpu']:.1f} s, branch and fork server "
             f"{result['managers_cpu']:.1f} s, {machine(result)}; the branch sent "
             f"{result['published']:.0f} remote-control messages; ")
    text += (f"{result['ticks']} ticks, each < {result['tick_bound']:g} s, mean "
             f"{result['tick_mean'] * 1000:.1f} ms; failed {len(result['failed'])}, "
             f"silent {len(result['silent'])})")
    for name, why in result["failed"][:3]:
        text += f"\n    failed: {name}: {why}"
    return text


def machine(result):
    """The broker's CPU and how busy the machine was (others' work included)."""
    return (f"broker {result['broker_cpu']:.1f} s, machine busy "
            f"{result['machine_cpu']:.1f} of {os.cpu_count() * result['machine_seconds']:.1f} "
            f"CPU-s")


def report(args, cyme, base, curve):
    full = [r for r in cyme if r["count"] == args.count]
    full_base = [r for r in base if r["count"] == args.count]
    cm = c.median([r["seconds"] for r in full])
    print()
    print(f"burst of {args.count}: first request sent -> every worker answering (seconds)")
    rows = [["cyme parallel PUTs", full]]
    if full_base:
        rows.append(["celery multi start + ping", full_base])
    c.table(["measure", "n", "median", "min", "max"],
            [[label, len(rs), f"{c.median([r['seconds'] for r in rs]):.2f}",
              f"{min(r['seconds'] for r in rs):.2f}", f"{max(r['seconds'] for r in rs):.2f}"]
             for label, rs in rows])
    print()
    print("scaling curve (seconds; the full count: the samples' median)")
    sizes = sorted({r["count"] for r in cyme})
    points = {"cyme": [], "celery multi + ping": []}
    table = []
    for n in sizes:
        cy = c.median([r["seconds"] for r in cyme if r["count"] == n])
        ba = c.median([r["seconds"] for r in base if r["count"] == n]) if base else math.nan
        points["cyme"].append((n, cy))
        if base:
            points["celery multi + ping"].append((n, ba))
        table.append([n, f"{cy:.2f}", f"{ba:.2f}", f"{ba / cy:.1f}x"])
    c.table(["workers", "cyme", "baseline", "ratio"], table)
    _plot.curves(
        os.path.join(args.plots, "burst.png"),
        "Burst: workers created at once until all answer ping",
        "workers started at once (prefork, concurrency 1)", "seconds", points,
        logy=True, targets=[(f"target: {TARGET_SECONDS:g} s", TARGET_SECONDS)],
    )
    failed = sum(len(r["failed"]) + len(r["silent"]) for r in cyme)
    bounds = [r["tick_bound"] for r in cyme]
    ticks = sum(r["ticks"] for r in cyme)
    worst = max(bounds)
    print()
    print(f"  cyme median {cm:.2f} s for {args.count} (target <= {TARGET_SECONDS:g} s): "
          f"{c.verdict(cm <= TARGET_SECONDS)}")
    if full_base:
        ratio = c.median([r["seconds"] for r in full_base]) / cm
        print(f"  baseline / cyme = {ratio:.1f}x (target >= {TARGET_RATIO:g}x): "
              f"{c.verdict(ratio >= TARGET_RATIO)}")
    print(f"  requests failed (or workers silent after their 201): {failed} of "
          f"{sum(r['count'] for r in cyme)} (target 0): {c.verdict(failed == 0)}")
    print(f"  supervisor ticks during and after the bursts: {ticks}, every one under "
          f"{worst:g} s (interval {args.sup_interval:g} s): "
          f"{c.verdict(worst <= args.sup_interval)}")
    late = [r for r in cyme if r["window_ticks"] < r["window"] / args.sup_interval - 1]
    print(f"  windows with ticks missing (a tick held back by a busy reactor): {len(late)} "
          f"of {len(cyme)}")


if __name__ == "__main__":
    c.run(main)
