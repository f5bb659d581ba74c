"""Broker-less tests for cyme.amqp: framing, confirms, consumers, the service.

The broker is played by txAMQP's ``AMQPump`` (frames in, frames out) or by
raw bytes fed to the protocol, on a ``Clock``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from txamqp.connection import Body, Frame, Header, Method
from txamqp.testing import AMQPump
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cyme.amqp import (
    AMQPClientService,
    AMQPTimeout,
    BrokerURL,
    ChannelClosedError,
    Connection,
    ConnectionClosedError,
    ConsumerCancelled,
    IBrokerListener,
    PublishNacked,
    backoff_delay,
    backoff_policy,
    load_spec,
    parse_broker_url,
)
from cyme.amqp.protocol import AMQPDelegate, AMQPProtocol
from cyme.amqp.timeouts import within
from cyme.amqp.wire import pack_frame

TEXT = "Grüße, 世界! ✓ " * 3


def serve_handshake(pump: AMQPump, **server_properties: Any) -> None:
    """Play the broker's side of connection.start/tune/open."""
    ch0 = pump.channel(0)
    ch0.connection_start(
        version_major=0,
        version_minor=9,
        server_properties={"product": "FakeMQ", **server_properties},
        mechanisms="AMQPLAIN PLAIN",
        locales="en_US",
    )
    ch0.connection_tune(channel_max=2047, frame_max=131072, heartbeat=60)
    ch0.connection_open_ok()


def method_names(pump: AMQPump, channel: int) -> list[str]:
    return [
        f"{f.payload.method.klass.name}.{f.payload.method.name}"
        for f in pump.outgoing.get(channel, [])
        if isinstance(f.payload, Method)
    ]


class Broker:
    """A connected, authenticated protocol with a pump playing the broker."""

    def __init__(self, test: SynchronousTestCase, heartbeat: int = 0) -> None:
        self.test = test
        self.clock = Clock()
        self.protocol = AMQPProtocol(
            AMQPDelegate(), "/", heartbeat=heartbeat, clock=self.clock
        )
        self.pump = AMQPump()
        # txAMQP's reader checks transport.disconnecting, which AMQPump lacks.
        self.pump.disconnecting = False
        self.pump.connect(self.protocol)
        authenticated = self.protocol.authenticate("guest", "guest")
        serve_handshake(self.pump)
        test.successResultOf(authenticated)
        self.connection = Connection(self.protocol, BrokerURL(), self.clock)

    def channel(self):
        channel_id = min(set(range(1, 100)) - set(self.protocol.channels))
        d = self.connection.channel()
        self.pump.channel(channel_id).channel_open_ok()
        return self.test.successResultOf(d)

    def confirming_channel(self):
        channel = self.channel()
        d = channel.confirm_select()
        self.pump.channel(channel.id).confirm_select_ok()
        self.test.successResultOf(d)
        return channel

    def outgoing(self, channel: int) -> list[Frame]:
        return self.pump.outgoing.get(channel, [])

    def feed(self, *frames: Frame) -> None:
        """Send frames as bytes, through the protocol's own decoder."""
        spec = self.protocol.spec
        self.protocol.dataReceived(b"".join(pack_frame(spec, f) for f in frames))


def spec_method(klass: str, name: str, *args: Any) -> Method:
    return Method(load_spec().classes.byname[klass].methods.byname[name], *args)


