"""Task results on disk: an append-only JSON-lines journal with compaction.

Every state change of a task this branch published (SENT, STARTED,
SUCCESS, FAILURE, RETRY, ...) is one line appended to
``<root>/results.jsonl``; the latest line of a task is its state.  One
write and fsync is under way at a time, in a thread of its own; the lines
recorded meanwhile share the next one (group commit), and each caller's
Deferred fires only once its line is on disk, so a result is acknowledged
to the broker only after it is durable.  When the file holds
much more than the live records, or records older than the retention, it
is rewritten atomically (temp file, fsync, rename, fsync of the directory).

Why a JSON-lines file and not SQLite (issue 8), from
C{bench/journal_vs_sqlite.py}: the same record path (records in memory,
one writer thread, group commit) on SQLite in WAL mode with
C{synchronous=FULL}, one transaction per group commit, side by side, 5
alternating samples each (medians), on a shared 2-core machine:

  - 1,000 tasks/s (PENDING, STARTED, SUCCESS each): 999 accepted/s both;
    PENDING durable after p50 6.4 ms (SQLite 6.2), p99 12.9 ms (13.5);
    CPU per 1,000 tasks 99 ms (SQLite 115);
  - as fast as it goes: 59,000 records durable/s (SQLite 58,200);
  - start-up with 100,000 stored results: 1.09 s (SQLite 0.91 s).

SQLite is not clearly faster (the same accept rate and latency, more CPU
per task, 0.18 s less at a start with 100,000 results), so the simpler
store stays.
"""

import collections
import json
import os

import attrs
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cyme import logs

READY_STATES = frozenset(["SUCCESS", "FAILURE", "REVOKED"])


class JournalClosed(Exception):
    """The journal was closed (the branch is stopping): nothing is written."""


@attrs.define
class TaskRecord:
    """What this branch knows of one task."""

    id: str
    state: str
    updated: float
    fields: dict = attrs.field(factory=dict)

    def to_json(self):
        return {"id": self.id, "state": self.state, "updated": self.updated, **self.fields}


