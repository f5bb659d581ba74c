"""The bus over RabbitMQ: L{AMQPBusTransport}.

Each branch consumes one exclusive queue, C{<cluster>.branch.<id>}, bound
to the cluster's fanout exchange (C{<cluster>.bus}: broadcasts) and to its
direct exchange under the branch's id (C{<cluster>.bus.direct}: calls to
it and the replies to its own requests).  The names are under the
cluster's name, so that several clusters share a broker; the queue is
exclusive, so that the broker refuses a second branch with the same id.

The connection is the branch's shared one to that broker
(L{cyme.amqp.BrokerPool}); the pool runs this transport's set-up on every
(re)connection and reports one that failed.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cyme import logs
from cyme.amqp.private import open_inbox

from .interfaces import IBusTransport


@implementer(IBusTransport)
class AMQPBusTransport:
    """The bus over the broker at C{url}, through the branch's broker pool."""

    log = Logger(observer=logs.observer)

    def __init__(self, pool, url, branch_id, cluster="cyme"):
        self.pool = pool
        self.url = url
        self.branch_id = branch_id
        self.broadcast_exchange = f"{cluster}.bus"
        self.direct_exchange = f"{cluster}.bus.direct"
        self.queue = f"{cluster}.branch.{branch_id}"
        self.connected = False
        self._listener = None
        self._channel = None
        self._deliver = None
        self._changed = None

    def start(self, deliver, connection_changed):
        self._deliver = deliver
        self._changed = connection_changed
        self._listener = self.pool.on_connection(
            self.url, self._setup, self._lost, what="bus", log=self.log,
            locked=f"branch id {self.branch_id} is in use by another branch on this broker",
        )

    async def _setup(self, connection):
        self._channel = await open_inbox(
            connection, self.queue,
            exchanges=[(self.broadcast_exchange, "fanout"), (self.direct_exchange, "direct")],
            bindings=[(self.broadcast_exchange, ""), (self.direct_exchange, self.branch_id)],
            on_message=self._message, timeout=10,
        )
        self.connected = True
        self._changed(True)

    def _lost(self, reason):
        self._channel = None
        if self.connected:
            self.connected = False
            self._changed(False)

    def _message(self, message):
        # Opened, checked and counted by the bus (cyme.cluster.seal): here
        # the bytes only pass.
        self._deliver(message.body)

    def _publish(self, exchange, routing_key, body):
        if self._channel is None:
            raise ConnectionError("bus not connected")
        self._channel.publish(exchange, routing_key, body, content_type="application/json")

    def broadcast(self, body):
        self._publish(self.broadcast_exchange, "", body)

    def send(self, branch_id, body):
        self._publish(self.direct_exchange, branch_id, body)

    def stop(self):
        """
        Leave the bus: the channel (and so the branch's exclusive queue)
        closes, and the connection goes back to the pool.
        """
        self.connected = False
        channel, self._channel = self._channel, None
        listener, self._listener = self._listener, None
        closing = defer.succeed(None)
        if channel is not None and channel.is_open:
            closing = channel.close(timeout=5)
            closing.addErrback(lambda f: self.log.info(
                "bus channel not closed: {error}", error=f.getErrorMessage()))
        if listener is not None:
            closing.addCallback(lambda _: self.pool.release(self.url, listener))
        return closing.addCallback(lambda _: None)
