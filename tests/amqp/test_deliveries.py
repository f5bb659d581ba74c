"""Deliveries assembled as their frames come (cyme.amqp.deliveries), broker-less.

A channel's messages keep their order whichever path their frames take,
and a consumer's message is whole however its body was cut in frames.
"""

from twisted.trial.unittest import SynchronousTestCase

from .test_protocol import Broker


class DeliveryOrderTests(SynchronousTestCase):
    def consume(self, broker, channel, seen, tag):
        d = channel.consume("q", lambda m: seen.append((tag, m.body)), no_ack=True)
        broker.pump.channel(channel.id).basic_consume_ok(consumer_tag=tag)
        consumer = self.successResultOf(d)
        consumer.when_stopped().addCallback(lambda _: seen.append((tag, "stopped")))
        return consumer

    def deliver(self, broker, channel, body, tag, delivery_tag):
        broker.pump.channel(channel.id).deliver(
            body, consumer_tag=tag, delivery_tag=delivery_tag, redelivered=False,
            exchange="", routing_key="q",
        )

    def test_order_kept_behind_frames_queued_on_the_channel(self):
        """
        While the broker's frames of one channel wait in line (here behind
        another channel's returned message, whose body is still coming),
        a delivery on that channel comes after them, not before.
        """
        broker = Broker(self)
        waiting, consuming = broker.channel(), broker.channel()
        seen = []
        self.consume(broker, consuming, seen, "gone")
        self.consume(broker, consuming, seen, "kept")
        broker.pump.pumpMethod(waiting.id, "basic", "return", reply_code=312,
                               reply_text="NO_ROUTE", exchange="ex", routing_key="rk")
        broker.pump.channel(consuming.id).basic_cancel(consumer_tag="gone")
        self.deliver(broker, consuming, b"first", "kept", 1)
        self.deliver(broker, consuming, b"second", "kept", 2)
        self.assertEqual(seen, [])
        broker.pump.pumpHeader(waiting.id, "basic", 0, 3)
        broker.pump.pumpBody(waiting.id, b"ret")
        self.assertEqual(seen, [("gone", "stopped"), ("kept", b"first"), ("kept", b"second")])
        self.deliver(broker, consuming, b"third", "kept", 3)
        self.assertEqual(seen[-1], ("kept", b"third"))

    def test_deliveries_on_two_channels_interleaved(self):
        """Frames of two channels' deliveries may interleave: each message
        is still whole, with its own properties."""
        broker = Broker(self)
        one, two = broker.channel(), broker.channel()
        seen = []
        self.consume(broker, one, seen, "one")
        self.consume(broker, two, seen, "two")
        pump = broker.pump
        for channel, tag in ((one, "one"), (two, "two")):
            pump.pumpMethod(channel.id, "basic", "deliver", consumer_tag=tag, delivery_tag=1,
                            redelivered=False, exchange="", routing_key="q")
        pump.pumpHeader(one.id, "basic", 0, 6)
        pump.pumpHeader(two.id, "basic", 0, 3)
        pump.pumpBody(one.id, b"abc")
        pump.pumpBody(two.id, b"xyz")
        pump.pumpBody(one.id, b"def")
        self.assertEqual(seen, [("two", b"xyz"), ("one", b"abcdef")])