class ResultJournal:
    """
    The results of this branch's tasks, in memory and in one journal file.

    C{clock} gives the time (C{seconds()}) and schedules the group commit;
    C{run(f, *args)} does the blocking file work and returns a Deferred of
    its result (L{run_at_once} by default; a one-thread pool in the daemon).
    """

    log = Logger(observer=logs.observer)

    def __init__(self, path, clock, retention=86400.0, compact_ratio=2.0, min_compact=1000,
                 run=None):
        self.path = path
        self.clock = clock
        # Where writes and fsyncs run: the daemon gives a thread of its
        # own, so that a slow disk never holds up the reactor.
        self._run = run or run_at_once
        self._busy = None  # the file work under way
        self._closing = None
        self._compact_after = 0
        self._compact_wanted = False
        self.retention = retention
        self.compact_ratio = compact_ratio
        self.min_compact = min_compact
        self.records = {}
        self.lines = 0
        self._waiters = {}
        self._batch = []
        # Task ids of lines recorded but not yet on disk (nor in records).
        self._unwritten = collections.Counter()
        self._flush_call = None
        #: Why the last write to the file failed; None once one succeeded.
        self.last_error = None
        self._file = None
        self._load()
        self._file = _open_private(self.path, append=True)

    # Loading

    def _load(self):
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        good_end = 0
        with f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    # A line cut short by a crash: it was never acknowledged.
                    self.log.warn("dropping a partial last line of {path}", path=self.path)
                    break
                try:
                    self._apply(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    self.log.warn("skipping a bad line in {path}", path=self.path)
                good_end += len(raw)
                self.lines += 1
        if good_end < os.path.getsize(self.path):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        self._expire()

    def _apply(self, line):
        record = self.records.get(line["id"])
        fields = {k: v for k, v in line.items() if k not in ("id", "state", "updated")}
        if record is None:
            self.records[line["id"]] = TaskRecord(line["id"], line["state"], line["updated"], fields)
        else:
            # A late STARTED never hides a result already known.
            if not (record.state in READY_STATES and line["state"] not in READY_STATES):
                record.state = line["state"]
            record.updated = line["updated"]
            record.fields.update(fields)

    # Writing

    def record(self, task_id, state, **fields):
        """
        Record C{state} (and C{fields}) for C{task_id}; a Deferred that
        fires once the line is on disk.
        """
        if self._closing is not None:
            # Closed: a result delivered while the branch stops stays
            # unacknowledged in its queue, for the next start.
            return defer.fail(JournalClosed(f"{self.path} is closed"))
        if not (isinstance(task_id, str) and isinstance(state, str)):
            # Never into a batch: one bad line would fail every line with it.
            return defer.fail(TypeError("a task id and a state are strings"))
        line = {"id": task_id, "state": state, "updated": self.clock.seconds(), **fields}
        encoded = json.dumps(line, separators=(",", ":")).encode("utf-8") + b"\n"
        d = defer.Deferred()
        self._batch.append((line, encoded, d))
        self._unwritten[task_id] += 1
        if self._flush_call is None and self._busy is None:
            self._flush_call = self.clock.callLater(0, self.flush)
        return d

    def flush(self):
        """
        Write and fsync everything recorded so far, then fire its Deferreds.

        One write is under way at a time: what is recorded meanwhile goes
        in the next one, so the busier the branch, the more lines share an
        fsync.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._busy is not None or not self._batch:
            return
        batch, self._batch = self._batch, []
        data = b"".join(encoded for _, encoded, _ in batch)
        self._work(
            self._run(_append, self._file, data),
            self._appended, self._not_appended, batch,
        )

    def _work(self, d, done, failed, arg):
        self._busy = d
        d.addCallbacks(done, failed, callbackArgs=(arg,), errbackArgs=(arg,))
        d.addErrback(lambda f: self.log.failure("journal bookkeeping failed", f))

    def _appended(self, _, batch):
        self._busy = None
        self.last_error = None
        self.lines += len(batch)
        for line, _, _ in batch:
            self._apply(line)
        self._written(batch)
        # The next work starts before anyone hears of this write: a caller
        # may close the journal from its callback.
        self._next()
        for line, _, _ in batch:
            self._notify(line["id"])
        for _, _, d in batch:
            d.callback(None)

    def _written(self, batch):
        for line, _, _ in batch:
            self._unwritten[line["id"]] -= 1
            if self._unwritten[line["id"]] <= 0:
                del self._unwritten[line["id"]]

    def _not_appended(self, failure, batch):
        self._busy = None
        self.last_error = failure.getErrorMessage()
        self._written(batch)
        self.log.failure("cannot write {path}", failure, path=self.path)
        self._next()
        for _, _, d in batch:
            d.errback(failure)

    def _next(self):
        """The file is free: compact it, write what waits, or report idle."""
        if self._busy is not None:
            return
        if self._compact_wanted or self.lines > max(
            self.min_compact, self.compact_ratio * len(self.records), self._compact_after
        ):
            self.compact()
        elif self._batch:
            self.flush()
        elif self._closing is not None:
            self._finish_close()

    # Retention and compaction

    def _expire(self):
        horizon = self.clock.seconds() - self.retention
        for task_id in [i for i, r in self.records.items() if r.updated < horizon]:
            del self.records[task_id]

    def expire(self):
        """
        Forget the results past the retention now, not at the next
        compaction, and rewrite the file without them; how many there were.
        """
        before = len(self.records)
        self._expire()
        gone = before - len(self.records)
        if gone and self._closing is None:
            self.compact()
        return gone

    def compact(self):
        """
        Rewrite the journal with one line per live record (once the write
        under way, if any, is done).
        """
        if self._closing is not None and self._closing.called:
            return  # closed: nothing to rewrite with
        if self._busy is not None:
            self._compact_wanted = True
            return
        self._compact_wanted = False
        self._expire()
        snapshot = [record.to_json() for record in self.records.values()]
        self._work(
            self._run(_rewrite, self.path, snapshot),
            self._rewritten, self._not_rewritten, len(snapshot),
        )

    def _rewritten(self, new_file, count):
        self._busy = None
        self._file.close()
        self._file = new_file
        self.lines = count
        self._compact_after = 0
        self._next()

    def _not_rewritten(self, failure, count):
        self._busy = None
        self.log.failure("cannot compact {path}", failure, path=self.path)
        # Not again at every append: once the file has doubled.
        self._compact_after = 2 * self.lines
        self._next()

    @property
    def closed(self):
        """Whether L{close} was called: records are refused."""
        return self._closing is not None

    def close(self):
        """
        Take no more records; a Deferred that fires once every line
        recorded so far is on disk and the file is closed.
        """
        if self._closing is None:
            self._closing = defer.Deferred()
            if self._busy is None:
                if self._batch:
                    self.flush()  # and then closes, from _next
                else:
                    self._finish_close()
        d = defer.Deferred()
        self._closing.addCallback(lambda _: d.callback(None))
        return d

    def _finish_close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._closing.called:
            self._closing.callback(None)

    # Reading

    def get(self, task_id):
        """The task's record, or None (also once it is past the retention)."""
        record = self.records.get(task_id)
        if record is not None and record.updated < self.clock.seconds() - self.retention:
            # Expired; the next compaction drops its lines.
            del self.records[task_id]
            return None
        return record

    def awaits(self, task_id):
        """Whether task C{task_id} is known here with no result yet (or its line is on its way)."""
        record = self.get(task_id)
        if record is not None:
            return record.state not in READY_STATES
        return task_id in self._unwritten

    def when_ready(self, task_id):
        """A Deferred of the task's record once it is ready (or now)."""
        record = self.get(task_id)
        if record is not None and record.state in READY_STATES:
            return defer.succeed(record)
        d = defer.Deferred(lambda d: self._forget(task_id, d))
        self._waiters.setdefault(task_id, []).append(d)
        return d

    def _forget(self, task_id, d):
        waiters = self._waiters.get(task_id, [])
        if d in waiters:
            waiters.remove(d)
        if not waiters:
            self._waiters.pop(task_id, None)

    def _notify(self, task_id):
        record = self.records.get(task_id)
        if record is None or record.state not in READY_STATES:
            return
        for d in self._waiters.pop(task_id, []):
            d.callback(record)


# The file work, done where the journal's C{run} says (a thread of its own
# in the daemon): nothing here touches the journal's state.


def _append(file, data):
    file.write(data)
    file.flush()
    os.fsync(file.fileno())


def _rewrite(path, snapshot):
    """Replace C{path} by C{snapshot}'s lines; the new file, open to append."""
    temp = path + ".tmp"
    with _open_private(temp, append=False) as f:
        for line in snapshot:
            f.write(json.dumps(line, separators=(",", ":")).encode("utf-8"))
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    dirfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return _open_private(path, append=True)


def _open_private(path, append):
    """
    C{path} open to write, readable by this user alone (0600): results
    carry what workers fetched.  A file an older cyme left readable by
    others is closed to them too.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab" if append else "wb")


def run_at_once(f, *args):
    """Blocking file work done in the caller's thread (tests, tools)."""
    return defer.maybeDeferred(f, *args)


class DiskThread:
    """
    A journal's C{run} in the daemon: one thread for its file work, so that
    writes stay in order and a slow fsync holds up nothing but the journal.
    """

    def __init__(self, reactor, name="cyme-journal"):
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name)

    def start(self):
        self._pool.start()

    def stop(self):
        """Once the journal is closed: the thread is idle, the join quick."""
        self._pool.stop()

    def __call__(self, f, *args):
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)