class HandshakeTests(SynchronousTestCase):
    def test_protocol_header_is_0_9_1(self):
        protocol = AMQPProtocol(AMQPDelegate(), "/", clock=Clock())
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"AMQP\x00\x00\x09\x01")

    def test_start_ok_carries_credentials_and_capabilities(self):
        broker = Broker(self)
        start_ok = broker.outgoing(0)[0].payload
        self.assertEqual(start_ok.method.name, "start-ok")
        client_properties, mechanism, response, locale = start_ok.args
        self.assertEqual(mechanism, "AMQPLAIN")
        self.assertTrue(client_properties["capabilities"]["publisher_confirms"])
        self.assertEqual(client_properties["product"], "cyme")
        self.assertEqual(broker.protocol.server_properties["product"], "FakeMQ")
        self.assertEqual(broker.protocol.channel_max, 2047)

    def test_server_properties_with_any_field_types(self):
        """txAMQP choked on the V/A/d/l fields a broker may send."""
        clock = Clock()
        protocol = AMQPProtocol(AMQPDelegate(), "/", clock=clock)
        protocol.makeConnection(StringTransport())
        authenticated = protocol.authenticate("guest", "guest")
        start = spec_method(
            "connection",
            "start",
            0,
            9,
            {"cluster_name": None, "x": [1.5, -(2**40)], "ok": True},
            "AMQPLAIN",
            "en_US",
        )
        protocol.dataReceived(pack_frame(protocol.spec, Frame(0, start)))
        self.assertEqual(
            protocol.server_properties,
            {"cluster_name": None, "x": [1.5, -(2**40)], "ok": True},
        )
        self.assertNoResult(authenticated)
        protocol.connectionLost(ConnectionClosedError())
        self.failureResultOf(authenticated)


class BodyTests(SynchronousTestCase):
    """Bodies are bytes, sized in bytes, both ways."""

    def test_publish_non_ascii_body(self):
        broker = Broker(self)
        channel = broker.channel()
        body = TEXT.encode("utf-8")
        self.successResultOf(
            channel.publish(
                "ex",
                "rk",
                body,
                content_type="text/plain",
                headers={"none": None, "neg": -1, "f": 0.5, "l": [True, {"d": 1}]},
                reply_to="replies",
                correlation_id="c-1",
                delivery_mode=2,
            )
        )
        method, header, *bodies = broker.outgoing(channel.id)[-3:]
        self.assertEqual(method.payload.method.name, "publish")
        self.assertEqual(header.payload.size, len(body))
        self.assertEqual(b"".join(b.payload.content for b in bodies), body)
        self.assertEqual(
            header.payload.properties,
            {
                "content-type": "text/plain",
                "headers": {"none": None, "neg": -1, "f": 0.5, "l": [True, {"d": 1}]},
                "reply-to": "replies",
                "correlation-id": "c-1",
                "delivery-mode": 2,
            },
        )

    def test_large_body_is_split_in_frames(self):
        broker = Broker(self)
        broker.protocol.MAX_LENGTH = 4096
        channel = broker.channel()
        body = ("é" * 5000).encode("utf-8")
        channel.publish("", "q", body)
        frames = broker.outgoing(channel.id)
        bodies = [f.payload.content for f in frames if isinstance(f.payload, Body)]
        self.assertEqual(len(bodies), 3)
        self.assertTrue(all(len(b) <= 4096 - 8 for b in bodies))
        self.assertEqual(b"".join(bodies), body)

    def test_str_body_refused(self):
        broker = Broker(self)
        channel = broker.channel()
        self.assertRaises(TypeError, channel.publish, "", "q", "text")

    def test_bad_property_refused_before_sending(self):
        broker = Broker(self)
        channel = broker.channel()
        sent = len(broker.outgoing(channel.id))
        self.assertRaises(
            ValueError, channel.publish, "", "q", b"", headers={"k": object()}
        )
        self.assertRaises(ValueError, channel.publish, "", "q", b"", reply_to="x" * 256)
        self.assertEqual(len(broker.outgoing(channel.id)), sent)

    def test_receive_non_ascii_body_in_several_frames(self):
        """txAMQP decoded body frames to str and counted characters: a
        non-ASCII body never completed."""
        broker = Broker(self)
        channel = broker.channel()
        received = []
        consuming = channel.consume("q", received.append)
        broker.pump.channel(channel.id).basic_consume_ok(consumer_tag="ctag")
        consumer = self.successResultOf(consuming)
        self.assertEqual(consumer.tag, "ctag")

        body = TEXT.encode("utf-8")
        basic = load_spec().classes.byname["basic"]
        headers = {"clock": 3, "expires": 1732760001.5, "ticket": "t-1", "none": None}
        broker.feed(
            Frame(channel.id, spec_method("basic", "deliver", "ctag", 7, False, "ex", "rk")),
            Frame(
                channel.id,
                Header(basic, 0, len(body), **{"headers": headers, "content-type": "text/plain"}),
            ),
            Frame(channel.id, Body(body[:10])),
            Frame(channel.id, Body(body[10:])),
        )
        [message] = received
        self.assertEqual(message.body, body)
        self.assertEqual(message.headers, headers)
        self.assertEqual(message.content_type, "text/plain")
        self.assertEqual(message.delivery_tag, 7)
        self.assertEqual((message.exchange, message.routing_key), ("ex", "rk"))

        message.ack()
        ack = broker.outgoing(channel.id)[-1].payload
        self.assertEqual((ack.method.name, ack.args), ("ack", (7, False)))

    def test_delivery_in_same_read_as_consume_ok(self):
        broker = Broker(self)
        channel = broker.channel()
        received = []
        consuming = channel.consume("q", received.append, no_ack=True)
        basic = load_spec().classes.byname["basic"]
        broker.feed(
            Frame(channel.id, spec_method("basic", "consume-ok", "ctag")),
            Frame(channel.id, spec_method("basic", "deliver", "ctag", 1, False, "", "q")),
            Frame(channel.id, Header(basic, 0, 2)),
            Frame(channel.id, Body(b"hi")),
        )
        self.successResultOf(consuming)
        self.assertEqual([m.body for m in received], [b"hi"])

    def test_empty_body_is_bytes(self):
        broker = Broker(self)
        channel = broker.channel()
        received = []
        channel.consume("q", received.append, no_ack=True)
        broker.pump.channel(channel.id).basic_consume_ok(consumer_tag="c")
        broker.pump.channel(channel.id).deliver(
            b"", consumer_tag="c", delivery_tag=1, redelivered=False, exchange="", routing_key="q"
        )
        self.assertEqual(received[0].body, b"")


