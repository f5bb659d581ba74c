"""Messages on a branch's result queue: only results of its own pending tasks
are recorded; anything else, forged or malformed, is acknowledged, counted
and dropped, and leaves the journal and the waits working."""

import json

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from cyme.amqp import BrokerPool
from cyme.state.models import App, Queue
from cyme.state.store import MemoryStore
from cyme.tasks.resultmessage import read_result
from cyme.tasks.results import TaskService
from tests.amqp.fakes import FakeClient, FakeConnection
from tests.tasks.test_journal import JournalTestCase


class Message:
    """A delivery on the result queue, as the AMQP adapter hands it over."""

    def __init__(self, body, correlation_id=None):
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.correlation_id = correlation_id
        self.acked = self.rejected = False

    def ack(self):
        self.acked = True

    def reject(self, requeue=True):
        self.rejected = True


class ResultQueueTestCase(JournalTestCase):
    """A branch's task service with one task queued and its result queue consumed."""

    def setUp(self):
        super().setUp()
        self.clients = {}
        pool = BrokerPool(self.clock, make_client=self.client)
        self.journal_ = self.journal()
        self.tasks = TaskService(pool, self.journal_, "b1", self.clock, MemoryStore(),
                                 publish_timeout=10)
        self.app = App("foo")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        # A task queued through the branch; the consumer of its result queue.
        d = defer.ensureDeferred(
            self.tasks.queue(self.app, Queue("tasks"), "GET", "http://example.com/"))
        connection = FakeConnection()
        self.clients[self.app.broker.as_url()].connect(connection)
        self.clock.advance(0)
        self.task_id = self.successResultOf(d)
        self.deliver = connection.channels[0].consumers["cyme.results.b1"]
        self.publishing = connection.channels[1]

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]

    def result(self, body, correlation_id=None):
        message = Message(body, correlation_id)
        self.deliver(message)
        self.clock.advance(0)
        return message


