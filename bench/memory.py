"""Memory: the PSS of idle workers started by cyme, against ``celery worker``s alone.

cyme:     one branch; instances created through its API one after the
          other (prefork pool, concurrency 1: ``max_concurrency=1``,
          ``min_concurrency=1``; each PUT answers once its worker answered
          a ping).  The figure is the proportional set size (PSS, from
          ``/proc/<pid>/smaps_rollup``) summed over the branch's process
          tree but the branch itself: the fork server, its standby, every
          worker's main process and its pool child.
baseline: as many ``celery -A cyme.tasks.worker -b <broker> --workdir <dir>
          worker -n <node> -P prefork --autoscale=1,1 --without-mingle
          --without-gossip -E --statedb <dir>/worker.state -l info``
          started alone, at once (cyme's worker options: same app, pool,
          concurrency, flags), until each answers a ping; the figure is
          the PSS summed over each worker's main process and pool child.

PSS counts a page shared by k processes as 1/k of it, so the sum over a
tree counts the pages its processes share (copy-on-write after a fork, the
same library file) once.  The two sides are measured one after the other,
never at the same time, so that neither shares pages with the other.  The
count grows by steps (``--counts``, default 5,10,20); at each step, once
every worker answered and ``--settle`` seconds passed idle, ``--readings``
readings one second apart (median).  ``--rounds`` rounds (each with a fresh
branch and fresh workers, the sides alternating which goes first); the
figures are medians over the rounds.

Target: cyme's total at the largest count at most half of the baseline's.
The chart (PSS against count, both sides) goes to bench/plots/memory.png.

    .venv/bin/python bench/memory.py [--counts 5,10,20] [--rounds 3]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402
import _plot  # noqa: E402

TARGET_RATIO = 0.5  # cyme's PSS at most half the baseline's
WORKER_OPTIONS = ["-P", "prefork", "--autoscale=1,1", "--without-mingle",
                  "--without-gossip", "-E", "-l", "info"]
FORKSERVER = "cyme.supervision.forkserver"


def mib(kib):
    return kib / 1024


def tree_pss(pids_roles, readings):
    """
    The median over C{readings} readings (one second apart) of the PSS of
    C{pids_roles} (pid -> role), in KiB: C{(total, {role: (count, KiB)})}.
    """
    samples = []
    for i in range(readings):
        if i:
            time.sleep(1.0)
        total, roles = 0, {}
        for pid, role in pids_roles.items():
            rollup = c.smaps_rollup(pid)
            if rollup is None:
                raise RuntimeError(f"process {pid} ({role}) ended while idle")
            total += rollup["Pss"]
            count, kib = roles.get(role, (0, 0))
            roles[role] = (count + 1, kib + rollup["Pss"])
        samples.append((total, roles))
    samples.sort(key=lambda s: s[0])
    return samples[len(samples) // 2]


# cyme


def cyme_roles(branch):
    """The branch's processes but itself, each with its role."""
    tree = c.descendants(branch.pid)
    servers = {pid for pid in tree
               if c.parent_pid(pid) == branch.pid and FORKSERVER in c.command_line(pid)}
    roles = {}
    for pid in tree:
        parent = c.parent_pid(pid)
        if pid in servers:
            roles[pid] = "fork server"
        elif parent in servers and FORKSERVER in c.command_line(pid):
            roles[pid] = "standby"  # not told what to be yet: still the server's title
        elif parent in servers or parent == branch.pid:
            roles[pid] = "worker"  # forked by the server, or exec'd by the branch
        else:
            roles[pid] = "pool child"
    return roles


def cyme_round(counts, args, run, app):
    branch = c.Branch("memory", *args.branch_options, keep_root=args.keep)
    points = {}
    names = []
    try:
        branch.start()
        c.ensure_app(branch)
        created = 0
        for count in counts:
            while created < count:
                name = f"m{run}x{created}"
                names.append(name)
                status, body = branch.request(
                    "PUT", f"/{c.APP}/instances/{name}/",
                    {"pool": "prefork", "max_concurrency": "1", "min_concurrency": "1"},
                    timeout=args.timeout,
                )
                if status != 201 or body.get("state") != "running":
                    raise RuntimeError(f"PUT {name}: {status} {body}")
                created += 1
            time.sleep(args.settle)
            roles = wait_complete(lambda: cyme_roles(branch), count, args.timeout)
            points[count] = tree_pss(roles, args.readings)
            report_point("cyme", count, points[count])
    finally:
        branch.stop()
        # Each worker declared its dead-letter queue, which outlives it.
        c.delete_queues(app, [f"dq.{name}" for name in names])
    return points


# baseline


