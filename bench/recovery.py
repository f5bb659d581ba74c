"""Recovery: how fast a dead or hung worker is answering pings again.

(a) ``kill -9`` of a worker's main process -> its node answers ping again
    (the new worker), timed from the kill to the first pong the bench
    process gets (``app.control.ping`` to ``<instance>@<host>`` every
    50 ms), then checked with ``GET`` (state running, a new pid).  A fresh
    instance per sample: the supervisor's first restart is immediate, later
    ones back off unless the worker ran ``stable_after`` (30 s).
    Target: median <= 0.6 s.
(b) ``kill -STOP`` of a worker -> replaced: a new pid answering ping,
    timed from the SIGSTOP; reported in seconds and in ticks.  A tick is
    one supervisor round, every ``--sup-interval`` seconds, so ticks =
    seconds / sup-interval.  The hung worker must miss pings, be TERMed
    and continued (SIGCONT, so that it acts on the TERM), KILLed if still
    there after ``--kill-timeout``, and be restarted.  Target: <= 3 ticks
    (median).

Baseline, printed side by side: what the same figure would be for a
worker started from scratch (the branch's own spawn -> first pong,
measured on the create of each sample's instance): recovery can hardly
be faster than a cold start.

    .venv/bin/python bench/recovery.py [--samples 7] [--stop-samples 5]
        [--sup-interval 1] [--kill-timeout 1] [--pool prefork]
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

TARGET_KILL = 0.6
TARGET_STOP_TICKS = 3.0


def create(branch, name, pool, timeout):
    status, body = branch.request(
        "PUT", f"/{c.APP}/instances/{name}/", {"pool": pool}, timeout=timeout + 5
    )
    if status != 201 or body.get("state") != "running":
        raise RuntimeError(f"PUT {name}: {status} {body}")
    return body["pid"]


def delete(branch, name, pids):
    branch.request("DELETE", f"/{c.APP}/instances/{name}/")
    branch.wait_gone(name, pids)


def wait_dead(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while c.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.001)


def wait_replaced(branch, name, old_pid, timeout=5.0):
    """The instance's JSON once it shows a new pid, running."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = branch.instance(name)
        if body and body.get("state") == "running" and body.get("pid") not in (None, old_pid):
            return body
        time.sleep(0.05)
    raise RuntimeError(f"{name} not shown running with a new pid: {body}")


class Spurious(Exception):
    """The branch replaced the healthy new worker before the bench touched it."""


def check_untouched(branch, name, pid):
    body = branch.instance(name) or {}
    if body.get("pid") != pid or body.get("restarts") or not c.pid_alive(pid):
        raise Spurious(
            f"{name}: pid {pid} replaced before the bench touched it: "
            f"state {body.get('state')}, pid {body.get('pid')}, "
            f"last_error {body.get('last_error')!r}"
        )


def kill_sample(branch, app, name, args, record):
    pids = [create(branch, name, args.pool, args.timeout)]
    record["start"] = branch.up_after(pids[0])
    try:
        time.sleep(args.settle)
        check_untouched(branch, name, pids[0])
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        wait_dead(pids[0])
        answered = c.wait_pong(app, f"{name}@{c.HOSTNAME}", args.timeout)
        if answered is None:
            raise RuntimeError(f"{name}: no pong within {args.timeout:g} s after kill -9")
        body = wait_replaced(branch, name, pids[0])
        pids.append(body["pid"])
        record["restart"] = branch.up_after(body["pid"])
        return answered - t0
    finally:
        delete(branch, name, pids)


