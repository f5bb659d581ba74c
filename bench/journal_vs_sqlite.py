"""The results journal against an SQLite store, side by side (issue 8).

journal: L{cyme.tasks.journal.ResultJournal} as the branch runs it: JSON
         lines appended and fsynced by one L{DiskThread}, group commit
         (what is recorded during a write shares the next one), compaction
         when the file holds more than twice the live records.
sqlite:  L{SqliteJournal} below, the same record path (records in memory,
         one writer thread, group commit) on an SQLite database in WAL mode
         with C{synchronous=FULL}: one transaction per group commit, an
         upsert per record (fields merged with C{json_patch}), no
         compaction (an expiry is a DELETE).

accept:  tasks at C{--rate} (1,000/s) for C{--seconds}, each recorded
         PENDING when accepted, then STARTED and SUCCESS (three records
         per task, as the branch writes them); the accepted rate (tasks
         whose PENDING was durable within the run, per second), the p50
         and p99 of the time a PENDING waits to be durable, and the CPU
         seconds of the process per 1,000 tasks.  Then as fast as it
         goes (C{--seconds} with up to 5,000 records waiting): records
         durable per second.
load:    start-up with C{--results} (100,000) stored results: the time to
         open the store and have every record in memory.

Each sample runs in a process of its own, the two stores alternating
(journal, sqlite, journal, ...) C{--samples} times; medians.

    .venv/bin/python bench/journal_vs_sqlite.py [--samples 5] [--seconds 5]
        [--rate 1000] [--results 100000]
"""

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer  # noqa: E402

from cyme.tasks.journal import READY_STATES, DiskThread, ResultJournal, TaskRecord  # noqa: E402

import _common as c  # noqa: E402


class SqliteJournal:
    """The journal's record path on SQLite (WAL), for this comparison only."""

    def __init__(self, path, clock, run):
        self.clock = clock
        self._run = run
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, state TEXT,"
            " updated REAL, fields TEXT)"
        )
        self.records = {}
        for task_id, state, updated, fields in self._db.execute(
            "SELECT id, state, updated, fields FROM results"
        ):
            self.records[task_id] = TaskRecord(task_id, state, updated, json.loads(fields))
        self._batch = []
        self._busy = None
        self._flush_call = None

    def record(self, task_id, state, **fields):
        d = defer.Deferred()
        self._batch.append(
            ((task_id, state, self.clock.seconds(), json.dumps(fields)), d)
        )
        if self._flush_call is None and self._busy is None:
            self._flush_call = self.clock.callLater(0, self.flush)
        return d

    def flush(self):
        self._flush_call = None
        if self._busy is not None or not self._batch:
            return
        batch, self._batch = self._batch, []
        self._busy = self._run(_commit, self._db, [row for row, _ in batch])
        self._busy.addCallback(self._committed, batch)

    def _committed(self, _, batch):
        self._busy = None
        for (task_id, state, updated, fields), _ in batch:
            record = self.records.get(task_id)
            if record is None:
                self.records[task_id] = TaskRecord(task_id, state, updated, json.loads(fields))
            else:
                if not (record.state in READY_STATES and state not in READY_STATES):
                    record.state = state
                record.updated = updated
                record.fields.update(json.loads(fields))
        if self._batch:
            self.flush()
        for _, d in batch:
            d.callback(None)

    def close(self):
        self._db.close()
        return defer.succeed(None)


def _commit(db, rows):
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO results (id, state, updated, fields) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET"
        " state = CASE WHEN results.state IN ('SUCCESS', 'FAILURE', 'REVOKED')"
        " AND excluded.state NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')"
        " THEN results.state ELSE excluded.state END,"
        " updated = excluded.updated, fields = json_patch(results.fields, excluded.fields)",
        rows,
    )
    db.execute("COMMIT")


def open_store(kind, directory, clock, run):
    if kind == "journal":
        # The daemon's retention (a day); the branch's other defaults.
        return ResultJournal(os.path.join(directory, "results.jsonl"), clock, run=run)
    return SqliteJournal(os.path.join(directory, "results.db"), clock, run)


def result_fields(n):
    """A webhook's SUCCESS as the worker reports it (about 300 bytes)."""
    return {
        "result": {"status_code": 200, "url": f"http://127.0.0.1:8000/x?n={n}",
                   "headers": {"Content-Type": "text/plain", "Content-Length": "2"},
                   "content": "ok", "encoding": "text"},
        "traceback": None,
        "date_done": "2026-01-01T00:00:00.000000+00:00",
    }


def pending_fields(n):
    return {"app": "bench", "queue": "q", "method": "GET",
            "url": f"http://127.0.0.1:8000/x?n={n}"}


# One sample, in a process of its own.


