"""Tests for cyme.amqp.codec: AMQP 0-9-1 field tables in RabbitMQ's dialect."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp.codec import (
    FieldTableError,
    decode_table,
    decode_value,
    encode_table,
    encode_value,
)


def roundtrip(table):
    data = encode_table(table)
    decoded, end = decode_table(data)
    assert end == len(data), (end, len(data))
    return decoded


def field(key: str, letter: bytes, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("!B", len(raw)) + raw + letter + payload


def table_bytes(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return struct.pack("!I", len(body)) + body


class RoundTripTests(SynchronousTestCase):
    def check(self, value):
        self.assertEqual(roundtrip({"k": value}), {"k": value})

    def test_void(self):
        self.check(None)

    def test_booleans(self):
        self.check(True)
        self.check(False)
        decoded = roundtrip({"t": True})["t"]
        self.assertIs(decoded, True)

    def test_integers(self):
        for value in (0, 1, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)):
            self.check(value)

    def test_floats(self):
        for value in (0.0, 1.5, -2.25, 1e300, 1732760000.123456):
            self.check(value)

    def test_decimals(self):
        for value in (Decimal("123.45"), Decimal("-0.001"), Decimal("0"), Decimal("42")):
            self.check(value)

    def test_decimal_with_positive_exponent(self):
        self.assertEqual(roundtrip({"d": Decimal("1E+3")})["d"], Decimal(1000))

    def test_timestamps(self):
        self.check(datetime(2024, 5, 17, 12, 30, 45, tzinfo=timezone.utc))

    def test_naive_timestamp_is_utc(self):
        decoded = roundtrip({"t": datetime(2024, 5, 17, 12, 30, 45)})["t"]
        self.assertEqual(decoded, datetime(2024, 5, 17, 12, 30, 45, tzinfo=timezone.utc))

    def test_strings(self):
        for value in ("", "plain", "ünïcödé ✓ 雪"):
            self.check(value)

    def test_bytes(self):
        self.check(b"\x00\xff\xfe binary")

    def test_lists(self):
        self.check([])
        self.check([1, "two", None, True, 2.5, [3, [4]], {"five": 5}])

    def test_tuple_decodes_as_list(self):
        self.assertEqual(roundtrip({"t": (1, 2)}), {"t": [1, 2]})

    def test_nested_tables(self):
        self.check({})
        self.check({"a": {"b": {"c": [None, {"d": -(2**40)}]}}, "e": "f"})

    def test_everything_at_once(self):
        table = {
            "none": None,
            "bool": False,
            "neg": -7,
            "big": 2**62,
            "float": -0.5,
            "dec": Decimal("3.14"),
            "when": datetime(2030, 1, 1, tzinfo=timezone.utc),
            "text": "é",
            "raw": b"\x01",
            "list": [1, [2], {"x": None}],
            "table": {"nested": True},
        }
        self.assertEqual(roundtrip(table), table)

    def test_empty_and_missing_table(self):
        self.assertEqual(encode_table({}), b"\x00\x00\x00\x00")
        self.assertEqual(encode_table(None), b"\x00\x00\x00\x00")
        self.assertEqual(decode_table(b"\x00\x00\x00\x00"), ({}, 4))


class EncodingTests(SynchronousTestCase):
    """The letter each Python type is written as."""

    def letter(self, value):
        return encode_value(value)[:1]

    def test_letters(self):
        self.assertEqual(self.letter(None), b"V")
        self.assertEqual(self.letter(True), b"t")
        self.assertEqual(self.letter(5), b"I")
        self.assertEqual(self.letter(-5), b"I")
        self.assertEqual(self.letter(2**31), b"l")
        self.assertEqual(self.letter(1.0), b"d")
        self.assertEqual(self.letter(Decimal("1.5")), b"D")
        self.assertEqual(self.letter("s"), b"S")
        self.assertEqual(self.letter(b"s"), b"x")
        self.assertEqual(self.letter(datetime.now(timezone.utc)), b"T")
        self.assertEqual(self.letter([]), b"A")
        self.assertEqual(self.letter({}), b"F")

    def test_exact_bytes(self):
        self.assertEqual(encode_value(-2), b"I\xff\xff\xff\xfe")
        self.assertEqual(encode_value("é"), b"S\x00\x00\x00\x02\xc3\xa9")
        self.assertEqual(encode_value(Decimal("-1.25")), b"D\x02\xff\xff\xff\x83")
        self.assertEqual(
            encode_table({"a": [True, None]}),
            b"\x00\x00\x00\x0a" + b"\x01a" + b"A\x00\x00\x00\x03" + b"t\x01V",
        )

    def test_integer_too_big(self):
        self.assertRaises(FieldTableError, encode_table, {"k": 2**63})
        self.assertRaises(FieldTableError, encode_table, {"k": -(2**63) - 1})

    def test_unsupported_type(self):
        error = self.assertRaises(FieldTableError, encode_table, {"k": object()})
        self.assertIn("'k'", str(error))
        self.assertRaises(FieldTableError, encode_table, {"k": {1, 2}})

    def test_bad_keys(self):
        self.assertRaises(FieldTableError, encode_table, {1: "x"})
        self.assertRaises(FieldTableError, encode_table, {"k" * 256: "x"})

    def test_decimal_out_of_range(self):
        self.assertRaises(FieldTableError, encode_table, {"k": Decimal(2**40)})
        self.assertRaises(FieldTableError, encode_table, {"k": Decimal("NaN")})


class DecodingTests(SynchronousTestCase):
    """Letters other clients and RabbitMQ itself write."""

    def decode(self, letter: bytes, payload: bytes):
        value, end = decode_value(letter + payload, 0)
        self.assertEqual(end, 1 + len(payload))
        return value

    def test_small_integers(self):
        self.assertEqual(self.decode(b"b", b"\xff"), -1)
        self.assertEqual(self.decode(b"B", b"\xff"), 255)
        # RabbitMQ's errata: "s" is a signed 16-bit integer, not a string.
        self.assertEqual(self.decode(b"s", b"\xff\xfe"), -2)
        self.assertEqual(self.decode(b"U", b"\xff\xfe"), -2)
        self.assertEqual(self.decode(b"u", b"\xff\xfe"), 65534)

    def test_32_and_64_bit_integers(self):
        self.assertEqual(self.decode(b"I", b"\xff\xff\xff\xff"), -1)
        self.assertEqual(self.decode(b"i", b"\xff\xff\xff\xff"), 2**32 - 1)
        self.assertEqual(self.decode(b"l", struct.pack("!q", -1000)), -1000)
        # py-amqp writes big integers as "L", signed.
        self.assertEqual(self.decode(b"L", struct.pack("!q", -(2**40))), -(2**40))

    def test_single_float(self):
        self.assertEqual(self.decode(b"f", struct.pack("!f", 0.5)), 0.5)

    def test_timestamp(self):
        self.assertEqual(
            self.decode(b"T", struct.pack("!Q", 86400)),
            datetime(1970, 1, 2, tzinfo=timezone.utc),
        )

    def test_long_string_not_utf8_stays_bytes(self):
        self.assertEqual(self.decode(b"S", b"\x00\x00\x00\x02\xff\xfe"), b"\xff\xfe")

    def test_unknown_letter(self):
        data = table_bytes(field("k", b"?", b""))
        self.assertRaises(FieldTableError, decode_table, data)

    def test_truncated(self):
        data = encode_table({"k": "value"})
        self.assertRaises(FieldTableError, decode_table, data[:-1])
        self.assertRaises(FieldTableError, decode_table, data[:2])

    def test_decode_at_offset(self):
        data = b"junk" + encode_table({"a": 1}) + b"tail"
        table, end = decode_table(data, 4)
        self.assertEqual(table, {"a": 1})
        self.assertEqual(data[end:], b"tail")

    def test_kombu_pidbox_headers(self):
        """Kombu's pidbox broadcast headers: an int clock, a float expires."""
        data = table_bytes(
            field("clock", b"I", struct.pack("!i", 42)),
            field("expires", b"d", struct.pack("!d", 1732760001.5)),
        )
        self.assertEqual(decode_table(data), ({"clock": 42, "expires": 1732760001.5}, len(data)))

    def test_kombu_task_headers(self):
        """Celery task headers as py-amqp writes them: V, A, t, L, S."""
        data = table_bytes(
            field("lang", b"S", b"\x00\x00\x00\x02py"),
            field("task", b"S", b"\x00\x00\x00\x07webhook"),
            field("eta", b"V", b""),
            field("timelimit", b"A", b"\x00\x00\x00\x02VV"),
            field("retries", b"I", struct.pack("!i", 0)),
            field("ignore_result", b"t", b"\x00"),
            field("big", b"L", struct.pack("!q", 2**40)),
        )
        table, _ = decode_table(data)
        self.assertEqual(
            table,
            {
                "lang": "py",
                "task": "webhook",
                "eta": None,
                "timelimit": [None, None],
                "retries": 0,
                "ignore_result": False,
                "big": 2**40,
            },
        )


