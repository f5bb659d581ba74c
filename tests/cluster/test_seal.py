"""Sealing bus envelopes: what opens, and what is refused and why."""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.cluster.seal import MAX_BODY, FernetSeal, ISeal, OpenSeal, Unopened
from tests.cluster import KEY, new_key, seal

ENVELOPE = {"v": 2, "type": "request", "from": "b1", "ticket": "t", "method": "replica.merge",
            "args": {"replica": {"apps": {"foo": {"broker": {"password": "s3cret"}}}}}}


class FernetSealTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sender = seal(self.clock)
        self.receiver = seal(self.clock)

    def refused(self, body, receiver=None):
        """The reason C{receiver} (default: the test's) refuses C{body} for."""
        error = self.assertRaises(Unopened, (receiver or self.receiver).open, body)
        return error.reason

    def test_implements_the_interface(self):
        self.assertTrue(verifyObject(ISeal, self.sender))
        self.assertTrue(self.sender.sealed)
        self.assertEqual(self.sender.source, KEY.path)

    def test_opens_with_the_same_key_with_sender_id_and_date_inside(self):
        body = self.sender.close(ENVELOPE)
        opened = self.receiver.open(body)
        self.assertEqual({k: v for k, v in opened.items() if k not in ("id", "at")}, ENVELOPE)
        self.assertEqual(opened["at"], self.clock.seconds())
        self.assertEqual(len(opened["id"]), 32)
        self.assertNotEqual(self.sender.close(ENVELOPE), body)

    def test_nothing_in_clear_on_the_wire(self):
        body = self.sender.close(ENVELOPE)
        for secret in (b"s3cret", b"replica", b"b1", b"password"):
            self.assertNotIn(secret, body)
        self.assertEqual(sorted(json.loads(body)), ["sealed", "v"])

    def test_another_key_does_not_open_it(self):
        body = seal(self.clock, new_key()).close(ENVELOPE)
        self.assertEqual(self.refused(body), "unopened")

    def test_a_forged_token_does_not_open(self):
        for token in ("gAAAAABforged", "", 5, ["x"]):
            with self.subTest(token=token):
                body = json.dumps({"v": 2, "sealed": token}).encode()
                self.assertEqual(self.refused(body), "unopened")

    def test_a_tampered_envelope_does_not_open(self):
        sealed = json.loads(self.sender.close(ENVELOPE))
        token = sealed["sealed"]
        middle = len(token) // 2
        flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]
        body = json.dumps({"v": 2, "sealed": flipped}).encode()
        self.assertEqual(self.refused(body), "unopened")

    def test_a_replay_is_refused_within_the_window(self):
        body = self.sender.close(ENVELOPE)
        self.receiver.open(body)
        self.clock.advance(30)
        self.assertEqual(self.refused(body), "replayed")

    def test_an_old_envelope_is_refused(self):
        body = self.sender.close(ENVELOPE)
        self.clock.advance(60.5)
        self.assertEqual(self.refused(body), "expired")

    def test_clock_skew_within_the_window_is_accepted_either_way(self):
        ahead, behind = Clock(), Clock()
        ahead.advance(self.clock.seconds() + 59)
        behind.advance(self.clock.seconds() - 59)
        for clock in (ahead, behind):
            self.receiver.open(seal(clock).close(ENVELOPE))
        far = Clock()
        far.advance(self.clock.seconds() + 61)
        self.assertEqual(self.refused(seal(far).close(ENVELOPE)), "expired")

    def test_the_replay_memory_is_bounded_by_the_window(self):
        for _ in range(100):
            self.receiver.open(self.sender.close(ENVELOPE))
        self.assertEqual(len(self.receiver._seen), 100)
        self.clock.advance(61)
        self.receiver.open(self.sender.close(ENVELOPE))
        self.assertEqual(len(self.receiver._seen), 1)

    def test_an_unsealed_envelope_is_refused_saying_what_it_claims(self):
        error = self.assertRaises(Unopened, self.receiver.open, json.dumps(ENVELOPE).encode())
        self.assertEqual(error.reason, "unsealed")
        self.assertEqual(error.fields, {"sender": "b1", "protocol": 2})

    def test_garbage_is_undecodable(self):
        for body in (b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b" " * (MAX_BODY + 1),
                     "a str", b"[" * 100_000, b'{"a":' * 100_000):
            with self.subTest(body=body[:10]):
                self.assertEqual(self.refused(body), "undecodable")

    def test_a_sealed_payload_that_is_no_envelope_is_invalid(self):
        for payload in (b"[]", b'{"from": "b1", "id": "x"}', b'{"from": 1, "id": "x", "at": 0}',
                        b'{"from": "b1", "id": "x", "at": NaN}'):
            token = self.sender._fernet.encrypt_at_time(payload, int(self.clock.seconds()))
            body = json.dumps({"v": 2, "sealed": token.decode()}).encode()
            with self.subTest(payload=payload):
                self.assertEqual(self.refused(body), "invalid")

    def test_a_previous_key_still_opens_while_the_new_one_seals(self):
        new = new_key("new.key")
        rotated = seal(self.clock, new, KEY)
        # What a branch still on the old key says opens here...
        rotated.open(self.sender.close(ENVELOPE))
        # ...and what this one says is sealed with the new key.
        body = rotated.close(ENVELOPE)
        self.assertEqual(self.refused(body), "unopened")
        seal(self.clock, new).open(body)
        self.assertEqual(rotated.source, "new.key")

    def test_needs_a_key(self):
        self.assertRaises(ValueError, FernetSeal, [], self.clock)


class OpenSealTests(SynchronousTestCase):
    def test_plain_json_both_ways(self):
        bus = OpenSeal()
        self.assertTrue(verifyObject(ISeal, bus))
        self.assertFalse(bus.sealed)
        body = bus.close(ENVELOPE)
        self.assertEqual(json.loads(body), ENVELOPE)
        self.assertEqual(bus.open(body), ENVELOPE)

    def test_a_sealed_envelope_cannot_be_opened_without_a_key(self):
        body = seal(Clock()).close(ENVELOPE)
        self.assertEqual(self.assertRaises(Unopened, OpenSeal().open, body).reason, "unopened")
        self.assertEqual(self.assertRaises(Unopened, OpenSeal().open, b"[]").reason,
                         "undecodable")


class LogSafetyTests(SynchronousTestCase):
    def test_what_an_unsealed_envelope_claims_is_quoted_only_if_it_names_a_branch(self):
        receiver = seal(Clock())
        for sender in ("b1\nERROR forged log line", "x" * 100, 5, None):
            body = json.dumps({"v": 1, "type": "beat", "from": sender}).encode()
            with self.subTest(sender=sender):
                error = self.assertRaises(Unopened, receiver.open, body)
                self.assertEqual(error.fields, {"sender": None, "protocol": 1})
