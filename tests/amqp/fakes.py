"""Fakes of the AMQP adapter's objects for the tests of its users."""

from twisted.application.service import Service
from twisted.internet import defer
from zope.interface.verify import verifyObject

from cyme.amqp import IBrokerListener, QueueDeclared


class FakeClient(Service):
    """An L{cyme.amqp.AMQPClientService} that connects when told to."""

    def __init__(self):
        self.listeners = []
        self.connection = None
        #: Why the last attempt to connect failed (None: it did not).
        self.last_error = None

    def add_listener(self, listener):
        verifyObject(IBrokerListener, listener)
        self.listeners.append(listener)
        if self.connection is not None:
            listener.broker_connected(self.connection)

    def remove_listener(self, listener):
        if listener in self.listeners:
            self.listeners.remove(listener)

    def connect(self, connection):
        self.connection = connection
        for listener in self.listeners:
            listener.broker_connected(connection)

    def lose(self, reason):
        self.connection = None
        for listener in self.listeners:
            listener.broker_lost(reason)


class FakeChannel:
    """The calls of L{cyme.amqp.Channel} that the branch's parts make."""

    def __init__(self, fail=None):
        self.calls = []
        self.consumers = {}
        self.is_open = True
        #: Method name -> the error that call fails with.
        self.fail = dict(fail or {})

    def close(self, *, timeout=None):
        self.is_open = False
        return self._call("close")

    def _call(self, name, *args, **kwargs):
        if name in self.fail:
            return defer.fail(self.fail[name])
        self.calls.append((name, args, kwargs))
        return defer.succeed(None)

    def queue_declare(self, queue, **kwargs):
        d = self._call("queue_declare", queue, **kwargs)
        return d.addCallback(lambda _: QueueDeclared(queue, 0, 0))

    def basic_qos(self, prefetch_count, **kwargs):
        return self._call("basic_qos", prefetch_count, **kwargs)

    def confirm_select(self, **kwargs):
        return self._call("confirm_select", **kwargs)

    def exchange_declare(self, exchange, type="direct", **kwargs):
        return self._call("exchange_declare", exchange, type, **kwargs)

    def queue_bind(self, queue, exchange, routing_key="", **kwargs):
        return self._call("queue_bind", queue, exchange, routing_key, **kwargs)

    def consume(self, queue, on_message, **kwargs):
        self.consumers[queue] = on_message
        return self._call("consume", queue, **kwargs)

    def publish(self, exchange, routing_key, body, **kwargs):
        return self._call("publish", exchange, routing_key, body, **kwargs)


class FakeConnection:
    """A L{cyme.amqp.Connection} whose channels are L{FakeChannel}s."""

    is_open = True

    def __init__(self, fail=None):
        self.channels = []
        self.aborted = False
        #: What the calls on its channels fail with (see L{FakeChannel}).
        self.fail = fail

    def abort(self):
        self.aborted = True

    def channel(self, *, timeout=None):
        self.channels.append(FakeChannel(self.fail))
        return defer.succeed(self.channels[-1])