class PyAMQPInteropTests(SynchronousTestCase):
    """Cross-check with py-amqp (kombu's codec), when it is installed."""

    def setUp(self):
        try:
            from amqp import serialization
        except ImportError:
            raise self.skipTest("py-amqp is not installed")
        self.serialization = serialization

    def test_py_amqp_reads_ours(self):
        table = {"clock": 7, "expires": 1.25, "none": None, "neg": -3, "l": [1, "a"]}
        data = encode_table(table)
        (decoded,), _ = self.serialization.loads("F", data, 0)
        self.assertEqual(decoded, table)

    def test_we_read_py_amqp(self):
        table = {
            "clock": 7,
            "expires": 1732760001.5,
            "none": None,
            "big": 2**40,
            "nested": {"l": [True, 2.5, "x"]},
            "dec": Decimal("1.5"),
        }
        data = self.serialization.dumps("F", [table])
        self.assertEqual(decode_table(data)[0], table)


class PartlyEncodedTests(SynchronousTestCase):
    def test_same_bytes_and_same_mapping_as_a_plain_table(self):
        from cyme.amqp.codec import PartlyEncoded, decode_table, encode_fields, encode_table

        fixed = {"lang": "py", "eta": None, "timelimit": [None, None], "retries": 0}
        variable = {"id": "x-1", "origin": "cyme@b1"}
        table = PartlyEncoded(fixed, encode_fields(fixed), variable)
        self.assertEqual(table, {**fixed, **variable})
        self.assertEqual(decode_table(encode_table(table))[0], {**fixed, **variable})
        self.assertEqual(len(encode_table(table)), len(encode_table(dict(table))))
