"""txAMQP's client protocol, with its defects contained.

With L{cyme.amqp.rawchannel} (its channel class), this is where cyme plugs
into txAMQP's protocol.  On top of ``AMQClient`` and ``TwistedDelegate``
it:

- packs and unpacks every frame with L{cyme.amqp.wire} (complete field
  tables, bodies kept as bytes and sized in bytes) and sends the real
  0-9-1 protocol header;
- handles basic.ack/basic.nack (publisher confirms) and broker-sent
  basic.cancel, which txAMQP's delegate lacks;
- assembles deliveries as their frames come (L{cyme.amqp.deliveries}),
  not through txAMQP's per-channel queues and worker;
- never lets a failing handler reach txAMQP's worker, which would close
  the whole connection;
- tells its owner when the connection is gone.
"""

from __future__ import annotations

import platform
import warnings
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from cyme import logs
from twisted.python.failure import Failure
from txamqp.client import Closed as TxClosed
from txamqp.client import TwistedDelegate
from txamqp.connection import Frame, Method
from txamqp.protocol import AMQClient
from txamqp.queue import Closed as QueueClosed

from .deliveries import Deliveries
from .errors import AMQPError, ConnectionClosedError, as_amqp_error
from .rawchannel import AMQPChannel, to_message
from .spec import load_spec
from .timeouts import within
from .wire import FrameError, pack_frame, unpack_frame

__all__ = [
    "AMQPDelegate",
    "AMQPProtocol",
    "AMQPProtocolFactory",
    "default_client_properties",
]

log = Logger(observer=logs.observer)

# txAMQP 0.8.2 still ends its inlineCallbacks with defer.returnValue, which
# warns on every call under Twisted >= 24.7; the noise is txAMQP's alone.
warnings.filterwarnings(
    "ignore",
    message=r"twisted\.internet\.defer\.returnValue was deprecated",
    category=DeprecationWarning,
    module=r"txamqp\.",
)

# The 0-9-1 protocol header; txAMQP sends the 0-9 one ("AMQP" 1 1 0 9).
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def default_client_properties(connection_name: str | None = None) -> dict[str, Any]:
    """What cyme tells the broker about itself in connection.start-ok."""
    from cyme import __version__

    properties: dict[str, Any] = {
        "product": "cyme",
        "version": __version__,
        "platform": f"Python {platform.python_version()} (Twisted, txAMQP)",
        "capabilities": {
            "publisher_confirms": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "exchange_exchange_bindings": True,
            "authentication_failure_close": True,
        },
    }
    if connection_name:
        properties["connection_name"] = connection_name
    return properties


