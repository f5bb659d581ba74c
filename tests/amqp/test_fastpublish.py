"""The direct encoding of basic.publish is byte for byte what the spec-driven
encoder writes, and refuses what it cannot encode."""

from twisted.trial.unittest import SynchronousTestCase
from txamqp.connection import Body, Frame, Header, Method

from cyme.amqp.fastpublish import encode_publish
from cyme.amqp.message import to_spec
from cyme.amqp.spec import load_spec
from cyme.amqp.wire import pack_frame


class EncodePublishTests(SynchronousTestCase):
    def reference(self, channel, exchange, key, body, properties, frame_max):
        spec = load_spec()
        basic = spec.classes.byname["basic"]
        publish = basic.methods.byname["publish"]
        frames = [
            Frame(channel, Method(publish, 0, exchange, key, False, False)),
            Frame(channel, Header(basic, 0, len(body), **to_spec(properties))),
        ]
        chunk = frame_max - 8
        frames += [Frame(channel, Body(body[i:i + chunk])) for i in range(0, len(body), chunk)]
        return b"".join(pack_frame(spec, f) for f in frames)

    def test_same_bytes_as_the_spec_encoder(self):
        properties = {
            "content_type": "application/json", "content_encoding": "utf-8",
            "headers": {"task": "cyme.webhook", "id": "x", "eta": None, "retries": 0,
                        "timelimit": [None, None], "expires": 1.5, "ok": True,
                        "nested": {"a": -7}},
            "delivery_mode": 2, "priority": 0, "correlation_id": "x",
            "reply_to": "cyme.results.b1",
        }
        body = "ünïcode body".encode("utf-8") * 3
        self.assertEqual(
            encode_publish(3, "tasks", "tasks", body, properties, 131072),
            self.reference(3, "tasks", "tasks", body, properties, 131072),
        )

    def test_large_bodies_are_split_into_frames(self):
        body = bytes(range(256)) * 100
        self.assertEqual(
            encode_publish(1, "", "q", body, {}, 4096),
            self.reference(1, "", "q", body, {}, 4096),
        )

    def test_empty_body(self):
        self.assertEqual(
            encode_publish(1, "ex", "rk", b"", {"content_type": "text/plain"}, 131072),
            self.reference(1, "ex", "rk", b"", {"content_type": "text/plain"}, 131072),
        )

    def test_unencodable_values_raise(self):
        self.assertRaises(ValueError, encode_publish, 1, "", "q", b"", {"bogus": 1}, 4096)
        self.assertRaises(ValueError, encode_publish, 1, "", "q", b"", {"priority": 300}, 4096)
        self.assertRaises(ValueError, encode_publish, 1, "x" * 256, "q", b"", {}, 4096)
        self.assertRaises(ValueError, encode_publish, 1, "", "q", b"",
                          {"headers": {"bad": object()}}, 4096)
