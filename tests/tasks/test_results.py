"""The task service around the journal: the expiry sweep, what it does
while the branch stops (queue nothing it could not record), and its broker
links on the branch's broker pool (wait for the connection's set-up, within
the publish timeout).
"""

import json

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from cyme.amqp import AMQPError, BrokerPool
from cyme.errors import Unavailable
from cyme.state.models import App, Broker, Queue
from cyme.tasks.results import BrokerUnreachable, PublishFailed, TaskService
from cyme.state.store import MemoryStore
from cyme.tasks.urlcheck import URLRefused
from tests.amqp.fakes import FakeClient, FakeConnection
from tests.tasks.test_journal import JournalTestCase
from tests.tasks.test_result_messages import ResultQueueTestCase


class TaskServiceTests(JournalTestCase):
    def tasks(self, journal, pool=None):
        return TaskService(pool, journal, "b1", self.clock, MemoryStore(),
                           publish_timeout=10)

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


class LinkTestCase(JournalTestCase):
    """A task service on a broker pool of fake clients, for app C{foo}."""

    def setUp(self):
        super().setUp()
        self.clients = {}
        self.pool = BrokerPool(self.clock, make_client=self.client)
        self.tasks = TaskService(self.pool, self.journal(), "b1", self.clock,
                                 MemoryStore(), publish_timeout=10)
        self.app = App("foo")

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]


