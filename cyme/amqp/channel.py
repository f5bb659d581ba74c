"""Channels and consumers as cyme uses them: a deadline on every remote call.

L{Channel} wraps one txAMQP channel.  Every call that waits for the broker
takes a C{timeout} (seconds, L{DEFAULT_TIMEOUT} unless given; C{None} waits
forever); when a synchronous call times out, the channel is given up (its
late replies could no longer be paired with requests) and later calls fail
with L{ChannelClosedError}: open a new channel.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cyme import logs
from twisted.python.failure import Failure
from txamqp.content import Content

from .errors import AMQPError, AMQPTimeout, ChannelClosedError
from .fastpublish import publish_frames
from .message import Message, to_spec
from .rawchannel import AMQPChannel, to_message
from .timeouts import DEFAULT_TIMEOUT, within

__all__ = ["Channel", "Consumer", "QueueDeclared"]

log = Logger(observer=logs.observer)


@attrs.frozen
class QueueDeclared:
    """The broker's answer to queue.declare."""

    queue: str
    message_count: int
    consumer_count: int


class Channel:
    """One open AMQP channel."""

    def __init__(self, raw: AMQPChannel, clock: IReactorTime) -> None:
        self._raw = raw
        self._clock = clock

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Channel {self.id} {state}>"

    @property
    def id(self) -> int:
        return self._raw.id

    def basic_cancel(self, tag: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[None]:
        """basic.cancel of consumer C{tag}, which hears of nothing after."""
        return self._call("basic_cancel", timeout, consumer_tag=tag).addBoth(
            self._forget, tag
        )

    def _forget(self, result: Any, tag: str) -> Any:
        # A cancel that failed otherwise (a timeout) leaves the consumer on.
        if not isinstance(result, Failure) or result.check(ChannelClosedError):
            self._raw.forget_consumer(tag)
        return result

    def open(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred["Channel"]:
        """channel.open; fires with this channel once the broker opened it."""
        return self._call("channel_open", timeout).addCallback(lambda _: self)

    @property
    def is_open(self) -> bool:
        return not self._raw.closed

    @property
    def confirming(self) -> bool:
        """Whether publisher confirms are on (see L{confirm_select})."""
        return self._raw.confirms is not None

    def when_closed(self) -> Deferred[AMQPError]:
        """Fires with the reason once the channel is closed, for any reason."""
        return self._raw.when_closed()

    # -- setup ---------------------------------------------------------------

    def confirm_select(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Turn on publisher confirms: L{publish} then waits for the broker."""
        return self._call("confirm_select", timeout, nowait=False).addCallback(_none)

    def basic_qos(
        self,
        prefetch_count: int,
        *,
        prefetch_size: int = 0,
        global_: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[None]:
        return self._call(
            "basic_qos",
            timeout,
            prefetch_size=prefetch_size,
            prefetch_count=prefetch_count,
            global_=global_,
        ).addCallback(_none)

    def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[None]:
        return self._call(
            "exchange_declare",
            timeout,
            exchange=exchange,
            type=type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments or {},
        ).addCallback(_none)

    def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[QueueDeclared]:
        """Declare a queue; C{""} lets the broker name it (see the result)."""
        return self._call(
            "queue_declare",
            timeout,
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments or {},
        ).addCallback(
            lambda ok: QueueDeclared(ok.queue, ok.message_count, ok.consumer_count)
        )

    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[None]:
        return self._call(
            "queue_bind",
            timeout,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=arguments or {},
        ).addCallback(_none)

    def queue_delete(
        self,
        queue: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[int]:
        """Delete a queue; fires with the number of messages it held."""
        return self._call(
            "queue_delete",
            timeout,
            queue=queue,
            if_unused=if_unused,
            if_empty=if_empty,
        ).addCallback(lambda ok: ok.message_count)

    # -- messages ------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        mandatory: bool = False,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | int | None = None,
        message_id: str | None = None,
        timestamp: datetime | int | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[None]:
        """Publish C{body} (bytes: encode text yourself).

        With confirms on, fires once the broker has taken responsibility for
        the message and fails with L{PublishNacked} if it refuses, or with
        L{AMQPTimeout} after C{timeout}.  Otherwise fires once the message
        is queued for writing.
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"message bodies are bytes, not {body.__class__.__name__}")
        python_properties = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "headers": headers,
            "delivery_mode": delivery_mode,
            "priority": priority,
            "correlation_id": correlation_id,
            "reply_to": reply_to,
            "expiration": expiration,
            "message_id": message_id,
            "timestamp": timestamp,
            "type": type,
            "user_id": user_id,
            "app_id": app_id,
        }
        fast = self._publish_now(exchange, routing_key, bytes(body),
                                 dict(python_properties), mandatory, timeout)
        if fast is not None:
            return fast
        properties = to_spec(python_properties)
        content = Content(bytes(body), properties=properties)
        d = maybeDeferred(
            self._raw.basic_publish,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            content=content,
        )
        if not self.confirming:
            return d.addCallback(_none)
        # A late confirm cannot unsettle the channel, so a timeout here
        # leaves it open.
        return within(d, timeout, self._clock, f"publish confirm on channel {self.id}")

    def _publish_now(self, exchange, routing_key, body, properties, mandatory, timeout):
        """
        Write a publish's frames at once, bypassing txAMQP's per-frame
        objects, when nothing is queued before it (so order is kept);
        None when the ordinary path must take it.
        """
        raw = self._raw
        client = raw.client
        if (
            raw.closed
            or client.transport is None
            or not getattr(client, "opened", False)
            or client.outgoing.pending
        ):
            return None
        if isinstance(properties.get("expiration"), int):
            properties["expiration"] = str(properties["expiration"])
        frames = publish_frames(
            raw.id, exchange, routing_key, body,
            {k: v for k, v in properties.items() if v is not None},
            client.MAX_LENGTH, mandatory,
        )
        confirm = raw.confirms.expect() if raw.confirms is not None else None
        for frame in frames:
            client.transport.write(frame)
        client.reschedule_send_heartbeat()
        if confirm is None:
            return succeed(None)
        return within(confirm, timeout, self._clock, f"publish confirm on channel {self.id}")

    def consume(
        self,
        queue: str,
        on_message: Callable[[Message], Any],
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[Consumer]:
        """Start consuming C{queue}: C{on_message(message)} per delivery.

        C{on_message} may return a Deferred; its failures (and exceptions)
        are logged and do not stop the consumer.  Unless C{no_ack}, ack or
        nack each message (L{Message.ack}).
        """
        consumer = Consumer(self, queue, on_message)
        d = self._watch(
            self._raw.consume(
                consumer,
                queue=queue,
                consumer_tag=consumer_tag,
                no_ack=no_ack,
                exclusive=exclusive,
                arguments=arguments or {},
            ),
            timeout,
            "basic.consume",
        )
        return d.addCallback(consumer.started)

    def get(
        self, queue: str, *, no_ack: bool = False, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[Message | None]:
        """Fetch one message from C{queue}, or C{None} if it is empty."""

        def got(reply: Any) -> Message | None:
            if reply.method.name == "get-empty":
                return None
            return to_message(self._raw, reply)

        return self._call("basic_get", timeout, queue=queue, no_ack=no_ack).addCallback(got)

    def close(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Close the channel (a no-op if it is closed already)."""
        if not self.is_open:
            return succeed(None)
        d = self._call(
            "channel_close", timeout, reply_code=200, reply_text="bye", class_id=0, method_id=0
        )

        def closed(result: Any) -> None:
            if isinstance(result, Failure) and not result.check(ChannelClosedError):
                return result
            self._raw.close(ChannelClosedError(200, "closed by client"))
            return None

        return d.addBoth(closed)

    # -- plumbing ------------------------------------------------------------

    def _call(self, method: str, timeout: float | None, **fields: Any) -> Deferred[Any]:
        what = f"{method.replace('_', '.', 1)} on channel {self.id}"
        return self._watch(
            maybeDeferred(getattr(self._raw, method), **fields), timeout, what
        )

    def _watch(self, d: Deferred[Any], timeout: float | None, what: str) -> Deferred[Any]:
        def timed_out(failure: Failure) -> Failure:
            if failure.check(AMQPTimeout):
                log.warn("{what} timed out; giving up the channel", what=what)
                self._raw.abandon(failure.value)
            return failure

        return within(d, timeout, self._clock, what).addErrback(timed_out)


class Consumer:
    """One basic.consume on a L{Channel}."""

    def __init__(
        self, channel: Channel, queue: str, on_message: Callable[[Message], Any]
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.tag: str | None = None
        self.stop_reason: AMQPError | None = None
        self._on_message = on_message
        self._active = True
        self._stop_waiters: list[Deferred[AMQPError | None]] = []

    def __repr__(self) -> str:
        return f"<Consumer {self.tag} on {self.queue!r}>"

    @property
    def active(self) -> bool:
        return self._active

    def when_stopped(self) -> Deferred[AMQPError | None]:
        """Fires once the consumer is over: with C{None} after L{cancel},
        else with why (L{ConsumerCancelled}, L{ChannelClosedError}, ...)."""
        if not self._active:
            return succeed(self.stop_reason)
        d: Deferred[AMQPError | None] = Deferred()
        self._stop_waiters.append(d)
        return d

    def cancel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[None]:
        """basic.cancel; deliveries already on their way are still handed on."""
        if not self._active or not self.channel.is_open:
            return succeed(None)

        def cancelled(result: Any) -> Any:
            if isinstance(result, Failure) and not result.check(ChannelClosedError):
                return result
            self.consumer_stopped(None)
            return None

        return self.channel.basic_cancel(self.tag or "", timeout=timeout).addBoth(cancelled)

    # -- ConsumerSink --------------------------------------------------------

    def message_received(self, message: Message) -> None:
        try:
            result = self._on_message(message)
        except Exception:
            log.failure("consumer of {queue} failed on a message", queue=self.queue)
            return
        if isinstance(result, Deferred):
            result.addErrback(
                lambda f: log.failure(
                    "consumer of {queue} failed on a message", f, queue=self.queue
                )
            )

    def consumer_stopped(self, error: AMQPError | None) -> None:
        if not self._active:
            return
        self._active = False
        self.stop_reason = error
        if error is not None:
            log.info("consumer {tag} stopped: {error}", tag=self.tag, error=str(error))
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(error)

    def started(self, tag: str) -> Consumer:
        """basic.consume-ok came: the broker named this consumer C{tag}."""
        self.tag = tag
        return self


def _none(_: object) -> None:
    return None
