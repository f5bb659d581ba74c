"""
Closing a broker's remote control leaves nothing behind on a connection
that other parts of the branch keep: its channel, and with it its exclusive
reply queue and consumer, go at once (on the fakes of the AMQP adapter).
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp import BrokerPool
from cyme.supervision.control import PidboxControl
from tests.amqp.fakes import FakeClient, FakeConnection

URL = "amqp://guest:guest@elsewhere:5672//"


class SlowConnection(FakeConnection):
    """Its channel opens when the test fires C{opening}."""

    def __init__(self):
        super().__init__()
        self.opening = defer.Deferred()

    def channel(self, *, timeout=None):
        return self.opening.addCallback(lambda _: super(SlowConnection, self).channel())


class CloseTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clients = {}
        self.pool = BrokerPool(self.clock, make_client=self.client)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]

    def test_closing_closes_its_channel_on_a_kept_connection(self):
        control = PidboxControl(self.pool, URL, self.clock)
        self.pool.client(URL)  # another part of the branch keeps it
        connection = FakeConnection()
        self.clients[URL].connect(connection)
        self.assertTrue(control.connected)
        [channel] = connection.channels
        self.assertFalse(self.successResultOf(control.close()))
        self.assertFalse(channel.is_open)
        self.assertIn(URL, self.pool.urls())
        self.assertFalse(connection.aborted)

    def test_a_set_up_that_ends_after_the_close_closes_its_channel(self):
        control = PidboxControl(self.pool, URL, self.clock)
        self.pool.client(URL)
        connection = SlowConnection()
        self.clients[URL].connect(connection)
        control.close()
        connection.opening.callback(None)
        [channel] = connection.channels
        self.assertFalse(channel.is_open)
        self.assertFalse(control.connected)
