"""The task service around the journal: the expiry sweep, and what it does
while the branch stops (queue nothing it could not record).
"""

from twisted.internet import defer

from cyme.errors import Unavailable
from cyme.state.models import App, Queue
from cyme.tasks.results import PublishFailed, TaskService
from cyme.state.store import MemoryStore
from tests.tasks.test_journal import JournalTestCase


class TaskServiceTests(JournalTestCase):
    def tasks(self, journal):
        return TaskService(None, journal, "b1", self.clock, MemoryStore())

    def test_the_branch_sweeps_expired_results(self):
        journal = self.journal(retention=60)
        tasks = self.tasks(journal)
        tasks.startService()
        journal.record("old", "SUCCESS")
        self.clock.advance(0)
        self.clock.advance(tasks.expire_interval)
        self.assertEqual(journal.records, {})
        self.assertEqual(self.lines(), [])
        self.successResultOf(tasks.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stopping_branch_queues_nothing(self):
        journal = self.journal()
        tasks = self.tasks(journal)
        tasks.startService()
        self.successResultOf(tasks.stopService())
        d = defer.ensureDeferred(
            tasks.queue(App("foo"), Queue("tasks"), "GET", "http://example.com/")
        )
        self.assertEqual(self.failureResultOf(d, Unavailable).value.status, 503)
        self.assertEqual(journal.records, {})
        self.assertEqual(tasks.links, {})  # no broker was even asked

    def test_a_publish_cut_short_by_the_stop_is_a_503_naming_the_task(self):
        journal = self.journal()
        tasks = self.tasks(journal)
        app = App("foo")

        class StoppingLink:
            """The broker link as the branch stops under a publish."""

            async def publish(self, queue, task_id, headers, body, timeout):
                tasks.stopService()
                raise PublishFailed("the broker did not confirm the task: closed")

        tasks.startService()
        tasks.links[app.broker.as_url()] = StoppingLink()
        d = defer.ensureDeferred(tasks.queue(app, Queue("tasks"), "GET", "http://example.com/"))
        self.clock.advance(0)
        error = self.failureResultOf(d, Unavailable).value
        self.assertEqual(error.status, 503)
        # Its PENDING line was on its way before the stop: it is on disk.
        self.assertEqual([line["state"] for line in self.lines()], ["PENDING"])
        self.assertEqual(error.to_json()["uuid"], self.lines()[0]["id"])