def child_accept(kind, directory, rate, seconds):
    from twisted.internet import reactor

    disk = DiskThread(reactor)
    disk.start()
    store = open_store(kind, directory, reactor, disk)
    waits = []
    state = {"n": 0, "durable": 0}
    tick = 0.01
    start = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def accepted(_, due, n):
        now = time.perf_counter()
        waits.append(now - due)
        if now - start <= seconds:
            state["durable"] += 1
        # The worker's updates follow (they do not hold the accept up).
        store.record(f"t{n}", "STARTED")
        store.record(f"t{n}", "SUCCESS", **result_fields(n))

    def paced():
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return finish()
        due_count = int(elapsed * rate) + 1
        while state["n"] < due_count:
            n = state["n"]
            state["n"] += 1
            store.record(f"t{n}", "PENDING", **pending_fields(n)).addCallback(
                accepted, start + n / rate, n
            )
        reactor.callLater(tick, paced)

    def finish():
        # Every record out on disk before the figures are taken.
        reactor.callLater(0.5, report)

    def report():
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        waits.sort()
        print(json.dumps({
            "accepted_per_s": state["durable"] / seconds,
            "p50_ms": waits[len(waits) // 2] * 1000,
            "p99_ms": waits[int(len(waits) * 0.99)] * 1000,
            "cpu_s_per_1000": cpu / (state["n"] / 1000),
        }))
        store.close().addBoth(lambda _: (disk.stop(), reactor.stop()))

    reactor.callWhenRunning(paced)
    reactor.run()


def child_saturated(kind, directory, seconds):
    from twisted.internet import reactor

    disk = DiskThread(reactor)
    disk.start()
    store = open_store(kind, directory, reactor, disk)
    state = {"n": 0, "waiting": 0, "durable": 0}
    start = time.perf_counter()

    def done(_):
        state["waiting"] -= 1
        if time.perf_counter() - start <= seconds:
            state["durable"] += 1

    def feed():
        if time.perf_counter() - start >= seconds:
            return reactor.callLater(0.5, report)
        while state["waiting"] < 5000:
            n = state["n"]
            state["n"] += 1
            state["waiting"] += 1
            store.record(f"t{n // 3}", ("PENDING", "STARTED", "SUCCESS")[n % 3],
                         **pending_fields(n)).addCallback(done)
        reactor.callLater(0.001, feed)

    def report():
        print(json.dumps({"records_per_s": state["durable"] / seconds}))
        store.close().addBoth(lambda _: (disk.stop(), reactor.stop()))

    reactor.callWhenRunning(feed)
    reactor.run()


class _Clock:
    def seconds(self):
        return time.time()

    def callLater(self, delay, f, *args):
        raise AssertionError("nothing is written while loading")


def child_fill(kind, directory, results):
    """Store C{results} finished tasks (one compacted line / row each)."""
    now = time.time()
    if kind == "journal":
        with open(os.path.join(directory, "results.jsonl"), "wb") as f:
            for n in range(results):
                line = {"id": f"t{n}", "state": "SUCCESS", "updated": now,
                        **pending_fields(n), **result_fields(n)}
                f.write(json.dumps(line, separators=(",", ":")).encode("utf-8") + b"\n")
    else:
        store = SqliteJournal(os.path.join(directory, "results.db"), _Clock(), None)
        _commit(store._db, [
            (f"t{n}", "SUCCESS", now, json.dumps({**pending_fields(n), **result_fields(n)}))
            for n in range(results)
        ])
        store.close()


def child_load(kind, directory, results):
    t0 = time.perf_counter()
    store = open_store(kind, directory, _Clock(), None)
    elapsed = time.perf_counter() - t0
    if len(store.records) != results:
        raise RuntimeError(f"{kind} loaded {len(store.records)} of {results}")
    print(json.dumps({"load_s": elapsed}))


def sample(*argv):
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)],
                         capture_output=True, text=True, check=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, kind, directory, *rest = args.child
        {"accept": lambda: child_accept(kind, directory, float(rest[0]), float(rest[1])),
         "saturated": lambda: child_saturated(kind, directory, float(rest[0])),
         "fill": lambda: child_fill(kind, directory, int(rest[0])),
         "load": lambda: child_load(kind, directory, int(rest[0]))}[what]()
        return

    print(f"# results journal vs SQLite, {c.machine()}")
    kinds = ("journal", "sqlite")
    figures = {kind: {} for kind in kinds}

    def add(kind, result):
        for key, value in result.items():
            figures[kind].setdefault(key, []).append(value)

    base = tempfile.mkdtemp(prefix="cyme-bench-journal-")
    try:
        stored = {}
        for kind in kinds:
            stored[kind] = os.path.join(base, f"stored-{kind}")
            os.makedirs(stored[kind])
            sample("fill", kind, stored[kind], args.results)
        for _ in range(args.samples):
            for kind in kinds:
                for what, extra in (("accept", (args.rate, args.seconds)),
                                    ("saturated", (args.seconds,))):
                    directory = tempfile.mkdtemp(dir=base)
                    add(kind, sample(what, kind, directory, *extra))
                    shutil.rmtree(directory)
                add(kind, sample("load", kind, stored[kind], args.results))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def med(kind, key):
        return c.median(figures[kind][key])

    rows = [
        [f"accepted at {args.rate:.0f} tasks/s (3 records each)",
         *(f"{med(k, 'accepted_per_s'):.0f}/s" for k in kinds)],
        ["  PENDING durable after, p50", *(f"{med(k, 'p50_ms'):.2f} ms" for k in kinds)],
        ["  p99", *(f"{med(k, 'p99_ms'):.2f} ms" for k in kinds)],
        ["  CPU per 1,000 tasks", *(f"{med(k, 'cpu_s_per_1000') * 1000:.0f} ms" for k in kinds)],
        ["records durable, as fast as it goes",
         *(f"{med(k, 'records_per_s'):.0f}/s" for k in kinds)],
        [f"start-up with {args.results:,} results", *(f"{med(k, 'load_s'):.2f} s" for k in kinds)],
    ]
    c.table(["results store", *kinds], rows)
    for kind in kinds:
        print(f"samples {kind}: " + "; ".join(
            f"{key} " + ", ".join(f"{v:.4g}" for v in values)
            for key, values in figures[kind].items()))
    print("sqlite/journal: " + ", ".join(
        f"{key} {med('sqlite', key) / med('journal', key):.2f}"
        for key in figures["journal"]))


if __name__ == "__main__":
    main()
