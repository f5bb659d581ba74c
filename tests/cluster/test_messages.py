"""What a bus message may hold: envelopes, heartbeats and arguments checked."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster import messages
from cyme.cluster.messages import BadMessage

GOOD_BEAT = {
    "v": 2, "type": "beat", "from": "b2", "hello": True, "url": "https://b2.example:8443/",
    "instances": [["foo", "w1"]], "load": {"instances": 1, "loadavg": [0.5, 0.25, 0.0],
                                            "mem_available": 1024},
    "limits": {"max_instances": 10, "max_concurrency": 4}, "digest": "0123456789abcdef",
    "version": "0.1.0", "started": 1700000000.5, "inc": 1700000000501,
}


class BeatTests(SynchronousTestCase):
    def test_a_good_beat_passes_field_by_field(self):
        beat = messages.beat(GOOD_BEAT)
        self.assertEqual(beat, {k: GOOD_BEAT[k] for k in messages.BEAT})

    def test_missing_fields_take_their_defaults_and_unknown_ones_are_left_out(self):
        beat = messages.beat({"load": {"future": 1}, "limits": {"max_queues": 2},
                              "new_field": [1]})
        self.assertEqual(beat, {"url": None, "instances": [], "load": {}, "limits": {},
                                "digest": None, "version": None, "started": None,
                                "hello": False, "inc": 0})

    def test_odd_types_are_refused_naming_the_field(self):
        cases = {
            "url": ["javascript:alert(1)", "ftp://x/", "http://", "//host/", 5,
                    "http://h:99999/", "http://[::1/", "http://h/\n"],
            "instances": ["w1", [["foo"]], [[1, 2]], [["foo", "../x"]], [["foo", None]],
                          {"foo": "w1"}],
            "load": ["x", {"instances": "1"}, {"loadavg": "x"}, {"loadavg": [1, 2, 3, 4]},
                     {"loadavg": [float("nan")]}, {"mem_available": -1},
                     {"instances": True}],
            "limits": ["x", ["max_instances"], {"max_instances": "2"},
                       {"max_instances": True}, {"max_concurrency": 0}],
            "digest": [5, "x" * 65],
            "version": [5, ["0.1"], "x" * 65],
            "started": ["now", float("inf"), True],
            "hello": ["yes", 1],
            "inc": [-1, 1.5, "1", True],
        }
        for field, values in cases.items():
            for value in values:
                with self.subTest(field=field, value=value):
                    error = self.assertRaises(BadMessage, messages.beat,
                                              {**GOOD_BEAT, field: value})
                    self.assertTrue(error.field.startswith(field), error.field)

    def test_no_beat_at_all(self):
        for beat in ("x", [], None):
            self.assertRaises(BadMessage, messages.beat, beat)


class EnvelopeTests(SynchronousTestCase):
    def test_frames(self):
        good = [
            {"v": 2, "type": "bye", "from": "b1"},
            {"v": 2, "type": "request", "from": "b1", "ticket": "t", "method": "m",
             "args": {"a": 1}},
            {"v": 2, "type": "reply", "from": "b1", "ticket": "t", "result": [1]},
            {"v": 2, "type": "reply", "from": "b1", "ticket": "t", "status": 404,
             "error": {"error": "no"}},
        ]
        for envelope in good:
            self.assertIs(messages.envelope(envelope), envelope)
        bad = [
            {"v": 2, "type": "shout", "from": "b1"},
            {"v": 2, "type": "bye", "from": "../b1"},
            {"v": 2, "type": "bye", "from": 1},
            {"v": "2", "type": "bye", "from": "b1"},
            {"v": 2, "type": "request", "from": "b1", "ticket": ["t"], "method": "m"},
            {"v": 2, "type": "request", "from": "b1", "ticket": "t", "method": None},
            {"v": 2, "type": "reply", "from": "b1", "ticket": {"t": 1}},
            {"v": 2, "type": "reply", "from": "b1", "ticket": "t", "status": 200,
             "error": "no"},
            {"v": 2, "type": "reply", "from": "b1", "ticket": "t", "error": "no"},
        ]
        for envelope in bad:
            with self.subTest(envelope=envelope):
                self.assertRaises(BadMessage, messages.envelope, envelope)


class FieldsTests(SynchronousTestCase):
    def test_required_optional_and_ignored(self):
        spec = {"name": messages.text, "n": messages.optional(messages.number, 3)}
        self.assertEqual(messages.fields({"name": "x", "other": 1}, spec), {"name": "x", "n": 3})
        self.assertRaises(BadMessage, messages.fields, {"n": 1}, spec)
        self.assertRaises(BadMessage, messages.fields, {"name": 1}, spec)
        self.assertRaises(BadMessage, messages.fields, ["name"], spec)

    def test_a_default_is_never_shared(self):
        spec = {"args": messages.optional(messages.array, [])}
        first = messages.fields({}, spec)["args"]
        first.append(1)
        self.assertEqual(messages.fields({}, spec)["args"], [])