class BrokerLinkTests(LinkTestCase):
    """A publish on the broker pool: it waits for the set-up, not forever."""

    def queue(self):
        return defer.ensureDeferred(
            self.tasks.queue(self.app, Queue("tasks"), "GET", "http://example.com/")
        )

    def test_a_broker_no_app_uses_any_more_is_closed(self):
        store = self.tasks.store
        store.put_app(self.app)
        other = App("bar", broker=Broker(hostname="elsewhere"))
        store.put_app(other)
        store.subscribe(self.tasks.release_unused)
        for app in (self.app, other):
            self.tasks.link(app.broker.as_url())
        self.pool.startService()
        self.addCleanup(self.pool.stopService)
        url = other.broker.as_url()
        self.assertTrue(self.clients[url].running)
        # Another app's change leaves it; deleting the only app using it
        # closes it.
        store.put_app(App("baz"))
        self.assertIn(url, self.pool.urls())
        store.delete_app("bar")
        self.assertNotIn(url, self.pool.urls())
        self.assertNotIn(url, self.tasks.links)
        self.assertFalse(self.clients[url].running)
        self.assertEqual(self.clients[url].listeners, [])
        # The default broker, still used by foo and baz, stays.
        self.assertIn(self.app.broker.as_url(), self.pool.urls())

    def test_a_link_a_publish_waits_on_is_kept_until_the_next_change(self):
        store = self.tasks.store
        store.put_app(self.app)
        store.subscribe(self.tasks.release_unused)
        waiting = self.queue()
        store.delete_app("foo")
        self.assertIn(self.app.broker.as_url(), self.tasks.links)
        self.clock.advance(10)
        self.failureResultOf(waiting, BrokerUnreachable)
        store.put_app(App("baz", broker=Broker(hostname="elsewhere")))
        self.assertNotIn(self.app.broker.as_url(), self.tasks.links)

    def test_no_broker_within_the_publish_timeout_is_a_503(self):
        self.app = App("foo", broker=Broker(hostname="mq", userid="u", password="s3cret"))
        d = self.queue()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, BrokerUnreachable).value
        self.assertEqual(error.status, 503)
        # The broker is named, its password never: not in the answer, not
        # in the task's recorded result.
        self.assertIn("amqp://u:**@mq:5672/", str(error))
        self.assertNotIn("s3cret", str(error))
        self.clock.advance(0)
        # The failure is recorded; no timer is left behind.
        self.assertEqual([line["state"] for line in self.lines()], ["PENDING", "FAILURE"])
        self.assertNotIn("s3cret", json.dumps(self.lines()))
        self.assertIn("amqp://u:**@mq", json.dumps(self.lines()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_503_says_why_the_broker_is_out_of_reach(self):
        # An amqps:// broker whose certificate the branch refused.
        self.app = App("foo", broker=Broker(hostname="mq", ssl=True, password="s3cret"))
        d = self.queue()
        refusal = "TLS: the broker's certificate is not for mq: refused (it names other hosts)"
        self.clients[self.app.broker.as_url()].last_error = refusal
        self.clock.advance(10)
        error = self.failureResultOf(d, BrokerUnreachable).value
        self.assertEqual(str(error), f"broker amqps://guest:**@mq:5671/%2F not reachable: "
                                     f"{refusal}")

    def test_a_publish_waits_for_the_set_up_of_the_connection(self):
        d = self.queue()
        self.clock.advance(5)
        connection = FakeConnection()
        self.clients[self.app.broker.as_url()].connect(connection)
        self.clock.advance(0)
        task_id = self.successResultOf(d)
        results, publishing = connection.channels
        self.assertIn("cyme.results.b1", results.consumers)
        published = [c for c in publishing.calls if c[0] == "publish"]
        self.assertEqual(len(published), 1)
        _, (exchange, routing_key, _body), options = published[0]
        self.assertEqual((exchange, routing_key), ("tasks", "tasks"))
        self.assertEqual(options["correlation_id"], task_id)
        self.assertEqual(options["reply_to"], "cyme.results.b1")
        # The timer of the wait is gone with the wait.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failed_set_up_is_logged_without_the_password(self):
        self.app = App("foo", broker=Broker(hostname="mq", userid="u", password="s3cret"))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        class Refusing(FakeConnection):
            def channel(self, *, timeout=None):
                return defer.fail(ValueError("no channel for you"))

        self.tasks.link(self.app.broker.as_url())
        connection = Refusing()
        self.clients[self.app.broker.as_url()].connect(connection)
        self.assertTrue(connection.aborted)
        lines = [formatEvent(e) for e in events]
        self.assertIn("cannot set up the task publishing on amqp://u:**@mq:5672/", "\n".join(lines))
        self.assertNotIn("s3cret", "\n".join(lines))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_one_publish_timing_out_leaves_the_others_waiting(self):
        first = self.queue()
        self.clock.advance(5)
        second = self.queue()
        self.clock.advance(5)
        self.failureResultOf(first, BrokerUnreachable)
        self.assertNoResult(second)
        self.clients[self.app.broker.as_url()].connect(FakeConnection())
        self.clock.advance(0)
        self.successResultOf(second)

    def test_a_link_per_broker_on_the_pool(self):
        self.assertIs(self.tasks.link("amqp://a//"), self.tasks.link("amqp://a//"))
        self.tasks.link("amqp://b//")
        self.assertEqual(sorted(self.pool.urls()), ["amqp://a//", "amqp://b//"])


class _UnusableBroker:
    def as_url(self):
        raise ValueError("Invalid IPv6 URL")


class _OlderStateStore(MemoryStore):
    """A state file of an older version: one app whose broker has no URL."""

    def apps(self):
        bad = type("Record", (), {"name": "bad", "broker": _UnusableBroker()})()
        return [bad] + super().apps()


class StartTests(JournalTestCase):
    def started(self, store):
        """A task service of C{store}'s apps, started; it and the broker
        URLs it asked a connection to."""
        asked = []

        def client(url):
            asked.append(url)
            return FakeClient()

        tasks = TaskService(BrokerPool(self.clock, make_client=client), self.journal(),
                            "b1", self.clock, store)
        tasks.startService()
        self.addCleanup(tasks.stopService)
        return tasks, asked

    def test_an_app_whose_broker_has_no_url_stops_no_start(self):
        store = _OlderStateStore()
        store.put_app(App("good"))
        tasks, asked = self.started(store)
        self.assertEqual(asked, [App("good").broker.as_url()])
        self.assertTrue(tasks.running)

    def test_an_app_whose_broker_host_is_unusable_is_skipped_with_a_log_line(self):
        # As an older version's state file holds it: a host no URL can carry.
        store = MemoryStore()
        store.put_app(App("bad", broker=Broker(hostname="[", userid="u", password="s3cret")))
        store.put_app(App("good", broker=Broker(hostname="mq")))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tasks, asked = self.started(store)
        self.assertTrue(tasks.running)
        self.assertEqual(asked, [App("good", broker=Broker(hostname="mq")).broker.as_url()])
        lines = "\n".join(formatEvent(e) for e in events)
        self.assertIn("app bad: cannot consume its results: ", lines)
        self.assertNotIn("s3cret", lines)
        self.assertEqual(self.flushLoggedErrors(), [])


class ClosedChannelTests(LinkTestCase):
    """The broker closes the task channel (a refused declaration) but not the connection."""

    def setUp(self):
        super().setUp()
        self.connection = FakeConnection()

    def queue(self, queue):
        d = defer.ensureDeferred(self.tasks.queue(self.app, queue, "GET", "http://example.com/"))
        self.clock.advance(0)
        return d

    def test_a_refused_declaration_leaves_the_broker_usable(self):
        self.tasks.link(self.app.broker.as_url())
        self.clients[self.app.broker.as_url()].connect(self.connection)
        self.clock.advance(0)
        first = self.connection.channels[1]
        # The broker refuses this queue's exchange (another type) and closes the channel.
        first.fail["exchange_declare"] = AMQPError("PRECONDITION_FAILED - inequivalent arg 'type'")
        bad = self.queue(Queue("bad", exchange="x", exchange_type="topic"))
        self.failureResultOf(bad, PublishFailed)
        first.is_open = False
        # Another app's task on the same broker is published on a new channel.
        good = self.queue(Queue("tasks"))
        self.assertEqual(len(self.connection.channels), 3)
        self.successResultOf(good)
        published = [c for c in self.connection.channels[2].calls if c[0] == "publish"]
        self.assertEqual(len(published), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_lost_connection_is_not_reopened_on(self):
        self.tasks.link(self.app.broker.as_url())
        self.clients[self.app.broker.as_url()].connect(self.connection)
        self.clock.advance(0)
        self.clients[self.app.broker.as_url()].lose(ConnectionError("gone"))
        waiting = self.queue(Queue("tasks"))
        self.assertEqual(len(self.connection.channels), 2)  # none opened on a lost one
        self.clock.advance(10)
        self.failureResultOf(waiting, BrokerUnreachable)


class FiguresTests(ResultQueueTestCase):
    """What /metrics counts: queued URLs by outcome, the workers' results by state."""

    def queue(self, url):
        d = defer.ensureDeferred(self.tasks.queue(self.app, Queue("tasks"), "GET", url))
        self.clock.advance(0)
        return d

    def test_queued_urls_by_outcome(self):
        # The set-up queued one, which the broker took.
        self.assertEqual(self.tasks.queued, {"accepted": 1, "refused": 0, "failed": 0})
        self.failureResultOf(self.queue("http://127.0.0.1/admin"), URLRefused)
        self.publishing.fail["publish"] = AMQPError("NOT_FOUND - no exchange 'tasks'")
        self.failureResultOf(self.queue("http://example.com/"), PublishFailed)
        del self.publishing.fail["publish"]
        self.successResultOf(self.queue("http://example.com/"))
        self.assertEqual(self.tasks.queued, {"accepted": 2, "refused": 1, "failed": 1})

    def test_results_stored_by_state_not_the_dropped(self):
        self.result({"task_id": self.task_id, "status": "STARTED"})
        self.result({"task_id": self.task_id, "status": "SUCCESS", "result": 1})
        self.result({"task_id": "not-ours", "status": "SUCCESS"})
        self.assertEqual(dict(self.tasks.stored), {"STARTED": 1, "SUCCESS": 1})
        self.assertEqual(self.tasks.dropped, 1)
