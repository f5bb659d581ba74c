"""txAMQP's channel, with its defects contained: byte bodies, publisher
confirms, consumers, and news of its closing.

L{AMQPChannel} is the channel class of L{cyme.amqp.protocol.AMQPProtocol};
L{cyme.amqp.channel.Channel} wraps it for the rest of cyme.  It checks
every method and its properties before queueing it (a value txAMQP's
writer cannot encode would stop the writer for good), numbers publishes
for confirms, hands deliveries to their consumer, discards frames for a
closed channel (txAMQP's worker would close the whole connection) and
frees the channel id once the broker has agreed to the close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed as TxClosed
from txamqp.connection import Frame, Header, Method
from txamqp.protocol import AMQChannel
from txamqp.queue import Closed as QueueClosed

from cyme import logs

from .confirms import ConfirmTracker
from .errors import AMQPError, ChannelClosedError, ConsumerCancelled, as_amqp_error
from .message import Message, from_spec
from .wire import pack_payload

if TYPE_CHECKING:
    from .protocol import AMQPProtocol

__all__ = ["AMQPChannel", "ConsumerSink", "to_message"]

log = Logger(observer=logs.observer)


class ConsumerSink(Protocol):
    """Where a channel hands one consumer's deliveries."""

    def message_received(self, message: Message) -> None: ...

    def consumer_stopped(self, error: AMQPError) -> None: ...