class ResultQueueTests(ResultQueueTestCase):
    def test_the_result_of_a_pending_task_is_recorded(self):
        waiting = self.tasks.when_ready(self.task_id)
        message = self.result({"task_id": self.task_id, "status": "SUCCESS",
                               "result": {"status_code": 200}, "traceback": None,
                               "date_done": "2026-12-02T04:00:00"})
        self.assertTrue(message.acked)
        self.assertEqual(self.successResultOf(waiting).state, "SUCCESS")
        self.assertEqual(self.tasks.dropped, 0)

    def test_a_result_written_before_its_pending_line_is_on_disk(self):
        """A fast worker: the result comes while the PENDING line is being written."""
        d = defer.ensureDeferred(
            self.tasks.queue(self.app, Queue("tasks"), "GET", "http://example.com/"))
        # Published, its PENDING line not yet written (that takes a turn).
        _, _, options = [c for c in self.publishing.calls if c[0] == "publish"][-1]
        task_id = options["correlation_id"]
        self.assertIsNone(self.journal_.get(task_id))
        self.deliver(Message({"task_id": task_id, "status": "SUCCESS", "result": 1}))
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), task_id)
        self.assertEqual(self.journal_.get(task_id).state, "SUCCESS")
        self.assertEqual(self.tasks.dropped, 0)

    def test_forged_and_malformed_messages_are_dropped(self):
        forged = [
            {"task_id": "not-ours", "status": "SUCCESS", "result": "pwned"},
            {"task_id": ["a", "list"], "status": "SUCCESS"},
            {"task_id": {"a": 1}, "status": "SUCCESS"},
            {"task_id": self.task_id, "status": ["SUCCESS"]},
            {"task_id": self.task_id, "status": "OWNED"},
            {"task_id": self.task_id, "status": "SUCCESS", "traceback": ["x"]},
            {"task_id": self.task_id, "status": "SUCCESS", "date_done": 5},
            {"task_id": "x" * 65, "status": "SUCCESS"},
            {"status": "SUCCESS"},
            [self.task_id, "SUCCESS"],
            "SUCCESS",
            b"\xff not json",
            b"",
        ]
        messages = [self.result(body) for body in forged]
        self.assertTrue(all(m.acked and not m.rejected for m in messages))
        self.assertEqual(self.tasks.dropped, len(forged))
        # Nothing of theirs is recorded: the task still waits for its own.
        self.assertEqual(self.journal_.get(self.task_id).state, "PENDING")
        self.assertIsNone(self.journal_.get("not-ours"))
        # Logged once, not once per message.
        warnings = [e for e in self.events if "no result of a task" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.clock.advance(61)
        self.result({"task_id": "again", "status": "SUCCESS"})
        warnings = [e for e in self.events if "no result of a task" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)
        # The journal and the waits still work.
        waiting = self.tasks.when_ready(self.task_id)
        self.result({"task_id": self.task_id, "status": "FAILURE", "result": {"exc": "x"}})
        self.assertEqual(self.successResultOf(waiting).state, "FAILURE")

    def test_a_task_with_its_result_takes_no_other(self):
        self.result({"task_id": self.task_id, "status": "SUCCESS", "result": 1})
        again = self.result({"task_id": self.task_id, "status": "SUCCESS", "result": "forged"})
        self.assertTrue(again.acked)
        self.assertEqual(self.journal_.get(self.task_id).fields["result"], 1)
        self.assertEqual(self.tasks.dropped, 1)

    def test_the_correlation_id_names_the_task_where_the_body_does_not(self):
        self.result({"status": "SUCCESS", "result": 2}, correlation_id=self.task_id)
        self.assertEqual(self.journal_.get(self.task_id).state, "SUCCESS")


class CredentialTests(ResultQueueTestCase):
    """A queued URL's credentials go to the worker, not to readers of results."""

    def test_no_credentials_in_the_journal_or_the_result(self):
        d = defer.ensureDeferred(self.tasks.queue(
            self.app, Queue("tasks"), "GET", "http://alice:pa55@example.com/x"))
        self.clock.advance(0)
        task_id = self.successResultOf(d)
        # The task itself carries them: the worker needs them.
        _, (_, _, body), _ = [c for c in self.publishing.calls if c[0] == "publish"][-1]
        self.assertIn(b"pa55", bytes(body))
        self.assertEqual(self.journal_.get(task_id).fields["url"],
                         "http://alice:**@example.com/x")
        self.result({"task_id": task_id, "status": "SUCCESS",
                     "result": {"status_code": 200, "url": "http://alice:pa55@example.com/y"}})
        self.assertEqual(self.journal_.get(task_id).fields["result"]["url"],
                         "http://alice:**@example.com/y")
        with open(self.journal_.path, "rb") as f:
            self.assertNotIn(b"pa55", f.read())

    def test_no_credentials_in_a_failure(self):
        self.result({"task_id": self.task_id, "status": "FAILURE", "result": {
            "exc_type": "HostRefused", "exc_message": ["refused: http://bob:s3cret@10.0.0.1/"]}})
        self.assertNotIn("s3cret", json.dumps(self.journal_.get(self.task_id).fields))


class ReadResultTests(JournalTestCase):
    def test_shape(self):
        self.assertEqual(
            read_result({"task_id": "t", "status": "RETRY", "result": None}, None),
            ("t", "RETRY", {"result": None, "traceback": None, "date_done": None}))
        self.assertIsNone(read_result(None, "t"))


class JournalGuardTests(JournalTestCase):
    def test_a_bad_task_id_never_wedges_the_journal(self):
        journal = self.journal()
        bad = journal.record(["a", "list"], "SUCCESS")
        self.failureResultOf(bad, TypeError)
        good = journal.record("t", "SUCCESS")
        self.clock.advance(0)
        self.successResultOf(good)
        self.assertEqual(journal.get("t").state, "SUCCESS")
