"""cyme.amqp.wire: the frames of every message consumed, read back as sent."""

from twisted.trial.unittest import SynchronousTestCase
from txamqp.connection import Frame, Header

from cyme.amqp import load_spec
from cyme.amqp.wire import FrameError, pack_frame, unpack_frame

from .test_protocol import spec_method


class DeliveryFrameTests(SynchronousTestCase):
    spec = load_spec()

    def round_trip(self, payload):
        return unpack_frame(self.spec, pack_frame(self.spec, Frame(3, payload))).payload

    def test_deliver_method(self):
        sent = spec_method("basic", "deliver", "ctag-é", 2**40 + 7, True, "ex.ü", "rk")
        method = self.round_trip(sent)
        self.assertEqual((method.method.klass.name, method.method.name), ("basic", "deliver"))
        self.assertEqual(method.args, ("ctag-é", 2**40 + 7, True, "ex.ü", "rk"))
        self.assertFalse(self.round_trip(spec_method("basic", "deliver", "", 1, False, "", "")
                                         ).args[2])

    def test_header_with_every_property(self):
        properties = {
            "content-type": "application/json", "content-encoding": "utf-8",
            "headers": {"clock": 3, "expires": 1.5, "none": None, "list": [1, "a"]},
            "delivery-mode": 2, "priority": 9, "correlation-id": "c" * 255,
            "reply-to": "r", "expiration": "60000", "message-id": "m",
            "timestamp": 1700000000, "type": "t", "user-id": "guest", "app-id": "cyme",
        }
        basic = self.spec.classes.byname["basic"]
        header = self.round_trip(Header(basic, 0, 12345, **properties))
        self.assertEqual((header.klass, header.weight, header.size), (basic, 0, 12345))
        self.assertEqual(header.properties, properties)

    def test_cut_header_is_a_frame_error(self):
        basic = self.spec.classes.byname["basic"]
        data = pack_frame(self.spec, Frame(3, Header(basic, 0, 1, **{"reply-to": "abcdef"})))
        # Announce a payload three bytes shorter: the reply-to runs past it.
        cut = data[:3] + (int.from_bytes(data[3:7], "big") - 3).to_bytes(4, "big") + \
            data[7:-4] + data[-1:]
        self.assertRaises(FrameError, unpack_frame, self.spec, cut)
