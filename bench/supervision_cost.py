"""Supervision cost: what the branch itself spends watching 1, 10, 50 workers.

For each size N the bench creates N instances of ``--pool`` (default
prefork, what users get; solo is lighter but has no autoscaler, so its
``stats`` are never asked) with the no-wait
``PUT /bench/instances/!/<name>/``, in batches), waits until all are
running (``GET /bench/instances/<name>/``), lets one more tick pass, then
measures the branch process over a window (default 60 s, ``--window``)
without touching it in between:

* CPU: utime + stime of the branch process (``/proc/<pid>/stat``, not its
  children, the workers), as % of one core and as CPU-seconds per minute;
* RSS: ``VmRSS`` of the branch process at the end of the window;
* AMQP messages (remote-control broadcasts) per tick: the deltas of
  ``cyme_amqp_messages_published_total`` and ``cyme_supervisor_ticks_total``
  from ``GET /metrics`` at both ends of the window, and per command as seen
  on the broker; the window runs from just after a tick to just after the
  last of a whole number of ticks.  A tick is one supervisor round (every
  ``--sup-interval`` seconds, default 5, the branch's default); each asks
  all the workers with one ``ping``, one ``active_queues`` and (prefork)
  one ``stats``.

Then it deletes the N instances and waits until every worker is gone before
the next size.  Baseline, side by side: the figures at N=1.
Targets: <= 1.5 % of a core at 50 instances; messages per tick at 50 the
same as at 1.

    .venv/bin/python bench/supervision_cost.py [--window 60] [--sizes 1,10,50]
        [--pool prefork|solo]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402

TARGET_CPU_PERCENT = 1.5


def create_all(branch, names, batch, timeout, pool):
    """Create C{names} in batches of C{batch}; wait until all are running."""
    for start in range(0, len(names), batch):
        group = names[start:start + batch]
        for name in group:
            status, body = branch.request(
                "PUT", f"/{c.APP}/instances/!/{name}/", {"pool": pool}
            )
            if status != 202:
                raise RuntimeError(f"PUT {name}: {status} {body}")
        wait_running(branch, group, timeout)
    return wait_running(branch, names, timeout)


def wait_running(branch, names, timeout):
    deadline = time.monotonic() + timeout
    waiting = set(names)
    pids = {}
    while waiting:
        for name in sorted(waiting):
            body = branch.instance(name) or {}
            if body.get("state") == "running":
                waiting.discard(name)
                pids[name] = body.get("pid")
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"not running after {timeout:g} s: {sorted(waiting)}")
        time.sleep(0.2)
    return pids


def delete_all(branch, names, pids):
    for name in names:
        branch.request("DELETE", f"/{c.APP}/instances/{name}/")
    for name in names:
        branch.wait_gone(name, [p for p in [pids.get(name)] if p])


class PidboxTap:
    """
    The remote-control messages on the broker, from a queue of the bench's
    own bound to Celery's ``celery.pidbox`` fanout exchange: an independent
    check of the branch's counter that also says what the messages were.
    Each message carries the branch's ``clock`` header, which counts its
    messages as ``cyme_amqp_messages_published_total`` does, so a window's
    messages are exactly those with a clock between the counter's values at
    both ends (the bench sends no remote-control message meanwhile).
    """

    def __init__(self):
        import threading

        from kombu import Connection, Exchange, Queue

        self.seen = []  # (clock, method, number of destinations)
        self.lock = threading.Lock()
        self.stopping = False
        self.conn = Connection(c.BROKER)
        exchange = Exchange("celery.pidbox", "fanout", durable=False, auto_delete=False)
        self.queue = Queue(f"cyme-bench-tap-{c.tag()}", exchange, exclusive=True,
                           auto_delete=True, durable=False)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def run(self):
        import socket as _socket

        def record(body, message):
            try:
                clock = int((message.headers or {}).get("clock"))
                method = body.get("method", "?")
                nodes = len(body.get("destination") or ())
            except Exception:  # noqa: BLE001 - not one of the branch's
                return
            with self.lock:
                self.seen.append((clock, method, nodes))

        with self.conn.Consumer(self.queue, callbacks=[record], no_ack=True,
                                accept=["json"]):
            self.ready.set()
            while not self.stopping:
                try:
                    self.conn.drain_events(timeout=0.5)
                except _socket.timeout:
                    pass
                except Exception as e:  # noqa: BLE001
                    print(f"  pidbox tap stopped: {e!r}", file=sys.stderr)
                    return

    def between(self, first, last, size, timeout=3.0):
        """Messages with C{first} < clock <= C{last}, by kind."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(clock >= last for clock, _, _ in self.seen):
                    break
            time.sleep(0.05)
        kinds = {}
        with self.lock:
            for clock, method, nodes in self.seen:
                if first < clock <= last:
                    if method == "ping" and nodes < size:
                        method = "ping retry"
                    kinds[method] = kinds.get(method, 0) + 1
        return kinds

    def close(self):
        self.stopping = True
        self.thread.join(2)
        self.conn.release()


