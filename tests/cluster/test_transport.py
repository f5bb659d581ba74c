"""The bus over AMQP, on the branch's broker pool: set up on every
connection through the pool's one mechanism, off the pool at stop."""

import json

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.amqp import BrokerPool, QueueDeclared
from cyme.amqp.errors import ChannelClosedError
from cyme.cluster.bus import IBusTransport
from cyme.cluster.transport import AMQPBusTransport

URL = "amqp://guest:guest@broker:5672//"


class FakeClient(service.Service):
    """The part of L{cyme.amqp.AMQPClientService} the pool's users see."""

    def __init__(self):
        self.listeners = []

    def add_listener(self, listener):
        self.listeners.append(listener)

    def remove_listener(self, listener):
        self.listeners.remove(listener)


class FakeChannel:
    def __init__(self, fail_declare=None):
        self.calls = []
        self.published = []
        self.fail_declare = fail_declare
        self.on_message = None

    async def exchange_declare(self, name, kind, **kwargs):
        self.calls.append(("exchange", name, kind))

    async def queue_declare(self, queue, **kwargs):
        if self.fail_declare is not None:
            raise self.fail_declare
        self.calls.append(("queue", queue, kwargs["exclusive"]))
        return QueueDeclared(queue, 0, 0)

    async def queue_bind(self, queue, exchange, routing_key, **kwargs):
        self.calls.append(("bind", queue, exchange, routing_key))

    async def consume(self, queue, on_message, **kwargs):
        self.on_message = on_message

    def publish(self, exchange, routing_key, body, **properties):
        self.published.append((exchange, routing_key, json.loads(body)))


class FakeConnection:
    is_open = True
    aborted = False

    def __init__(self, channel):
        self._channel = channel

    async def channel(self, timeout=None):
        return self._channel

    def abort(self):
        self.aborted = True


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

    def connect(self, channel):
        connection = FakeConnection(channel)
        for listener in list(self.client.listeners):
            listener.broker_connected(connection)
        return connection

    def test_implements_the_interface(self):
        self.assertTrue(verifyObject(IBusTransport, self.transport))

    def test_set_up_on_the_pool_connection_of_its_url(self):
        self.assertEqual(self.pool.urls(), [URL])
        self.assertEqual(len(self.client.listeners), 1)
        channel = FakeChannel()
        self.connect(channel)
        self.assertEqual(channel.calls, [
            ("exchange", "prod.bus", "fanout"),
            ("exchange", "prod.bus.direct", "direct"),
            ("queue", "prod.branch.b1", True),
            ("bind", "prod.branch.b1", "prod.bus", ""),
            ("bind", "prod.branch.b1", "prod.bus.direct", "b1"),
        ])
        self.assertTrue(self.transport.connected)
        self.assertEqual(self.changes, [True])

    def test_sends_and_receives_json_envelopes(self):
        channel = FakeChannel()
        self.connect(channel)
        self.transport.broadcast({"type": "beat"})
        self.transport.send("b2", {"type": "request"})
        self.assertEqual(channel.published, [
            ("prod.bus", "", {"type": "beat"}),
            ("prod.bus.direct", "b2", {"type": "request"}),
        ])
        channel.on_message(Message(b'{"type": "reply"}'))
        channel.on_message(Message(b"not json"))
        self.assertEqual(self.delivered, [{"type": "reply"}])

    def test_lost_connection_is_told_once(self):
        self.connect(FakeChannel())
        for listener in self.client.listeners:
            listener.broker_lost(None)
            listener.broker_lost(None)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.changes, [True, False])
        self.assertRaises(ConnectionError, self.transport.broadcast, {"type": "beat"})

    def test_branch_id_in_use_is_named_and_the_connection_dropped(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        connection = self.connect(FakeChannel(ChannelClosedError(405, "RESOURCE_LOCKED")))
        self.assertFalse(self.transport.connected)
        self.assertTrue(connection.aborted)
        self.assertIn("branch id b1 is in use by another branch on this broker",
                      [e["log_format"] for e in events])

    def test_stop_leaves_the_pool(self):
        self.connect(FakeChannel())
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(self.transport.stop)))
        self.assertEqual(self.client.listeners, [])
        self.assertFalse(self.transport.connected)