def stop_sample(branch, app, name, args, record):
    """SIGSTOP; the seconds until a new pid answers, and when each state was first seen."""
    pids = [create(branch, name, args.pool, args.timeout)]
    record["start"] = branch.up_after(pids[0])
    node = f"{name}@{c.HOSTNAME}"
    try:
        time.sleep(args.settle)
        check_untouched(branch, name, pids[0])
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGSTOP)
        seen = {}
        deadline = t0 + args.timeout + 30
        while time.monotonic() < deadline:
            body = branch.instance(name) or {}
            now = time.monotonic() - t0
            state, pid = body.get("state"), body.get("pid")
            key = state if pid in (None, pids[0]) else f"{state} (new pid)"
            seen.setdefault(key, round(now, 2))
            if not c.pid_alive(pids[0]):
                seen.setdefault("old pid gone", round(now, 2))
            if pid not in (None, pids[0]) and c.wait_pong(app, node, 0.05, 0.05):
                answered = time.monotonic()
                pids.append(pid)
                record["timeline"] = seen
                record["restart"] = branch.up_after(pid)
                return answered - t0
            time.sleep(0.02)
        raise RuntimeError(f"{name} not replaced within {deadline - t0:.0f} s: {seen}")
    finally:
        for pid in pids:
            c.kill_group(pid, signal.SIGCONT)
        delete(branch, name, pids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=7, help="kill -9 samples (7)")
    parser.add_argument("--stop-samples", type=int, default=5, help="SIGSTOP samples (5)")
    parser.add_argument("--sup-interval", type=float, default=1.0)
    parser.add_argument("--kill-timeout", type=float, default=1.0)
    parser.add_argument("--pool", default="prefork", help="instance pool (prefork)")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds between the create and the kill (1.5), so "
                             "the start-up queue checks are over")
    parser.add_argument("--timeout", type=float, default=20.0)
    c.add_branch_options(parser)
    args = parser.parse_args()
    c.install_limits(120 + (args.samples + args.stop_samples) * 60)
    run = c.tag()
    branch = c.Branch(
        "recovery", "--sup-interval", str(args.sup_interval),
        "--kill-timeout", str(args.kill_timeout), "--ready-timeout", str(args.timeout),
        *args.branch_options, keep_root=args.keep,
    )
    names = iter(range(10**6))
    kills, stops = [], []
    try:
        branch.start()
        c.ensure_app(branch)
        app = c.celery_app()
        print(f"recovery: {args.samples} kill -9 and {args.stop_samples} SIGSTOP samples, "
              f"pool {args.pool}, --sup-interval {args.sup_interval:g} "
              f"--kill-timeout {args.kill_timeout:g}; {c.machine()}")
        spurious = []

        def sample(kind):
            """One sample on a fresh instance; a spurious replacement is
            counted, and the sample taken again on another instance."""
            for attempt in range(5):
                record = {}
                try:
                    seconds = c.undisturbed(
                        branch, kind, branch, app, f"r{run}x{next(names)}", args, record
                    )
                    return seconds, record
                except Spurious as e:
                    spurious.append(str(e))
                    print(f"  SPURIOUS: {e}", flush=True)
            raise RuntimeError("5 spurious replacements in a row")

        sample(kill_sample)  # warm-up
        for i in range(args.samples):
            seconds, record = sample(kill_sample)
            kills.append((seconds, record))
            print(f"  kill -9 #{i + 1}: pong again after {seconds:.3f} s (branch: restart "
                  f"spawn -> pong {record.get('restart')} s; this instance's first "
                  f"start {record.get('start')} s)", flush=True)
        for i in range(args.stop_samples):
            seconds, record = sample(stop_sample)
            stops.append((seconds, record))
            print(f"  SIGSTOP #{i + 1}: replaced after {seconds:.3f} s = "
                  f"{seconds / args.sup_interval:.2f} ticks; first seen (s): "
                  f"{record.get('timeline')}", flush=True)
    finally:
        branch.stop()
    print(f"  load average at the end: {c.loadavg()}")
    report(args, kills, stops)
    created = len(kills) + len(stops) + 1 + len(spurious)
    print(f"  healthy new workers replaced before the bench touched them: "
          f"{len(spurious)} of {created} instances")


def report(args, kills, stops):
    def figures(values, scale=1.0):
        values = [v / scale for v in values if v is not None]
        if not values:
            return ["-", "-", "-"]
        return [f"{c.median(values):.3f}", f"{c.p90(values):.3f}", str(len(values))]

    kill_s = [s for s, _ in kills]
    stop_s = [s for s, _ in stops]
    cold = [r.get("start") for _, r in kills + stops]
    restart = [r.get("restart") for _, r in kills]
    interval = args.sup_interval
    print()
    print(f"recovery (a tick = one supervisor round = --sup-interval {interval:g} s)")
    c.table(
        ["measure", "median", "p90", "n"],
        [
            ["kill -9 -> pong again (s)", *figures(kill_s)],
            ["  branch: its restart spawn -> pong (s)", *figures(restart)],
            ["baseline: cold spawn -> pong (s)", *figures(cold)],
            ["SIGSTOP -> new pid answers (s)", *figures(stop_s)],
            ["SIGSTOP -> new pid answers (ticks)", *figures(stop_s, interval)],
        ],
    )
    km, sm = c.median(kill_s), c.median(stop_s) / interval
    cm = c.median([v for v in cold if v is not None])
    print()
    print(f"  kill -9 median {km:.3f} s (target <= {TARGET_KILL} s): "
          f"{c.verdict(km <= TARGET_KILL)}; {km / cm:.2f}x a cold spawn -> pong")
    print(f"  SIGSTOP median {sm:.2f} ticks (target <= {TARGET_STOP_TICKS:g}): "
          f"{c.verdict(sm <= TARGET_STOP_TICKS)}")


if __name__ == "__main__":
    c.run(main)