def total(metrics, name, **labels):
    """
    The sum of the samples of C{name} that have C{labels}, whatever their
    others: C{cyme_workers} is by app and state, C{cyme_worker_restarts_total}
    by app and instance.
    """
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(value for series, value in metrics.items()
               if series.split("{")[0] == name and all(w in series for w in wanted))


def next_tick(branch, after, timeout):
    """Poll /metrics (every 50 ms) until the tick counter passes C{after}
    (each request costs the branch ~1 ms of CPU: few are made in a window);
    the metrics, the branch's CPU seconds and the time right then."""
    deadline = time.monotonic() + timeout
    while True:
        m = branch.metrics()
        if m["cyme_supervisor_ticks_total"] > after or time.monotonic() > deadline:
            return m, c.cpu_seconds(branch.pid), time.monotonic()
        time.sleep(0.05)


def measure(branch, window, interval, tap=None, size=0):
    """
    The branch's cost over a whole number of ticks (about C{window} s),
    from just after a tick to just after the last one.
    """
    ticks = max(1, round(window / interval))
    now = branch.metrics()["cyme_supervisor_ticks_total"]
    m0, cpu0, t0 = next_tick(branch, now, interval + 5)
    # The tick is a LoopingCall: the last one is due at t0 + ticks * interval.
    time.sleep(max(0.0, t0 + ticks * interval + 0.1 - time.monotonic()))
    m1, cpu1, t1 = next_tick(
        branch, m0["cyme_supervisor_ticks_total"] + ticks - 1, interval + 5
    )
    published = (m0["cyme_amqp_messages_published_total"],
                 m1["cyme_amqp_messages_published_total"])
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    ticks = m1["cyme_supervisor_ticks_total"] - m0["cyme_supervisor_ticks_total"]
    messages = (m1["cyme_amqp_messages_published_total"]
                - m0["cyme_amqp_messages_published_total"])
    return {
        "elapsed": elapsed,
        "cpu_percent": 100 * cpu / elapsed,
        "cpu_per_min": 60 * cpu / elapsed,
        "rss": c.rss_mib(branch.pid),
        "ticks": ticks,
        "messages": messages,
        "per_tick": messages / ticks if ticks else float("nan"),
        "running": total(m1, "cyme_workers", state="running"),
        "restarts": total(m1, "cyme_worker_restarts_total")
                    - total(m0, "cyme_worker_restarts_total"),
        "seen": tap.between(*published, size) if tap is not None else {},
    }


