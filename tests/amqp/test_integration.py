"""cyme.amqp against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).

Skipped, with the reason, only when nothing listens there.  Each test uses
its own server-named exclusive queues and its own connection (named, so
that the broker-side close test closes only it).
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from cyme.amqp import (
    AMQPClientService,
    ChannelClosedError,
    ConnectionClosedError,
    ConsumerCancelled,
    IBrokerListener,
    PublishNacked,
    backoff_policy,
)

from tests.systemtools import need

HOST, PORT = "127.0.0.1", 5672
BROKER = f"amqp://guest:guest@{HOST}:{PORT}//"

HEADERS = {
    "none": None,
    "yes": True,
    "no": False,
    "neg": -42,
    "big": -(2**40),
    "expires": 1732760001.5,
    "list": [1, "two", None, [3.5]],
    "dict": {"nested": {"deep": True}, "n": None},
    "text": "ünïcode ✓",
    "raw": b"\x00\xff",
}
BODY = "Grüße aus Köln — 世界 ✓".encode("utf-8")


def unreachable() -> str | None:
    try:
        socket.create_connection((HOST, PORT), timeout=0.5).close()
    except OSError as e:
        return f"RabbitMQ is not reachable at {HOST}:{PORT}: {e}"
    return None


@implementer(IBrokerListener)
class Events:
    """Hands out Deferreds for the next connect / loss."""

    def __init__(self) -> None:
        self._next: dict[str, list[Deferred]] = {"connected": [], "lost": []}
        self.history: list[tuple[str, object]] = []

    def next(self, kind: str) -> Deferred:
        d: Deferred = Deferred()
        self._next[kind].append(d)
        return d

    def _fire(self, kind: str, value) -> None:
        self.history.append((kind, value))
        waiting, self._next[kind] = self._next[kind], []
        for d in waiting:
            d.callback(value)

    def broker_connected(self, connection):
        self._fire("connected", connection)

    def broker_lost(self, reason):
        self._fire("lost", reason)


def collect(count: int = 1):
    """A consumer callback and a Deferred of the first C{count} messages."""
    messages: list = []
    done: Deferred = Deferred()

    def on_message(message):
        messages.append(message)
        if len(messages) == count:
            done.callback(messages)

    return on_message, done


class BrokerTestCase(TestCase):
    timeout = 15

    def setUp(self):
        reason = unreachable()
        if reason:
            raise SkipTest(reason)
        self.name = f"cyme-test-{uuid.uuid4().hex[:10]}"
        self.events = Events()
        self.service = AMQPClientService(
            BROKER,
            reactor=reactor,
            connection_name=self.name,
            heartbeat=10,
            retry_policy=backoff_policy(initial=0.05, cap=0.5),
            close_timeout=2,
        )
        self.service.add_listener(self.events)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    @inlineCallbacks
    def exclusive_queue(self, channel, **kwargs):
        declared = yield channel.queue_declare("", exclusive=True, auto_delete=True, **kwargs)
        return declared.queue


class RoundTripTests(BrokerTestCase):
    @inlineCallbacks
    def test_publish_and_consume_intact(self):
        channel = yield self.service.open_channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        on_message, received = collect()
        yield channel.consume(queue, on_message)
        yield channel.publish(
            "",
            queue,
            BODY,
            headers=HEADERS,
            content_type="text/plain",
            content_encoding="utf-8",
            correlation_id="corr-1",
            reply_to="replies",
            delivery_mode=2,
        )
        [message] = yield received
        self.assertEqual(message.body, BODY)
        self.assertEqual(message.headers, HEADERS)
        self.assertEqual(message.content_type, "text/plain")
        self.assertEqual(message.content_encoding, "utf-8")
        self.assertEqual(message.correlation_id, "corr-1")
        self.assertEqual(message.reply_to, "replies")
        self.assertEqual(message.delivery_mode, 2)
        self.assertEqual(message.routing_key, queue)
        message.ack()
        # Acked: nothing left to redeliver.
        remaining = yield channel.queue_declare(queue, passive=True)
        self.assertEqual(remaining.message_count, 0)

    @inlineCallbacks
    def test_large_body_over_several_frames(self):
        channel = yield self.service.open_channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        body = ("é✓" * 100_000).encode("utf-8")  # 500 kB, several frames
        yield channel.publish("", queue, body)
        message = yield channel.get(queue, no_ack=True)
        self.assertEqual(message.body, body)

    @inlineCallbacks
    def test_get_from_empty_queue(self):
        channel = yield self.service.open_channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        self.assertIsNone((yield channel.get(queue)))

    @inlineCallbacks
    def test_message_from_py_amqp(self):
        """A message published by kombu's own client arrives intact."""
        try:
            import amqp
        except ImportError:
            raise SkipTest("py-amqp is not installed")
        channel = yield self.service.open_channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        on_message, received = collect()
        yield channel.consume(queue, on_message, no_ack=True)
        headers = {"clock": 3, "expires": time.time() + 1.0, "ticket": str(uuid.uuid4())}
        with amqp.Connection(f"{HOST}:{PORT}", connect_timeout=2) as other:
            other.connect()
            other_channel = other.channel()
            other_channel.basic_publish(
                amqp.Message(BODY, application_headers=headers, content_type="application/json"),
                exchange="",
                routing_key=queue,
            )
        [message] = yield received
        self.assertEqual(message.body, BODY)
        self.assertEqual(message.headers, headers)
        self.assertIsInstance(message.headers["expires"], float)