class AMQPDelegate(TwistedDelegate):
    """txAMQP's delegate plus the methods RabbitMQ sends that it lacks.

    Handlers must not raise: txAMQP's worker would close the connection.
    """

    def connection_start(self, ch: AMQPChannel, msg: Any) -> None:
        self.client.broker_said_start(msg.server_properties)
        ch.connection_start_ok(
            client_properties=self.client.client_properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def connection_tune(self, ch: AMQPChannel, msg: Any) -> None:
        self.client.broker_said_tune(msg.channel_max)
        super().connection_tune(ch, msg)

    def basic_deliver(self, ch: AMQPChannel, msg: Any) -> None:
        ch.deliver(to_message(ch, msg))

    def basic_ack(self, ch: AMQPChannel, msg: Any) -> None:
        if ch.confirms is not None:
            ch.confirms.ack(msg.delivery_tag, msg.multiple)

    def basic_nack(self, ch: AMQPChannel, msg: Any) -> None:
        if ch.confirms is not None:
            ch.confirms.nack(msg.delivery_tag, msg.multiple)

    def basic_cancel(self, ch: AMQPChannel, msg: Any) -> None:
        ch.consumer_cancelled(msg.consumer_tag)

    def basic_return_(self, ch: AMQPChannel, msg: Any) -> None:
        log.warn(
            "broker returned a message to {exchange!r}/{routing_key!r}:"
            " {reply_code} {reply_text}",
            exchange=msg.exchange,
            routing_key=msg.routing_key,
            reply_code=msg.reply_code,
            reply_text=msg.reply_text,
        )


class AMQPProtocol(AMQClient):
    """An ``AMQClient`` speaking through L{cyme.amqp.wire}."""

    channelClass = AMQPChannel

    def __init__(
        self,
        delegate: AMQPDelegate,
        vhost: str,
        spec: Any = None,
        heartbeat: int = 0,
        *,
        clock: Any,
        client_properties: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(delegate, vhost, spec or load_spec(), heartbeat, clock)
        self.client_properties = client_properties or default_client_properties()
        self.server_properties: dict[str, Any] = {}
        self.channel_max = 65535
        self.opened = False
        self.lost_reason: Failure | None = None
        # Why the AMQP conversation ended (e.g. the broker's connection.close),
        # which says more than the transport's ConnectionDone.
        self.close_reason: Any = None
        self._lost_waiters: list[Deferred[AMQPError]] = []
        self._deliveries = Deliveries(delegate)

    # -- heartbeats ----------------------------------------------------------
    # txAMQP restarts a timer for every frame it sends and another for every
    # frame it receives, which under load costs more than the frames.  Here
    # a sent frame only sets a flag and a received one a time; the timers
    # run at their own pace.

    _sent_recently = False
    _last_received = 0.0
    _checking = False

    def broker_said_start(self, server_properties: Any) -> None:
        """connection.start came: what the broker says of itself."""
        self.server_properties = dict(server_properties or {})

    def broker_said_tune(self, channel_max: int) -> None:
        """connection.tune came: the channels the broker allows (0: no limit)."""
        self.channel_max = channel_max or 65535

    def reschedule_send_heartbeat(self) -> None:
        self._sent_recently = True
        if self.heartbeatInterval > 0 and not self.sendHB.running:
            # Every half interval: a beat goes out when nothing else did,
            # so the broker never sees a silence longer than the interval.
            self.sendHB.start(self.heartbeatInterval / 2.0, now=False)

    def send_heartbeat(self) -> None:
        if self._sent_recently:
            self._sent_recently = False
            return
        super().send_heartbeat()

    def reschedule_check_heartbeat(self) -> None:
        self._last_received = self.clock.seconds()
        if not self._checking:
            self._checking = True
            if self.checkHB.active():
                self.checkHB.cancel()
            self._schedule_check(self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT)

    def _schedule_check(self, delay: float) -> None:
        self.checkHB = self.clock.callLater(delay, self._check_silence)

    def _check_silence(self) -> None:
        deadline = self._last_received + self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT
        now = self.clock.seconds()
        if now >= deadline:
            self.check_heartbeat()
        else:
            self._schedule_check(deadline - now)

    def start(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """The handshake (txAMQP's C{authenticate} ends here)."""

        def opened(result: Any) -> Any:
            self.opened = True
            return result

        return super().start(*args, **kwargs).addCallback(opened)

    # -- framing -----------------------------------------------------------

    def send_init_string(self) -> None:
        self.transport.write(PROTOCOL_HEADER)

    def _pack_frame(self, frame: Frame) -> bytes:
        return pack_frame(self.spec, frame)

    def _unpack_frame(self, data: bytes) -> Frame | None:
        try:
            return unpack_frame(self.spec, data)
        except FrameError as e:
            log.error(
                "malformed frame from the broker, dropping the connection: {error}",
                error=str(e),
            )
        except Exception:
            log.failure("cannot decode a frame, dropping the connection")
        self.transport.abortConnection()
        return None

    def frame_received(self, frame: Frame | None) -> None:
        if frame is not None:
            super().frame_received(frame)

    def process_frame(self, frame: Frame) -> Any:
        if self._deliveries.take(frame, self.channels.get(frame.channel)):
            if self.heartbeatInterval > 0:
                self.reschedule_check_heartbeat()
            return succeed(None)
        # Publisher confirms come back one per message: settle them here,
        # not through txAMQP's per-frame dispatch (a generator, a queue and
        # a delegate lookup for two integers).
        payload = frame.payload
        if isinstance(payload, Method) and payload.method.klass.name == "basic":
            name = payload.method.name
            channel = self.channels.get(frame.channel)
            if name in ("ack", "nack") and channel is not None and channel.confirms is not None:
                if self.heartbeatInterval > 0:
                    self.reschedule_check_heartbeat()
                settle = channel.confirms.ack if name == "ack" else channel.confirms.nack
                settle(payload.args[0], payload.args[1])
                return succeed(None)
        # txAMQP would conjure up a channel for any id; a frame for a channel
        # we have released belongs to a conversation that is over.
        if frame.channel and frame.channel not in self.channels:
            log.debug("dropped a frame for closed channel {id}", id=frame.channel)
            return succeed(None)
        return super().process_frame(frame)

    def writer(self, frame: Frame) -> None:
        try:
            self.send_frame(frame)
        except Exception:
            # Frames are checked before they are queued, so this is a bug;
            # keep writing, but the stream may now be out of step.
            log.failure("could not write frame {frame}", frame=frame)
            if self.transport is not None:
                self.transport.abortConnection()
        self.outgoing.get().addCallback(self.writer)

    def worker(self, queue: Any) -> None:
        d = self.dispatch(queue)
        d.addErrback(self._dispatch_failed)
        d.addCallback(self._next_work)

    def _next_work(self, _: object) -> None:
        self.work.get().addCallback(self.worker)

    def _dispatch_failed(self, failure: Failure) -> None:
        if failure.check(TxClosed, QueueClosed):
            log.debug("dropped an incoming message: its channel closed")
        else:
            log.failure("handling an incoming method failed", failure)

    # -- channels ------------------------------------------------------------

    def allocate_channel(self) -> AMQPChannel:
        """A channel object on the lowest free id, not yet opened."""
        if self.closed:
            raise ConnectionClosedError(None, "connection closed")
        for id in range(1, self.channel_max + 1):
            if id not in self.channels:
                ch = self.channelFactory(id, self.outgoing, self)
                self.channels[id] = ch
                return ch
        raise AMQPError(f"all {self.channel_max} channels are in use")

    # -- closing -------------------------------------------------------------

    def do_close(self, reason: Any) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        # txAMQP iterates over self.channels while closing channels, which
        # now remove themselves from it.
        for ch in list(self.channels.values()):
            ch.close(reason)
        for q in self.queues.values():
            q.close()
        self.delegate.close(reason)

    def shutdown(self, timeout: float) -> Deferred[None]:
        """connection.close, then drop the transport; fires once it is gone."""
        if self.lost_reason is not None:
            return succeed(None)
        lost = self.when_lost()
        ch0 = self.channels.get(0)
        if self.closed or ch0 is None or not self.opened:
            self.do_close(ConnectionClosedError(200, "closed by client"))
            self.transport.loseConnection()
        else:
            call = ch0.connection_close(
                reply_code=200, reply_text="cyme closing", class_id=0, method_id=0
            )

            def finished(result: Any) -> None:
                if isinstance(result, Failure):
                    self.transport.abortConnection()
                self.do_close(ConnectionClosedError(200, "closed by client"))

            within(call, timeout, self.clock, "connection.close").addBoth(finished)
        return lost.addCallback(lambda _: None)

    def connectionLost(self, reason: Failure) -> None:
        self.lost_reason = reason
        try:
            super().connectionLost(reason)
        finally:
            waiters, self._lost_waiters = self._lost_waiters, []
            for d in waiters:
                d.callback(self._why_lost())

    def _why_lost(self) -> AMQPError:
        error = as_amqp_error(self.close_reason or self.lost_reason)
        if isinstance(error, ConnectionClosedError):
            return error
        return ConnectionClosedError(None, str(error))

    def when_lost(self) -> Deferred[AMQPError]:
        """Fires with the reason (an L{AMQPError}; news, not a failure) once
        the transport is disconnected."""
        if self.lost_reason is not None:
            return succeed(self._why_lost())
        d: Deferred[AMQPError] = Deferred()
        self._lost_waiters.append(d)
        return d


class AMQPProtocolFactory(Factory):
    """Builds L{AMQPProtocol}s for one broker address."""

    noisy = False

    def __init__(
        self,
        *,
        vhost: str = "/",
        heartbeat: int = 0,
        clock: Any,
        client_properties: dict[str, Any] | None = None,
    ) -> None:
        self.vhost = vhost
        self.heartbeat = heartbeat
        self.clock = clock
        self.client_properties = client_properties

    def buildProtocol(self, addr: Any) -> AMQPProtocol:
        protocol = AMQPProtocol(
            AMQPDelegate(),
            vhost=self.vhost,
            heartbeat=self.heartbeat,
            clock=self.clock,
            client_properties=self.client_properties,
        )
        protocol.factory = self
        return protocol
