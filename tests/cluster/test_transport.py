"""The bus over AMQP, on the branch's broker pool: set up on every
connection through the pool's one mechanism, off the pool at stop."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.amqp import BrokerPool
from cyme.amqp.errors import ChannelClosedError
from cyme.cluster.interfaces import IBusTransport
from cyme.cluster.transport import AMQPBusTransport
from tests.amqp.fakes import FakeClient, FakeConnection

URL = "amqp://guest:guest@broker:5672//"


class Message:
    def __init__(self, body):
        self.body = body


class AMQPBusTransportTests(SynchronousTestCase):
    def setUp(self):
        self.client = FakeClient()
        self.pool = BrokerPool(Clock(), make_client=lambda url: self.client)
        self.transport = AMQPBusTransport(self.pool, URL, "b1", cluster="prod")
        self.delivered, self.changes = [], []
        self.transport.start(self.delivered.append, self.changes.append)

    def connect(self, fail=None):
        """Connect; the bus's channel, and the connection."""
        connection = FakeConnection(fail)
        self.client.connect(connection)
        return (connection.channels or [None])[0], connection

    def published(self, channel):
        return [(args[0], args[1], json.loads(args[2]))
                for name, args, _ in channel.calls if name == "publish"]

    def test_implements_the_interface(self):
        self.assertTrue(verifyObject(IBusTransport, self.transport))

    def test_set_up_on_the_pool_connection_of_its_url(self):
        self.assertEqual(self.pool.urls(), [URL])
        self.assertEqual(len(self.client.listeners), 1)
        channel, _ = self.connect()
        self.assertEqual([(name, args, kwargs.get("exclusive"))
                          for name, args, kwargs in channel.calls], [
            ("exchange_declare", ("prod.bus", "fanout"), None),
            ("exchange_declare", ("prod.bus.direct", "direct"), None),
            ("queue_declare", ("prod.branch.b1",), True),
            ("queue_bind", ("prod.branch.b1", "prod.bus", ""), None),
            ("queue_bind", ("prod.branch.b1", "prod.bus.direct", "b1"), None),
            ("consume", ("prod.branch.b1",), True),
        ])
        self.assertTrue(self.transport.connected)
        self.assertEqual(self.changes, [True])

    def test_carries_the_bytes_of_envelopes_both_ways(self):
        # Sealing and opening are the bus's (one place): the transport
        # neither reads nor changes what it carries.
        channel, _ = self.connect()
        self.transport.broadcast(b'{"type": "beat"}')
        self.transport.send("b2", b'{"sealed": "x"}')
        self.assertEqual(self.published(channel), [
            ("prod.bus", "", {"type": "beat"}),
            ("prod.bus.direct", "b2", {"sealed": "x"}),
        ])
        on_message = channel.consumers["prod.branch.b1"]
        on_message(Message(b'{"type": "reply"}'))
        on_message(Message(b"not json"))
        self.assertEqual(self.delivered, [b'{"type": "reply"}', b"not json"])

    def test_lost_connection_is_told_once(self):
        self.connect()
        self.client.lose(None)
        self.client.lose(None)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.changes, [True, False])
        self.assertRaises(ConnectionError, self.transport.broadcast, b"{}")

    def test_branch_id_in_use_is_named_and_the_connection_dropped(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, connection = self.connect({"queue_declare": ChannelClosedError(405, "RESOURCE_LOCKED")})
        self.assertFalse(self.transport.connected)
        self.assertTrue(connection.aborted)
        self.assertIn("branch id b1 is in use by another branch on this broker",
                      [e["log_format"] for e in events])

    def test_stop_leaves_the_pool_and_closes_its_channel(self):
        channel, connection = self.connect()
        self.pool.client(URL)  # another part of the branch keeps the connection
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(self.transport.stop)))
        self.assertEqual(self.client.listeners, [])
        self.assertFalse(self.transport.connected)
        self.assertFalse(channel.is_open)
        self.assertIn(URL, self.pool.urls())

    def test_stop_gives_back_a_connection_nobody_else_uses(self):
        self.connect()
        self.successResultOf(defer.maybeDeferred(self.transport.stop))
        self.assertEqual(self.pool.urls(), [])
