"""Task results on disk: an append-only JSON-lines journal with compaction.

Every state change of a task this branch published (SENT, STARTED,
SUCCESS, FAILURE, RETRY, ...) is one line appended to
``<root>/results.jsonl``; the latest line of a task is its state.  Appends
made in one reactor turn share one write and one fsync (group commit), and
each caller's Deferred fires only once its line is on disk, so a result is
acknowledged to the broker only after it is durable.  When the file holds
much more than the live records, or records older than the retention, it
is rewritten atomically (temp file, fsync, rename, fsync of the directory).
"""

import json
import os

import attrs
from twisted.internet import defer
from twisted.logger import Logger

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

    C{clock} gives the time (C{seconds()}) and schedules the group commit.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, path, clock, retention=86400.0, compact_ratio=2.0, min_compact=1000):
        self.path = path
        self.clock = clock
        self.retention = retention
        self.compact_ratio = compact_ratio
        self.min_compact = min_compact
        self.records = {}
        self.lines = 0
        self._waiters = {}
        self._batch = []
        self._flush_call = None
        self._file = None
        self._load()
        self._file = open(self.path, "ab")

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
        if self._file is None:
            # Closed: a result delivered while the branch stops stays
            # unacknowledged in its queue, for the next start.
            return defer.fail(JournalClosed(f"{self.path} is closed"))
        line = {"id": task_id, "state": state, "updated": self.clock.seconds(), **fields}
        encoded = json.dumps(line, separators=(",", ":")).encode("utf-8") + b"\n"
        d = defer.Deferred()
        self._batch.append((line, encoded, d))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)
        return d

    def flush(self):
        """Write and fsync everything recorded so far; fire its Deferreds."""
        self._flush_call = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self._file.write(b"".join(encoded for _, encoded, _ in batch))
            self._file.flush()
            os.fsync(self._file.fileno())
        except Exception as e:
            self.log.failure("cannot write {path}", path=self.path)
            for _, _, d in batch:
                d.errback(e)
            return
        self.lines += len(batch)
        for line, _, d in batch:
            self._apply(line)
            self._notify(line["id"])
            d.callback(None)
        if self.lines > max(self.min_compact, self.compact_ratio * len(self.records)):
            self.compact()

    # Reading

    def get(self, task_id):
        """The task's record, or None (also once it is past the retention)."""
        record = self.records.get(task_id)
        if record is not None and record.updated < self.clock.seconds() - self.retention:
            # Expired; the next compaction drops its lines.
            del self.records[task_id]
            return None
        return record

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

    # Retention and compaction

    def _expire(self):
        horizon = self.clock.seconds() - self.retention
        for task_id in [i for i, r in self.records.items() if r.updated < horizon]:
            del self.records[task_id]

    def compact(self):
        """Rewrite the journal with one line per live record."""
        self._expire()
        temp = self.path + ".tmp"
        with open(temp, "wb") as f:
            for record in self.records.values():
                f.write(json.dumps(record.to_json(), separators=(",", ":")).encode("utf-8"))
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)
        dirfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self._file.close()
        self._file = open(self.path, "ab")
        self.lines = len(self.records)

    def close(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
