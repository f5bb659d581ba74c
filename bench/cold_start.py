"""Cold start: a new worker instance until it answers its first ping.

cyme:     ``PUT /bench/instances/<fresh name>/`` until the 201 (the branch
          answers once the worker answered its first ping), timed in the
          bench process from sending the request to reading the answer.
baseline: ``celery multi start <node> -A cyme.tasks.worker -b <broker>
          --pidfile=… --logfile=…`` (default options: mingle and gossip on,
          default pool and concurrency), then ``app.control.ping`` with a
          50 ms timeout in a loop from a Celery app connected beforehand,
          until the node answers; stopped with ``celery multi stopwait``.

One warm-up sample of each is taken first and not counted (page cache);
the counted samples alternate cyme / baseline so drift hits both.
Target: cyme median <= 0.4 s and >= 3x faster than the baseline.

    .venv/bin/python bench/cold_start.py [--samples 7]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

TARGET_SECONDS = 0.4
TARGET_RATIO = 3.0


SPAWN_TO_PONG = []  # the branch's own figure for each cyme sample
# CPU seconds the worker's main process used until it answered (read right
# after the pong): a figure that does not depend on the machine's load.
CPU = {"cyme": [], "baseline": []}


def worker_cpu(pid):
    try:
        return c.cpu_seconds(pid)
    except (OSError, TypeError):
        return None


def cyme_sample(branch, name, timeout):
    t0 = time.monotonic()
    status, body = branch.request("PUT", f"/{c.APP}/instances/{name}/", timeout=timeout)
    elapsed = time.monotonic() - t0
    if status != 201 or body.get("state") != "running":
        raise RuntimeError(f"PUT {name}: {status} {body}")
    pid = body.get("pid")
    CPU["cyme"].append(worker_cpu(pid))
    SPAWN_TO_PONG.append(branch.up_after(pid))
    status, _ = branch.request("DELETE", f"/{c.APP}/instances/{name}/")
    if status != 200:
        raise RuntimeError(f"DELETE {name}: {status}")
    branch.wait_gone(name, [pid] if pid else [])
    return elapsed


def baseline_sample(multi, app, name, timeout):
    node = f"{name}@{c.HOSTNAME}"
    t0 = time.monotonic()
    try:
        multi.start(name)
        answered = c.wait_pong(app, node, timeout)
        if answered is None:
            raise RuntimeError(f"{node} did not answer within {timeout:g} s")
        CPU["baseline"].append(worker_cpu(c.read_pid(multi.pidfile.replace("%n", name))))
        return answered - t0
    finally:
        multi.stopwait(name)
        c.sweep(os.path.join(multi.dir, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds one start may take (default 20)")
    c.add_branch_options(parser)
    args = parser.parse_args()
    c.install_limits(120 + args.samples * 30)
    run = c.tag()
    branch = c.Branch("cold", "--ready-timeout", str(args.timeout),
                      *args.branch_options, keep_root=args.keep)
    multi = c.Multi()
    cyme_times, base_times, spawn_times = [], [], []
    try:
        branch.start()
        c.ensure_app(branch)
        app = c.celery_app()
        print(f"cold start: {args.samples} samples (+1 warm-up each); {c.machine()}")
        names = iter(range(10**6))

        def cyme():
            return cyme_sample(branch, f"c{run}x{next(names)}", args.timeout)

        def baseline():
            return baseline_sample(multi, app, f"b{run}x{next(names)}", args.timeout)

        print(f"  warm-up: cyme {c.undisturbed(branch, cyme):.3f} s, "
              f"baseline {c.undisturbed(branch, baseline):.3f} s")
        for values in CPU.values():
            del values[:]
        for i in range(args.samples):
            del SPAWN_TO_PONG[:]
            cyme_times.append(c.undisturbed(branch, cyme))
            spawn_times.append(SPAWN_TO_PONG[-1])
            base_times.append(c.undisturbed(branch, baseline))
            print(f"  sample {i + 1}: cyme {cyme_times[-1]:.3f} s "
                  f"(branch spawn -> pong {spawn_times[-1]} s), "
                  f"baseline {base_times[-1]:.3f} s", flush=True)
    finally:
        branch.stop()
        multi.cleanup()
    print(f"  load average at the end: {c.loadavg()}")
    report(cyme_times, base_times, spawn_times)


def report(cyme_times, base_times, spawn_times):
    cm, bm = c.median(cyme_times), c.median(base_times)
    ratio = bm / cm
    print()
    print("cold start: create -> first pong (seconds)")
    c.table(
        ["measure", "n", "median", "p90", "min", "max"],
        [[label, len(t), f"{c.median(t):.3f}", f"{c.p90(t):.3f}",
          f"{min(t):.3f}", f"{max(t):.3f}"]
         for label, t in (("cyme PUT -> 201", cyme_times),
                          ("celery multi start + ping", base_times))],
    )
    cpu = {k: [x for x in v if x is not None] for k, v in CPU.items()}
    if cpu["cyme"] and cpu["baseline"]:
        print(f"  worker main process CPU until the pong (load-independent): cyme median "
              f"{c.median(cpu['cyme']):.3f} s, baseline median {c.median(cpu['baseline']):.3f} s")
    spawn = [t for t in spawn_times if t is not None]
    if spawn:
        sm = c.median(spawn)
        print(f"  of which the branch's spawn -> first pong (its log): median {sm:.3f} s,"
              f" p90 {c.p90(spawn):.3f} s; HTTP + store + reconcile: ~{cm - sm:.3f} s")
    print()
    print(f"  cyme median {cm:.3f} s (target <= {TARGET_SECONDS} s): "
          f"{c.verdict(cm <= TARGET_SECONDS)}")
    print(f"  baseline / cyme = {ratio:.2f}x (target >= {TARGET_RATIO:g}x): "
          f"{c.verdict(ratio >= TARGET_RATIO)}")


if __name__ == "__main__":
    c.run(main)