class Workers:
    """``celery worker``s started alone, each in its own session and directory."""

    def __init__(self, run):
        self.run = run
        self.dir = tempfile.mkdtemp(prefix="cyme-bench-memory-")
        self.procs = []

    def start(self, n):
        for _ in range(n):
            name = f"b{self.run}x{len(self.procs)}"
            workdir = os.path.join(self.dir, name)
            os.makedirs(workdir)
            argv = [c.CELERY, "-A", "cyme.tasks.worker", "-b", c.BROKER, "--workdir", workdir,
                    "worker", "-n", f"{name}@{c.HOSTNAME}", *WORKER_OPTIONS,
                    "--statedb", os.path.join(workdir, "worker.state"),
                    f"--pidfile={os.path.join(workdir, 'worker.pid')}"]
            with open(os.path.join(workdir, "worker.log"), "ab") as log:
                self.procs.append((name, subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=workdir, start_new_session=True,
                )))

    def wait_pongs(self, app, timeout):
        for name, proc in self.procs:
            if c.wait_pong(app, f"{name}@{c.HOSTNAME}", timeout) is None:
                raise RuntimeError(f"baseline worker {name} did not answer within {timeout:g} s"
                                   f" (exit status {proc.poll()})")

    def roles(self):
        roles = {}
        for _, proc in self.procs:
            roles[proc.pid] = "worker"
            for pid in c.descendants(proc.pid):
                roles[pid] = "pool child"
        return roles

    def cleanup(self):
        for _, proc in self.procs:
            c.kill_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        left = c.sweep(self.dir + os.sep)
        if left:
            print(f"  warning: processes left: {left}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


def baseline_round(counts, args, run, app):
    workers = Workers(run)
    points = {}
    try:
        for count in counts:
            workers.start(count - len(workers.procs))
            workers.wait_pongs(app, args.timeout)
            time.sleep(args.settle)
            roles = wait_complete(workers.roles, count, args.timeout)
            points[count] = tree_pss(roles, args.readings)
            report_point("baseline", count, points[count])
    finally:
        workers.cleanup()
    return points


def wait_complete(roles_now, count, timeout):
    """The roles once there are C{count} workers with a pool child each."""
    deadline = time.monotonic() + timeout
    while True:
        roles = roles_now()
        seen = list(roles.values())
        if seen.count("worker") == count and seen.count("pool child") == count:
            return roles
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected {count} workers and pool children, found "
                               f"{seen.count('worker')} and {seen.count('pool child')}")
        time.sleep(0.2)


# report


def report_point(side, count, point):
    total, roles = point
    parts = ", ".join(f"{role} {n} x {mib(kib) / n:.1f}"
                      for role, (n, kib) in sorted(roles.items()))
    print(f"  {side} {count:>3}: {mib(total):7.1f} MiB ({parts} MiB)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="5,10,20",
                        help="instance counts, growing (default 5,10,20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readings", type=int, default=3,
                        help="readings at each count, one second apart (median)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds idle before reading (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a worker may take to answer (default 60)")
    _plot.add_plot_option(parser)
    c.add_branch_options(parser)
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.counts.split(",")})
    top = counts[-1]
    c.install_limits(120 + args.rounds * (top * 8 + len(counts) * (args.settle + args.readings)
                                          * 2 + 60))
    print(f"memory: {args.rounds} rounds, counts {counts}; {c.machine()}")
    c.ensure_vhost()
    app = c.celery_app()
    results = {"cyme": [], "baseline": []}
    for r in range(args.rounds):
        run = c.tag()
        sides = [("cyme", lambda: cyme_round(counts, args, run, app)),
                 ("baseline", lambda: baseline_round(counts, args, run, app))]
        for side, measure in (sides if r % 2 == 0 else sides[::-1]):
            print(f"round {r + 1}: {side}", flush=True)
            results[side].append(measure())
    print(f"  load average at the end: {c.loadavg()}")
    report(counts, results, args)


def report(counts, results, args):
    def totals(side, count):
        return [mib(points[count][0]) for points in results[side]]

    print()
    print("idle workers' PSS (MiB, median over rounds; the range in brackets)")
    rows = []
    for count in counts:
        cy, base = totals("cyme", count), totals("baseline", count)
        cm, bm = c.median(cy), c.median(base)
        rows.append([count, f"{cm:.1f} [{min(cy):.1f}-{max(cy):.1f}]", f"{cm / count:.1f}",
                     f"{bm:.1f} [{min(base):.1f}-{max(base):.1f}]", f"{bm / count:.1f}",
                     f"{cm / bm:.2f}"])
    c.table(["count", "cyme total", "per worker", "baseline total", "per worker",
             "cyme / baseline"], rows)
    top = counts[-1]
    print(f"  at {top}, by role (median over rounds, MiB each):")
    for side in ("cyme", "baseline"):
        roles = sorted({role for points in results[side] for role in points[top][1]})
        parts = []
        for role in roles:
            each = [mib(points[top][1][role][1]) / points[top][1][role][0]
                    for points in results[side] if role in points[top][1]]
            parts.append(f"{role} {c.median(each):.1f}")
        print(f"    {side}: {', '.join(parts)}")
    cm, bm = c.median(totals("cyme", top)), c.median(totals("baseline", top))
    print()
    print(f"  {top} workers: cyme {cm:.1f} MiB, baseline {bm:.1f} MiB: cyme / baseline = "
          f"{cm / bm:.2f} (target <= {TARGET_RATIO:g}): {c.verdict(cm <= TARGET_RATIO * bm)}")
    series = {
        "cyme (fork server, standby, workers, pool children)":
            [(n, c.median(totals("cyme", n))) for n in counts],
        "celery worker alone (workers, pool children)":
            [(n, c.median(totals("baseline", n))) for n in counts],
        "target: half the baseline":
            [(n, TARGET_RATIO * c.median(totals("baseline", n))) for n in counts],
    }
    _plot.curves(os.path.join(args.plots, "memory.png"),
                 "Idle workers (prefork, concurrency 1): PSS in all",
                 "workers", "PSS (MiB)", series)


if __name__ == "__main__":
    c.run(main)
