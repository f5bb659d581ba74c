"""The broker pool: one client service per URL, and the set-up it runs on
every (re)connection."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp import BrokerPool, ConnectionClosedError
from tests.amqp.fakes import FakeClient, FakeConnection


class BrokerPoolTests(SynchronousTestCase):
    def setUp(self):
        self.clients = {}
        self.pool = BrokerPool(Clock(), make_client=self.client)
        self.events = []
        self.log = Logger(observer=self.events.append)

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]

    def test_one_client_per_url_running_with_the_pool(self):
        a = self.pool.client("amqp://a//")
        self.assertIs(self.pool.client("amqp://a//"), a)
        b = self.pool.client("amqp://b//")
        self.assertEqual(self.pool.urls(), ["amqp://a//", "amqp://b//"])
        self.pool.startService()
        self.assertTrue(a.running and b.running)
        self.pool.stopService()
        self.assertFalse(a.running or b.running)

    def test_the_set_up_runs_on_every_connection_the_current_one_too(self):
        setups, losses = [], []

        async def setup(connection):
            setups.append(connection)

        first = FakeConnection()
        self.pool.client("amqp://a//")
        self.clients["amqp://a//"].connect(first)
        self.pool.on_connection("amqp://a//", setup, losses.append, what="x", log=self.log)
        self.assertEqual(setups, [first])
        self.clients["amqp://a//"].lose("gone")
        self.assertEqual(losses, ["gone"])
        second = FakeConnection()
        self.clients["amqp://a//"].connect(second)
        self.assertEqual(setups, [first, second])

    def test_a_failed_set_up_is_logged_and_drops_the_connection(self):
        async def setup(connection):
            raise ValueError("no")

        self.pool.on_connection("amqp://a//", setup, what="results", log=self.log)
        connection = FakeConnection()
        self.clients["amqp://a//"].connect(connection)
        self.assertTrue(connection.aborted)
        [event] = self.events
        self.assertEqual(event["what"], "results")
        self.assertTrue(event["log_failure"].check(ValueError))

    def test_a_set_up_cut_short_by_the_connection_is_one_line(self):
        waiting = defer.Deferred()

        async def setup(connection):
            await waiting

        self.pool.on_connection("amqp://a//", setup, what="results", log=self.log)
        connection = FakeConnection()
        self.clients["amqp://a//"].connect(connection)
        waiting.errback(ConnectionClosedError(320, "bye"))
        self.assertFalse(connection.aborted)
        [event] = self.events
        self.assertNotIn("log_failure", event)
        self.assertIn("interrupted", event["log_format"])

    def test_a_connection_is_kept_for_its_other_users_when_one_releases(self):
        async def setup(connection):
            pass

        other = self.pool.on_connection("amqp://a//", setup, what="bus", log=self.log)
        self.pool.on_connection("amqp://a//", setup, what="tasks", log=self.log)
        client = self.clients["amqp://a//"]
        self.assertFalse(self.successResultOf(self.pool.release("amqp://a//", other)))
        self.assertEqual(len(client.listeners), 1)
        self.assertEqual(self.pool.urls(), ["amqp://a//"])
