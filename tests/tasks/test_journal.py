"""The results journal: durable before acknowledged, group commit, restart,
retention, compaction, and waiting for a result.
"""

import json
import os
import stat

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cyme.metrics import Metrics
from cyme.tasks.journal import DiskThread, JournalClosed, ResultJournal


class JournalTestCase(SynchronousTestCase):
    """A journal file in a fresh directory, on a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "results.jsonl")
        os.makedirs(os.path.dirname(self.path))

    def journal(self, **kwargs):
        journal = ResultJournal(self.path, self.clock, **kwargs)
        self.addCleanup(journal.close)
        return journal

    def lines(self):
        with open(self.path, "rb") as f:
            return [json.loads(line) for line in f]


class JournalTests(JournalTestCase):
    def test_a_record_is_on_disk_when_its_deferred_fires(self):
        journal = self.journal()
        d = journal.record("t1", "SUCCESS", result=42)
        self.assertNoResult(d)
        self.assertEqual(self.lines(), [])
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.lines()[0]["result"], 42)
        self.assertEqual(journal.get("t1").state, "SUCCESS")

    def test_one_turn_one_write(self):
        journal = self.journal()
        ds = [journal.record(f"t{n}", "SENT") for n in range(100)]
        self.clock.advance(0)
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(len(self.lines()), 100)

    def test_state_survives_a_restart(self):
        journal = self.journal()
        journal.record("t1", "SENT", url="http://x/")
        journal.record("t1", "SUCCESS", result={"status_code": 200})
        self.clock.advance(0)
        journal.close()
        again = self.journal()
        record = again.get("t1")
        self.assertEqual(record.state, "SUCCESS")
        self.assertEqual(record.fields["url"], "http://x/")
        self.assertEqual(record.fields["result"], {"status_code": 200})

    def test_late_started_does_not_hide_a_result(self):
        journal = self.journal()
        journal.record("t1", "SUCCESS", result=1)
        journal.record("t1", "STARTED")
        self.clock.advance(0)
        self.assertEqual(journal.get("t1").state, "SUCCESS")

    def test_a_line_cut_by_a_crash_is_dropped(self):
        journal = self.journal()
        journal.record("t1", "SUCCESS", result=1)
        self.clock.advance(0)
        journal.close()
        with open(self.path, "ab") as f:
            f.write(b'{"id": "t2", "state": "SUCC')
        again = self.journal()
        self.assertEqual(again.get("t1").state, "SUCCESS")
        self.assertIsNone(again.get("t2"))
        again.record("t3", "SENT")
        self.clock.advance(0)
        self.assertEqual([line["id"] for line in self.lines()], ["t1", "t3"])

    def test_results_older_than_the_retention_are_dropped(self):
        journal = self.journal(retention=60.0)
        journal.record("old", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(61)
        journal.record("new", "SUCCESS")
        self.clock.advance(0)
        journal.compact()
        self.assertIsNone(journal.get("old"))
        self.assertEqual([line["id"] for line in self.lines()], ["new"])

    def test_expired_results_leave_memory_and_file_without_new_writes(self):
        journal = self.journal(retention=60)
        journal.record("old", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(30)
        journal.record("new", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(31)
        self.assertEqual(journal.expire(), 1)
        self.assertEqual(set(journal.records), {"new"})
        self.assertEqual([line["id"] for line in self.lines()], ["new"])
        self.assertEqual(journal.expire(), 0)

    def test_compaction_keeps_one_line_per_task(self):
        journal = self.journal(min_compact=10, compact_ratio=2.0)
        for n in range(5):
            for state in ("SENT", "STARTED", "SUCCESS"):
                journal.record(f"t{n}", state, result=n)
        self.clock.advance(0)
        self.assertEqual(len(self.lines()), 5)
        self.assertEqual({line["state"] for line in self.lines()}, {"SUCCESS"})
        journal.record("t9", "SENT")
        self.clock.advance(0)
        self.assertEqual(len(self.lines()), 6)

    def test_when_ready_fires_when_the_result_is_written(self):
        journal = self.journal()
        d = journal.when_ready("t1")
        journal.record("t1", "STARTED")
        self.clock.advance(0)
        self.assertNoResult(d)
        journal.record("t1", "FAILURE", result={"exc_type": "WebhookError"})
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d).state, "FAILURE")

    def test_when_ready_of_a_known_result_fires_at_once(self):
        journal = self.journal()
        journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(journal.when_ready("t1")).state, "SUCCESS")

    def test_cancelled_wait_is_forgotten(self):
        journal = self.journal()
        d = journal.when_ready("t1")
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(journal._waiters, {})

    def test_a_hundred_thousand_results(self):
        journal = self.journal()
        for n in range(100_000):
            journal.record(f"task-{n}", "SUCCESS", result={"status_code": 200})
            if n % 1000 == 999:
                self.clock.advance(0)
        self.clock.advance(0)
        journal.close()
        again = self.journal()
        self.assertEqual(len(again.records), 100_000)
        self.assertEqual(again.get("task-99999").state, "SUCCESS")


class SlowDisk:
    """
    A journal's C{run} whose file work waits until the test lets it go, as
    on a disk slower than the reactor.
    """

    def __init__(self):
        self.pending = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.pending.append((f, args, d))
        return d

    def finish(self, error=None):
        f, args, d = self.pending.pop(0)
        if error is not None:
            d.errback(error)
        else:
            d.callback(f(*args))


class SlowDiskTests(JournalTestCase):
    """The journal while its file work runs elsewhere (a thread in the daemon)."""

    def journal(self, **kwargs):
        self.disk = SlowDisk()
        journal = ResultJournal(self.path, self.clock, run=self.disk, **kwargs)
        return journal

    def test_records_made_during_a_write_share_the_next_one(self):
        journal = self.journal()
        first = journal.record("t1", "SENT")
        self.clock.advance(0)
        self.assertEqual(len(self.disk.pending), 1)
        later = [journal.record("t2", "SENT"), journal.record("t3", "SENT")]
        self.clock.advance(0)
        self.assertEqual(len(self.disk.pending), 1, "one write under way at a time")
        self.assertNoResult(first)
        self.disk.finish()
        self.successResultOf(first)
        self.assertEqual([line["id"] for line in self.lines()], ["t1"])
        for d in later:
            self.assertNoResult(d)
        self.assertEqual(len(self.disk.pending), 1)
        self.disk.finish()
        for d in later:
            self.successResultOf(d)
        self.assertEqual([line["id"] for line in self.lines()], ["t1", "t2", "t3"])
        self.assertEqual(self.disk.pending, [])
        self.assertEqual(journal.get("t3").state, "SENT")

    def test_a_result_is_known_only_once_on_disk(self):
        journal = self.journal()
        waiting = journal.when_ready("t1")
        journal.record("t1", "SUCCESS", result=1)
        self.clock.advance(0)
        self.assertIsNone(journal.get("t1"))
        self.assertNoResult(waiting)
        self.disk.finish()
        self.assertEqual(self.successResultOf(waiting).state, "SUCCESS")

    def test_close_waits_for_the_lines_recorded(self):
        journal = self.journal()
        recorded = journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        journal.record("t2", "SUCCESS")
        closed = journal.close()
        self.failureResultOf(journal.record("t3", "SUCCESS"), JournalClosed)
        self.assertNoResult(closed)
        self.disk.finish()
        self.successResultOf(recorded)
        self.assertNoResult(closed)
        self.disk.finish()
        self.successResultOf(closed)
        self.successResultOf(journal.close())
        self.assertEqual([line["id"] for line in self.lines()], ["t1", "t2"])

    def test_records_made_during_a_compaction_follow_it(self):
        journal = self.journal(min_compact=4, compact_ratio=1.5)
        for state in ("SENT", "STARTED", "SUCCESS"):
            journal.record("t1", state)
        journal.record("t2", "SENT")
        journal.record("t2", "STARTED")
        self.clock.advance(0)
        self.disk.finish()  # 5 lines, 2 tasks: a compaction starts
        self.assertEqual(len(self.disk.pending), 1)
        late = journal.record("t2", "SUCCESS")
        self.clock.advance(0)
        self.disk.finish()  # the compaction
        self.assertEqual([(l["id"], l["state"]) for l in self.lines()],
                         [("t1", "SUCCESS"), ("t2", "STARTED")])
        self.assertNoResult(late)
        self.disk.finish()
        self.successResultOf(late)
        self.assertEqual([(l["id"], l["state"]) for l in self.lines()],
                         [("t1", "SUCCESS"), ("t2", "STARTED"), ("t2", "SUCCESS")])
        self.successResultOf(journal.close())
        again = ResultJournal(self.path, self.clock)
        self.addCleanup(again.close)
        self.assertEqual(again.get("t2").state, "SUCCESS")

    def test_closed_by_a_callback_when_a_compaction_is_due(self):
        journal = self.journal(min_compact=1, compact_ratio=1.0)
        journal.record("t1", "SENT")
        last = journal.record("t1", "SUCCESS")
        closed = []
        last.addCallback(lambda _: closed.append(journal.close()))
        self.clock.advance(0)
        self.disk.finish()  # the lines; the compaction starts, then close
        self.assertNoResult(closed[0])
        self.disk.finish()
        self.successResultOf(closed[0])
        self.assertEqual([(l["id"], l["state"]) for l in self.lines()], [("t1", "SUCCESS")])

    def test_each_write_is_timed_failed_ones_not(self):
        metrics = Metrics()
        journal = self.journal(metrics=metrics)
        name = "cyme_journal_write_duration_seconds"

        def sample(suffix, **labels):
            return metrics.registry.get_sample_value(name + suffix, labels)

        journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(0.02)  # the disk takes 20 ms
        journal.record("t2", "SUCCESS")  # meanwhile: the next write
        self.disk.finish()
        self.clock.advance(0.003)
        self.disk.finish()
        failed = journal.record("t3", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(1)
        self.disk.finish(OSError("disk full"))
        self.failureResultOf(failed, OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(sample("_count"), 2)
        self.assertAlmostEqual(sample("_sum"), 0.023)
        self.assertEqual((sample("_bucket", le="0.005"), sample("_bucket", le="0.025")), (1, 2))
        self.successResultOf(journal.close())

    def test_a_failed_write_fails_its_records_and_the_next_go_on(self):
        journal = self.journal()
        lost = journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        kept = journal.record("t2", "SUCCESS")
        self.disk.finish(OSError("disk full"))
        self.failureResultOf(lost, OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.disk.finish()
        self.successResultOf(kept)
        self.assertIsNone(journal.get("t1"))
        self.assertEqual(journal.get("t2").state, "SUCCESS")
        self.successResultOf(journal.close())


class ThreadedJournalTests(TestCase):
    """The journal as the daemon runs it: file work in a thread of its own."""

    def test_records_from_many_turns_are_all_on_disk(self):
        disk = DiskThread(reactor, "journal-test")
        disk.start()
        self.addCleanup(disk.stop)
        path = os.path.join(os.path.abspath(self.mktemp()), "results.jsonl")
        os.makedirs(os.path.dirname(path))
        journal = ResultJournal(path, reactor, min_compact=100, compact_ratio=1.5, run=disk)

        async def go():
            recorded = []
            for turn in range(50):
                for n in range(20):
                    task = f"t{turn}-{n}"
                    recorded.append(journal.record(task, "SENT"))
                    recorded.append(journal.record(task, "SUCCESS", result=n))
                await deferLater(reactor, 0, lambda: None)
            await defer.gatherResults(recorded)
            await journal.close()
            again = ResultJournal(path, reactor)
            self.assertEqual(len(again.records), 1000)
            self.assertEqual({r.state for r in again.records.values()}, {"SUCCESS"})
            self.assertLess(again.lines, 2000, "compacted meanwhile")
            await again.close()

        return defer.ensureDeferred(go())


class FileModeTests(JournalTestCase):
    """Results carry what workers fetched: the journal is readable by its
    user alone, from its creation, after a compaction, and once opened
    again when an older cyme had left it readable by others."""

    def mode(self):
        return stat.S_IMODE(os.stat(self.path).st_mode)

    def test_created_0600(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        journal = self.journal()
        journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        self.assertEqual(self.mode(), 0o600)

    def test_compacted_0600(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        journal = self.journal()
        journal.record("t1", "SUCCESS")
        self.clock.advance(0)
        journal.compact()
        self.clock.advance(0)
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.mode(), 0o600)
        self.assertFalse(os.path.exists(self.path + ".tmp"))

    def test_an_older_readable_journal_is_closed_to_others(self):
        with open(self.path, "wb") as f:
            f.write(json.dumps({"id": "t1", "state": "SUCCESS", "updated": 1_000_000}).encode() + b"\n")
        os.chmod(self.path, 0o644)
        journal = self.journal()
        self.assertEqual(self.mode(), 0o600)
        self.assertEqual(journal.get("t1").state, "SUCCESS")