class AMQPChannel(AMQChannel):
    """A txAMQP channel with byte bodies, confirms, consumers and close news."""

    def __init__(self, id: int, outgoing: Any, client: AMQPProtocol) -> None:
        super().__init__(id, outgoing, client)
        self.incoming.clock = self.responses.clock = client.clock
        self.confirms: ConfirmTracker | None = None
        self.close_error: AMQPError | None = None
        self._consumers: dict[str, ConsumerSink] = {}
        self._close_waiters: list[Deferred[AMQPError]] = []
        self._close_sent = False
        self._awaiting_close_ok = False

    # -- sending -----------------------------------------------------------

    def invoke(self, method: Any, args: Any, content: Any = None) -> Deferred[Any]:
        if self.closed:
            return fail(as_amqp_error(self.reason))
        try:
            self._check(method, args, content)
        except Exception:
            return fail()
        confirm = None
        if method.klass.name == "confirm" and method.name == "select":
            # Publishes are numbered from the select on, not from select-ok,
            # and a second select must not restart the numbering.
            if self.confirms is None:
                self.confirms = ConfirmTracker()
        elif method.klass.name == "basic" and method.name == "publish":
            if self.confirms is not None:
                confirm = self.confirms.expect()
        elif method.klass.name == "channel" and method.name == "close":
            self._close_sent = True
        d = super().invoke(method, args, content)
        d.addErrback(_translate)
        if confirm is not None:
            d.addCallback(lambda _: confirm)
        return d

    def _check(self, method: Any, args: Any, content: Any) -> None:
        pack_payload(self.client.spec, Method(method, *args))
        if content is not None:
            if isinstance(content.body, str):
                # Sized in bytes below, so it must be bytes already.
                content.body = content.body.encode("utf-8")
            pack_payload(
                self.client.spec, Header(method.klass, 0, 0, **content.properties)
            )

    def settle(self, method: str, **fields: Any) -> None:
        """Send basic.ack/nack/reject; on a closed channel there is nothing
        to do (the broker requeues the message itself)."""
        if self.closed:
            log.debug(
                "not sending {method} on closed channel {channel}",
                method=method,
                channel=self.id,
            )
            return
        d = getattr(self, method)(**fields)
        d.addErrback(_log_settle_failure, method)

    def abandon(self, error: AMQPError) -> None:
        """Stop using the channel now (a call timed out, so its replies can
        no longer be paired with requests) and ask the broker to close it."""
        if self.closed:
            return
        self._awaiting_close_ok = True
        close = self.client.spec.classes.byname["channel"].methods.byname["close"]
        self.close(ChannelClosedError(None, f"given up: {error}"))
        if not self._close_sent:
            self._close_sent = True
            text = str(error).encode("utf-8")[:255].decode("utf-8", "ignore")
            self.outgoing.put(Frame(self.id, Method(close, 200, text, 0, 0)))

    # -- consumers ---------------------------------------------------------

    def consume(self, sink: ConsumerSink, **fields: Any) -> Deferred[str]:
        """basic.consume; C{sink} gets deliveries from consume-ok on."""

        def registered(reply: Any) -> str:
            # Synchronous with consume-ok, so no delivery can come first.
            self._consumers[reply.consumer_tag] = sink
            return reply.consumer_tag

        return self.basic_consume(**fields).addCallback(registered)

    def forget_consumer(self, tag: str) -> None:
        self._consumers.pop(tag, None)

    def deliver(self, message: Message) -> None:
        sink = self._consumers.get(message.consumer_tag or "")
        if sink is None:
            log.debug(
                "dropped a delivery for unknown consumer {tag}",
                tag=message.consumer_tag,
            )
            return
        sink.message_received(message)

    def consumer_cancelled(self, tag: str) -> None:
        sink = self._consumers.pop(tag, None)
        if sink is not None:
            sink.consumer_stopped(ConsumerCancelled(f"broker cancelled consumer {tag}"))

    # -- closing -----------------------------------------------------------

    def dispatch(self, frame: Frame, work: Any) -> None:
        if not self.closed:
            return super().dispatch(frame, work)
        # The spec says to discard everything but close/close-ok on a
        # closed channel, and txAMQP's worker would close the connection.
        payload = frame.payload
        if isinstance(payload, Method) and payload.method.klass.name == "channel":
            if payload.method.name == "close":
                close_ok = payload.method.klass.methods.byname["close-ok"]
                self.outgoing.put(Frame(self.id, Method(close_ok)))
                self._release()
            elif payload.method.name == "close-ok":
                self._release()

    def do_close(self, reason: Any) -> None:
        if self.closed:
            return
        super().do_close(reason)
        error = self.close_error = as_amqp_error(reason)
        if self.confirms is not None:
            self.confirms.fail_all(error)
        consumers, self._consumers = self._consumers, {}
        for sink in consumers.values():
            sink.consumer_stopped(error)
        if not self._awaiting_close_ok:
            self._release()
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(error)

    def when_closed(self) -> Deferred[AMQPError]:
        """Fires with the reason (an L{AMQPError}) once the channel is closed."""
        if self.closed:
            return succeed(self.close_error or as_amqp_error(self.reason))
        d: Deferred[AMQPError] = Deferred()
        self._close_waiters.append(d)
        return d

    def _release(self) -> None:
        """Free the channel id for reuse."""
        if self.client.channels.get(self.id) is self:
            del self.client.channels[self.id]


def _log_settle_failure(failure: Failure, method: str) -> None:
    log.warn("{method} failed: {error}", method=method, error=failure.value)


def _translate(failure: Failure) -> Failure:
    if failure.check(TxClosed, QueueClosed):
        return Failure(as_amqp_error(failure.value))
    return failure


def _field(message: Any, name: str) -> Any:
    try:
        return getattr(message, name)
    except AttributeError:
        return None


def to_message(channel: AMQPChannel, delivery: Any) -> Message:
    """A txAMQP basic.deliver/basic.get-ok message as a cyme L{Message}."""
    content = delivery.content
    body = content.body
    # txAMQP assembles an empty body as "" (str).
    body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return Message(
        body=body,
        properties=from_spec(content.properties),
        delivery_tag=delivery.delivery_tag,
        redelivered=bool(delivery.redelivered),
        exchange=delivery.exchange,
        routing_key=delivery.routing_key,
        consumer_tag=_field(delivery, "consumer_tag"),
        channel=channel,
    )