class ConfirmTests(SynchronousTestCase):
    def test_confirm_select(self):
        broker = Broker(self)
        channel = broker.channel()
        self.assertFalse(channel.confirming)
        d = channel.confirm_select()
        self.assertIn("confirm.select", method_names(broker.pump, channel.id))
        self.assertNoResult(d)
        broker.pump.channel(channel.id).confirm_select_ok()
        self.successResultOf(d)
        self.assertTrue(channel.confirming)

    def test_ack_and_multiple_ack(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        publishes = [channel.publish("", "q", b"%d" % i) for i in range(3)]
        for d in publishes:
            self.assertNoResult(d)
        broker.pump.channel(channel.id).basic_ack(delivery_tag=2, multiple=True)
        self.successResultOf(publishes[0])
        self.successResultOf(publishes[1])
        self.assertNoResult(publishes[2])
        broker.pump.channel(channel.id).basic_ack(delivery_tag=3, multiple=False)
        self.successResultOf(publishes[2])
        self.assertTrue(channel.is_open)
        self.assertFalse(broker.protocol.closed)

    def test_second_select_keeps_numbering(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        first = channel.publish("", "q", b"1")
        broker.pump.channel(channel.id).basic_ack(delivery_tag=1, multiple=False)
        self.successResultOf(first)
        d = channel.confirm_select()
        broker.pump.channel(channel.id).confirm_select_ok()
        self.successResultOf(d)
        second = channel.publish("", "q", b"2")
        broker.pump.channel(channel.id).basic_ack(delivery_tag=2, multiple=False)
        self.successResultOf(second)

    def test_nack(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        first = channel.publish("", "q", b"1")
        second = channel.publish("", "q", b"2")
        broker.pump.channel(channel.id).basic_nack(
            delivery_tag=1, multiple=False, requeue=False
        )
        self.failureResultOf(first, PublishNacked)
        self.assertNoResult(second)
        broker.pump.channel(channel.id).basic_ack(delivery_tag=2, multiple=False)
        self.successResultOf(second)
        self.assertTrue(channel.is_open)

    def test_confirm_timeout_keeps_channel(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        d = channel.publish("", "q", b"x", timeout=2)
        broker.clock.advance(2)
        self.failureResultOf(d, AMQPTimeout)
        self.assertTrue(channel.is_open)
        # The late verdict is harmless.
        broker.pump.channel(channel.id).basic_ack(delivery_tag=1, multiple=False)
        self.assertEqual(broker.clock.getDelayedCalls(), [])

    def test_channel_closed_by_broker_fails_pending(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        d = channel.publish("missing-exchange", "q", b"x")
        closed = channel.when_closed()
        broker.pump.channel(channel.id).channel_close(
            reply_code=404, reply_text="NOT_FOUND - no exchange", class_id=60, method_id=40
        )
        error = self.failureResultOf(d, ChannelClosedError).value
        self.assertEqual(error.reply_code, 404)
        self.assertEqual(self.successResultOf(closed).reply_code, 404)
        self.assertEqual(method_names(broker.pump, channel.id)[-1], "channel.close-ok")
        self.assertNotIn(channel.id, broker.protocol.channels)
        self.assertFalse(broker.protocol.closed)
        # Later calls fail cleanly, and a new channel works.
        self.failureResultOf(channel.queue_declare("q"), ChannelClosedError)
        self.assertTrue(broker.channel().is_open)

    def test_connection_lost_fails_pending(self):
        broker = Broker(self)
        channel = broker.confirming_channel()
        d = channel.publish("", "q", b"x")
        broker.pump.abortConnection()
        self.failureResultOf(d, ConnectionClosedError)
        self.assertFalse(channel.is_open)


class ChannelTests(SynchronousTestCase):
    def test_queue_declare(self):
        broker = Broker(self)
        channel = broker.channel()
        d = channel.queue_declare("", exclusive=True, arguments={"x-expires": 60000})
        declare = broker.outgoing(channel.id)[-1].payload
        self.assertEqual(declare.method.name, "declare")
        self.assertEqual(declare.args[-1], {"x-expires": 60000})
        broker.pump.channel(channel.id).queue_declare_ok(
            queue="amq.gen-1", message_count=0, consumer_count=0
        )
        self.assertEqual(self.successResultOf(d).queue, "amq.gen-1")

    def test_timeout_gives_up_channel(self):
        broker = Broker(self)
        channel = broker.channel()
        d = channel.queue_declare("q", timeout=3)
        broker.clock.advance(3)
        self.failureResultOf(d, AMQPTimeout)
        self.assertFalse(channel.is_open)
        self.assertEqual(method_names(broker.pump, channel.id)[-1], "channel.close")
        self.failureResultOf(channel.queue_declare("q"), ChannelClosedError)
        # Late replies are dropped without harming the connection; close-ok
        # frees the channel id.
        broker.pump.channel(channel.id).queue_declare_ok(
            queue="q", message_count=0, consumer_count=0
        )
        self.assertIn(channel.id, broker.protocol.channels)
        broker.pump.channel(channel.id).channel_close_ok()
        self.assertNotIn(channel.id, broker.protocol.channels)
        self.assertFalse(broker.protocol.closed)
        self.assertEqual(broker.clock.getDelayedCalls(), [])

    def test_frames_for_closed_channel_do_not_close_connection(self):
        broker = Broker(self)
        channel = broker.channel()
        self.successResultOf(self._close(broker, channel))
        broker.pump.channel(channel.id).deliver(
            b"late", consumer_tag="c", delivery_tag=1, redelivered=False,
            exchange="", routing_key="q",
        )
        self.assertFalse(broker.protocol.closed)
        self.assertTrue(broker.channel().is_open)

    def _close(self, broker, channel):
        d = channel.close()
        broker.pump.channel(channel.id).channel_close_ok()
        return d

    def test_close(self):
        broker = Broker(self)
        channel = broker.channel()
        self.successResultOf(self._close(broker, channel))
        self.assertFalse(channel.is_open)
        self.assertNotIn(channel.id, broker.protocol.channels)
        self.successResultOf(channel.close())

    def test_channel_ids_are_reused(self):
        broker = Broker(self)
        first = broker.channel()
        second = broker.channel()
        self.assertEqual((first.id, second.id), (1, 2))
        self._close(broker, first)
        self.assertEqual(broker.channel().id, 1)

    def test_get(self):
        broker = Broker(self)
        channel = broker.channel()
        d = channel.get("q")
        broker.pump.channel(channel.id).basic_get_empty()
        self.assertIsNone(self.successResultOf(d))
        d = channel.get("q", no_ack=True)
        body = TEXT.encode()
        broker.pump.pumpMethod(
            channel.id, "basic", "get-ok", delivery_tag=1, redelivered=True,
            exchange="", routing_key="q", message_count=0,
        )
        broker.pump.pumpHeader(channel.id, "basic", 0, len(body))
        broker.pump.pumpBody(channel.id, body)
        message = self.successResultOf(d)
        self.assertEqual((message.body, message.redelivered), (body, True))


class ConsumerTests(SynchronousTestCase):
    def consume(self, broker, channel, callback, tag="ctag"):
        d = channel.consume("q", callback)
        broker.pump.channel(channel.id).basic_consume_ok(consumer_tag=tag)
        return self.successResultOf(d)

    def deliver(self, broker, channel, body, tag="ctag", delivery_tag=1):
        broker.pump.channel(channel.id).deliver(
            body, consumer_tag=tag, delivery_tag=delivery_tag, redelivered=False,
            exchange="", routing_key="q",
        )

    def test_broker_cancel(self):
        broker = Broker(self)
        channel = broker.channel()
        consumer = self.consume(broker, channel, lambda m: None)
        stopped = consumer.when_stopped()
        broker.pump.channel(channel.id).basic_cancel(consumer_tag="ctag")
        self.assertIsInstance(self.successResultOf(stopped), ConsumerCancelled)
        self.assertFalse(consumer.active)
        self.assertTrue(channel.is_open)

    def test_cancel(self):
        broker = Broker(self)
        channel = broker.channel()
        consumer = self.consume(broker, channel, lambda m: None)
        d = consumer.cancel()
        broker.pump.channel(channel.id).basic_cancel_ok(consumer_tag="ctag")
        self.successResultOf(d)
        self.assertIsNone(self.successResultOf(consumer.when_stopped()))

    def test_channel_close_stops_consumer(self):
        broker = Broker(self)
        channel = broker.channel()
        consumer = self.consume(broker, channel, lambda m: None)
        broker.pump.channel(channel.id).channel_close(
            reply_code=404, reply_text="NOT_FOUND", class_id=50, method_id=10
        )
        error = self.successResultOf(consumer.when_stopped())
        self.assertEqual(error.reply_code, 404)

    def test_failing_callback_is_logged_and_consuming_goes_on(self):
        broker = Broker(self)
        channel = broker.channel()
        seen = []

        def callback(message):
            seen.append(message.body)
            if message.body == b"bad":
                raise RuntimeError("boom")
            if message.body == b"async-bad":
                return fail(RuntimeError("async boom"))
            return None

        self.consume(broker, channel, callback)
        for tag, body in enumerate([b"bad", b"async-bad", b"good"], 1):
            self.deliver(broker, channel, body, delivery_tag=tag)
        self.assertEqual(seen, [b"bad", b"async-bad", b"good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertFalse(broker.protocol.closed)

    def test_ack_after_channel_closed_is_harmless(self):
        broker = Broker(self)
        channel = broker.channel()
        received = []
        self.consume(broker, channel, received.append)
        self.deliver(broker, channel, b"x")
        broker.pump.abortConnection()
        received[0].ack()
        received[0].nack(requeue=False)


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.endpoint = PumpEndpoint()
        self.listener = RecordingListener()
        self.delays = []

        def policy(attempt):
            self.delays.append(attempt)
            return float(attempt)

        self.service = AMQPClientService(
            "amqp://guest:guest@broker.example:5672//",
            reactor=self.clock,
            endpoint=self.endpoint,
            heartbeat=0,
            retry_policy=policy,
            handshake_timeout=5,
            close_timeout=2,
            stable_after=10,
        )
        self.service.add_listener(self.listener)

    def connect(self):
        serve_handshake(self.endpoint.pumps[-1])
        return self.successResultOf(self.service.whenConnected())

    def test_interfaces(self):
        verifyObject(IStreamClientEndpoint, self.endpoint)
        verifyObject(IBrokerListener, self.listener)

    def test_connect(self):
        waiting = self.service.whenConnected()
        self.service.startService()
        self.assertNoResult(waiting)
        connection = self.connect()
        self.assertIs(self.successResultOf(waiting), connection)
        self.assertIs(self.service.connection, connection)
        self.assertEqual(self.listener.events, [("connected", connection)])
        # The vhost "//" means "/".
        open_method = self.endpoint.pumps[0].outgoing[0][-1].payload
        self.assertEqual((open_method.method.name, open_method.args[0]), ("open", "/"))

    def test_retry_with_backoff(self):
        self.endpoint.outcomes = [ConnectionRefusedError(), ConnectionRefusedError()]
        self.service.startService()
        self.assertEqual(self.delays, [1])
        self.clock.advance(1)
        self.assertEqual(self.delays, [1, 2])
        self.clock.advance(1.5)
        self.assertEqual(self.endpoint.pumps, [])
        self.clock.advance(0.5)
        self.connect()
        self.assertEqual(len(self.listener.events), 1)

    def test_reconnect_after_loss(self):
        self.service.startService()
        first = self.connect()
        self.clock.advance(20)
        self.endpoint.pumps[0].abortConnection()
        self.assertIsNone(self.service.connection)
        kind, error = self.listener.events[-1]
        self.assertEqual(kind, "lost")
        self.assertIsInstance(error, ConnectionClosedError)
        # A connection that was up for a while resets the backoff.
        self.assertEqual(self.delays, [1])
        self.clock.advance(1)
        second = self.connect()
        self.assertIsNot(first, second)
        self.assertEqual(self.listener.events[-1], ("connected", second))

    def test_flapping_connection_keeps_backing_off(self):
        self.service.startService()
        self.connect()
        self.endpoint.pumps[-1].abortConnection()
        self.clock.advance(1)
        self.connect()
        self.endpoint.pumps[-1].abortConnection()
        self.assertEqual(self.delays, [1, 2])

    def test_broker_closes_connection(self):
        self.service.startService()
        connection = self.connect()
        closed = connection.when_closed()
        pump = self.endpoint.pumps[0]
        pump.channel(0).connection_close(
            reply_code=320, reply_text="CONNECTION_FORCED - test", class_id=0, method_id=0
        )
        self.assertEqual(method_names(pump, 0)[-1], "connection.close-ok")
        self.assertEqual(self.successResultOf(closed).reply_code, 320)
        self.assertEqual(self.listener.events[-1][1].reply_code, 320)

    def test_handshake_timeout_aborts_and_retries(self):
        self.service.startService()
        self.clock.advance(5)
        self.assertTrue(self.endpoint.pumps[0].aborted)
        self.assertEqual(self.delays, [1])
        self.clock.advance(1)
        self.connect()

    def test_authentication_refused(self):
        self.service.startService()
        pump = self.endpoint.pumps[0]
        pump.channel(0).connection_start(
            version_major=0, version_minor=9, server_properties={},
            mechanisms="AMQPLAIN", locales="en_US",
        )
        pump.channel(0).connection_close(
            reply_code=403, reply_text="ACCESS_REFUSED", class_id=0, method_id=0
        )
        self.assertEqual(self.delays, [1])
        self.assertEqual(self.listener.events, [])

    def test_when_connected_timeout(self):
        self.endpoint.outcomes = [ConnectionRefusedError()] * 10
        self.service.startService()
        d = self.service.whenConnected(timeout=2.5)
        self.clock.advance(2.5)
        self.failureResultOf(d, AMQPTimeout)
        self.assertEqual(self.service._waiters, [])

    def test_stop_while_connecting(self):
        self.endpoint.outcomes = [ConnectionRefusedError()]
        self.service.startService()
        waiting = self.service.whenConnected()
        self.successResultOf(self.service.stopService())
        self.failureResultOf(waiting, CancelledError)
        self.failureResultOf(self.service.whenConnected(), CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_handshake(self):
        self.service.startService()
        stopped = self.service.stopService()
        self.assertTrue(self.endpoint.pumps[0].aborted)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_closes_cleanly(self):
        self.service.startService()
        self.connect()
        pump = self.endpoint.pumps[0]
        stopped = self.service.stopService()
        self.assertEqual(method_names(pump, 0)[-1], "connection.close")
        self.assertNoResult(stopped)
        pump.channel(0).connection_close_ok()
        self.successResultOf(stopped)
        self.assertFalse(pump.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Stopping on purpose is not "broker lost".
        self.assertEqual([e[0] for e in self.listener.events], ["connected"])

    def test_stop_gives_up_on_silent_broker(self):
        self.service.startService()
        self.connect()
        stopped = self.service.stopService()
        self.clock.advance(2)
        self.successResultOf(stopped)
        self.assertTrue(self.endpoint.pumps[0].aborted)

    def test_open_channel(self):
        self.service.startService()
        self.connect()
        d = self.service.open_channel()
        self.endpoint.pumps[0].channel(1).channel_open_ok()
        self.assertEqual(self.successResultOf(d).id, 1)

    def test_listener_added_late_hears_current_connection(self):
        self.service.startService()
        connection = self.connect()
        late = RecordingListener()
        self.service.add_listener(late)
        self.assertEqual(late.events, [("connected", connection)])

    def test_failing_listener_is_logged(self):
        self.service.add_listener(FailingListener())
        self.service.startService()
        self.connect()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.listener.events), 1)

    def test_heartbeat_timeout_drops_connection(self):
        service = AMQPClientService(
            "amqp://broker//", reactor=self.clock, endpoint=self.endpoint, heartbeat=5,
            retry_policy=lambda attempt: 1.0,
        )
        service.add_listener(self.listener)
        service.startService()
        serve_handshake(self.endpoint.pumps[0])
        self.clock.advance(15)
        self.assertTrue(self.endpoint.pumps[0].aborted)
        self.assertEqual(self.listener.events[-1][0], "lost")
        self.clock.advance(1)
        serve_handshake(self.endpoint.pumps[1])
        self.successResultOf(service.whenConnected())
        stopped = service.stopService()
        self.endpoint.pumps[1].channel(0).connection_close_ok()
        self.successResultOf(stopped)


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """Connects each protocol to a fresh AMQPump, or fails as told."""

    def __init__(self) -> None:
        self.outcomes: list[Exception] = []
        self.pumps: list[AMQPump] = []

    def connect(self, protocolFactory):
        if self.outcomes:
            return fail(self.outcomes.pop(0))
        protocol = protocolFactory.buildProtocol(None)
        pump = AMQPump()
        pump.connect(protocol)
        self.pumps.append(pump)
        return succeed(protocol)


@implementer(IBrokerListener)
class RecordingListener:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def broker_connected(self, connection):
        self.events.append(("connected", connection))

    def broker_lost(self, reason):
        self.events.append(("lost", reason))


@implementer(IBrokerListener)
class FailingListener:
    def broker_connected(self, connection):
        raise RuntimeError("listener bug")

    def broker_lost(self, reason):
        return None


class BackoffTests(SynchronousTestCase):
    def test_grows_exponentially_to_cap(self):
        delays = [
            backoff_delay(n, initial=0.1, factor=2, cap=1.0, rand=lambda: 0.0)
            for n in range(1, 7)
        ]
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])

    def test_a_broker_back_after_a_long_outage_is_found_within_5_s(self):
        for n in (10, 100, 10_000):
            self.assertEqual(backoff_delay(n, rand=lambda: 0.0), 5.0)
            self.assertEqual(backoff_delay(n, rand=lambda: 1.0), 2.5)

    def test_jitter_shortens_at_most_by_fraction(self):
        self.assertEqual(backoff_delay(3, initial=1, factor=2, jitter=0.5, rand=lambda: 1.0), 2.0)
        self.assertEqual(backoff_delay(3, initial=1, factor=2, jitter=0.5, rand=lambda: 0.5), 3.0)
        self.assertEqual(backoff_delay(3, initial=1, factor=2, jitter=0, rand=lambda: 1.0), 4.0)

    def test_no_attempt_no_wait(self):
        self.assertEqual(backoff_delay(0), 0.0)

    def test_huge_attempt_does_not_overflow(self):
        self.assertEqual(backoff_delay(10_000, cap=30, rand=lambda: 0.0), 30)

    def test_policy(self):
        policy = backoff_policy(initial=1, factor=3, cap=100, rand=lambda: 0.0)
        self.assertEqual([policy(n) for n in (1, 2, 3, 10)], [1, 3, 9, 100])

    def test_default_policy_is_jittered_within_bounds(self):
        policy = backoff_policy()
        for attempt in range(1, 30):
            delay = policy(attempt)
            base = min(5.0, 0.1 * 2 ** (attempt - 1))
            self.assertTrue(base / 2 <= delay <= base, (attempt, delay))


class WithinTests(SynchronousTestCase):
    def test_result_in_time(self):
        clock = Clock()
        source = Deferred()
        d = within(source, 5, clock, "thing")
        source.callback(42)
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout_leaves_source_alone(self):
        clock = Clock()
        source = Deferred()
        d = within(source, 5, clock, "thing")
        clock.advance(5)
        self.assertIn("thing", str(self.failureResultOf(d, AMQPTimeout).value))
        self.assertFalse(source.called)
        source.errback(RuntimeError("late"))  # dropped, not "unhandled"

    def test_cancel_stops_timer(self):
        clock = Clock()
        d = within(Deferred(), 5, clock, "thing")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])


class BrokerURLTests(SynchronousTestCase):
    def test_full(self):
        url = parse_broker_url("amqp://user:p%40ss@rabbit.example:5673/prod%2Fa")
        self.assertEqual(
            url,
            BrokerURL(host="rabbit.example", port=5673, userid="user", password="p@ss", vhost="prod/a"),
        )

    def test_default_vhost_spellings(self):
        for url in ("amqp://h//", "amqp://h/", "amqp://h", "amqp://h/%2F"):
            self.assertEqual(parse_broker_url(url).vhost, "/", url)

    def test_defaults(self):
        self.assertEqual(parse_broker_url("amqp://"), BrokerURL())
        self.assertEqual(parse_broker_url("amqps://h").port, 5671)

    def test_ipv6_and_heartbeat(self):
        url = parse_broker_url("pyamqp://[::1]:5672/v?heartbeat=15")
        self.assertEqual((url.host, url.port, url.heartbeat), ("::1", 5672, 15))

    def test_not_amqp(self):
        self.assertRaises(ValueError, parse_broker_url, "http://h/")
        self.assertRaises(ValueError, parse_broker_url, "amqp://h:notaport/")

    def test_password_is_masked(self):
        url = parse_broker_url("amqp://u:secret@h//")
        self.assertNotIn("secret", str(url))
        self.assertNotIn("secret", repr(url))
        self.assertIn("secret", url.to_url(with_password=True))
