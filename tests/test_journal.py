"""The results journal: durable before acknowledged, group commit, restart,
retention, compaction, and waiting for a result.
"""

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.journal import ResultJournal


class JournalTests(SynchronousTestCase):
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