class ConfirmTests(BrokerTestCase):
    @inlineCallbacks
    def test_confirm_fires(self):
        channel = yield self.service.open_channel(timeout=5)
        yield channel.confirm_select()
        queue = yield self.exclusive_queue(channel)
        results = yield gatherResults(
            [channel.publish("", queue, b"%d" % i, timeout=5) for i in range(20)]
        )
        self.assertEqual(results, [None] * 20)
        declared = yield channel.queue_declare(queue, passive=True)
        self.assertEqual(declared.message_count, 20)

    @inlineCallbacks
    def test_unroutable_is_still_confirmed(self):
        channel = yield self.service.open_channel(timeout=5)
        yield channel.confirm_select()
        yield channel.publish("amq.direct", f"nobody-{uuid.uuid4()}", b"lost", timeout=5)

    @inlineCallbacks
    def test_nack_fails_publish(self):
        channel = yield self.service.open_channel(timeout=5)
        yield channel.confirm_select()
        queue = yield self.exclusive_queue(
            channel, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        yield self.assertFailure(channel.publish("", queue, b"refused", timeout=5), PublishNacked)
        self.assertTrue(channel.is_open)


class ChannelErrorTests(BrokerTestCase):
    @inlineCallbacks
    def test_channel_error_leaves_connection_usable(self):
        connection = yield self.service.whenConnected(timeout=5)
        channel = yield connection.channel()
        error = yield self.assertFailure(
            channel.queue_declare(f"missing-{uuid.uuid4()}", passive=True),
            ChannelClosedError,
        )
        self.assertEqual(error.reply_code, 404)
        self.assertFalse(channel.is_open)
        self.assertTrue(connection.is_open)
        again = yield connection.channel()
        yield self.exclusive_queue(again)

    @inlineCallbacks
    def test_consumer_hears_queue_deletion(self):
        channel = yield self.service.open_channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        consumer = yield channel.consume(queue, lambda message: None)
        stopped = consumer.when_stopped()
        yield channel.queue_delete(queue)
        reason = yield stopped
        self.assertIsInstance(reason, ConsumerCancelled)
        self.assertTrue(channel.is_open)


class ReconnectTests(BrokerTestCase):
    @inlineCallbacks
    def roundtrip(self, connection):
        channel = yield connection.channel(timeout=5)
        queue = yield self.exclusive_queue(channel)
        yield channel.publish("", queue, BODY)
        message = yield channel.get(queue, no_ack=True)
        self.assertEqual(message.body, BODY)

    @inlineCallbacks
    def test_reconnects_after_transport_drop(self):
        first = yield self.service.whenConnected(timeout=5)
        lost = self.events.next("lost")
        first.abort()
        reason = yield lost
        self.assertIsInstance(reason, ConnectionClosedError)
        # Lost, so this waits for the next connection.
        second = yield self.service.whenConnected(timeout=5)
        self.assertIsNot(first, second)
        self.assertEqual(
            self.events.history,
            [("connected", first), ("lost", reason), ("connected", second)],
        )
        yield self.roundtrip(second)

    @inlineCallbacks
    def test_reconnects_after_broker_closes_connection(self):
        rabbitmqctl = need("rabbitmqctl", "rabbitmq-server")
        first = yield self.service.whenConnected(timeout=5)
        out, err, code = yield getProcessOutputAndValue(
            rabbitmqctl,
            ["list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
            env=os.environ,
        )
        pids = [
            line.split(b"\t")[0]
            for line in out.splitlines()
            if self.name.encode() in line
        ]
        if code != 0 or len(pids) != 1:
            raise SkipTest(f"cannot find the connection with rabbitmqctl: {err!r}")
        lost = self.events.next("lost")
        closing = getProcessOutputAndValue(
            rabbitmqctl, ["close_connection", pids[0].decode(), "cyme test"], env=os.environ
        )
        reason = yield lost
        self.assertEqual(reason.reply_code, 320)
        self.assertIn("cyme test", reason.reply_text)
        second = yield self.service.whenConnected(timeout=5)
        self.assertIsNot(first, second)
        self.assertEqual(self.events.history[-1], ("connected", second))
        yield closing
        yield self.roundtrip(second)

    @inlineCallbacks
    def test_connects_by_host_name(self):
        service = AMQPClientService(
            f"amqp://guest:guest@localhost:{PORT}//", reactor=reactor, heartbeat=0
        )
        service.startService()
        self.addCleanup(service.stopService)
        connection = yield service.whenConnected(timeout=5)
        yield self.roundtrip(connection)

    @inlineCallbacks
    def test_stop_closes_connection(self):
        connection = yield self.service.whenConnected(timeout=5)
        closed = connection.when_closed()
        yield self.service.stopService()
        self.assertFalse(connection.is_open)
        reason = yield closed
        self.assertEqual(reason.reply_code, 200)