def per_tick(result):
    """The broadcasts of a window seen on the broker, per tick and command."""
    ticks = result["ticks"] or float("nan")
    return ", ".join(
        f"{method} {count / ticks:.2f}" for method, count in sorted(result["seen"].items())
    ) or "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds measured at each size (60)")
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--sup-interval", type=float, default=5.0,
                        help="the branch's --sup-interval (5, its default)")
    parser.add_argument("--batch", type=int, default=10,
                        help="instances created at once (10)")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo"],
                        help="the instances' pool (prefork, what users get by default)")
    c.add_branch_options(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    c.install_limits(120 + len(sizes) * (args.window + 2 * args.start_timeout + 60))
    run = c.tag()
    branch = c.Branch("cost", "--sup-interval", str(args.sup_interval),
                      *args.branch_options, keep_root=args.keep)
    results = []
    tap = None
    try:
        branch.start()
        tap = PidboxTap()
        c.ensure_app(branch)
        print(f"supervision cost: sizes {sizes}, window {args.window:g} s, "
              f"--sup-interval {args.sup_interval:g}, pool {args.pool}; {c.machine()}")
        idle = measure(branch, min(args.window, 2 * args.sup_interval), args.sup_interval)
        print(f"  idle branch (0 instances, {idle['elapsed']:.0f} s): "
              f"{idle['cpu_percent']:.3f} % CPU, RSS {idle['rss']:.1f} MiB, "
              f"{idle['per_tick']:.2f} messages/tick", flush=True)
        for size in sizes:
            names = [f"s{run}n{size}i{i}" for i in range(size)]
            pids = {}
            try:
                t0 = time.monotonic()
                pids = create_all(branch, names, args.batch, args.start_timeout, args.pool)
                print(f"  {size} instances running after {time.monotonic() - t0:.1f} s",
                      flush=True)
                time.sleep(args.sup_interval + 1)  # start-up checks done
                for _ in range(3):
                    before = branch.broker_losses()
                    result = measure(branch, args.window, args.sup_interval, tap, size)
                    if branch.broker_losses() == before:
                        break
                    # Reconnecting is work the branch would not do otherwise.
                    print("  the broker went away during the window: thrown away, "
                          "taking it again", file=sys.stderr)
                    c.wait_broker()
                    time.sleep(args.sup_interval + 1)
                else:
                    raise RuntimeError("the broker kept going away")
                result["size"] = size
                results.append(result)
                print(f"  {size:3d} instances: {result['cpu_percent']:.3f} % CPU, "
                      f"RSS {result['rss']:.1f} MiB, {result['messages']:.0f} messages "
                      f"in {result['ticks']:.0f} ticks ({result['elapsed']:.1f} s), "
                      f"running {result['running']:.0f}, restarts {result['restarts']:.0f}; "
                      f"broadcasts per tick on the broker: {per_tick(result)}", flush=True)
            finally:
                pids.update(wait_running_quiet(branch, names))
                delete_all(branch, names, pids)
    finally:
        if tap is not None:
            tap.close()
        branch.stop()
    print(f"  load average at the end: {c.loadavg()}")
    report(args, idle, results)


def wait_running_quiet(branch, names):
    """Best effort: the pids of C{names} now (for cleanup after a failure)."""
    pids = {}
    for name in names:
        try:
            body = branch.instance(name) or {}
        except OSError:
            continue
        if body.get("pid"):
            pids[name] = body["pid"]
    return pids


def report(args, idle, results):
    if not results:
        return
    base = results[0]
    print()
    print(f"supervision cost of the branch process (window {args.window:g} s, "
          f"tick = --sup-interval {args.sup_interval:g} s, pool {args.pool})")
    rows = [["0 (idle)", f"{idle['cpu_percent']:.3f}", f"{idle['cpu_per_min']:.3f}", "-",
             f"{idle['rss']:.1f}", f"{idle['ticks']:.0f}", f"{idle['per_tick']:.2f}", "-"]]
    for r in results:
        rows.append([
            str(r["size"]), f"{r['cpu_percent']:.3f}", f"{r['cpu_per_min']:.3f}",
            f"{r['cpu_percent'] / base['cpu_percent']:.1f}x" if base["cpu_percent"] else "-",
            f"{r['rss']:.1f}", f"{r['ticks']:.0f}", f"{r['per_tick']:.2f}",
            f"{r['per_tick'] / base['per_tick']:.2f}x" if base["per_tick"] else "-",
        ])
    c.table(["instances", "CPU %core", "CPU s/min", "vs N=1", "RSS MiB",
             "ticks", "broadcasts/tick", "vs N=1"], rows)
    last = results[-1]
    print()
    print(f"  CPU at {last['size']}: {last['cpu_percent']:.3f} % of a core "
          f"(target <= {TARGET_CPU_PERCENT:g} %): "
          f"{c.verdict(last['cpu_percent'] <= TARGET_CPU_PERCENT)}")
    same = abs(last["per_tick"] - base["per_tick"]) <= 0.01 * base["per_tick"] + 1e-9
    print(f"  broadcasts/tick at {last['size']}: {last['per_tick']:.2f} vs "
          f"{base['per_tick']:.2f} at {base['size']} (target: the same): "
          f"{c.verdict(same)}")


if __name__ == "__main__":
    c.run(main)
