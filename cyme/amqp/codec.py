"""AMQP 0-9-1 field tables, in RabbitMQ's dialect (the one kombu speaks).

Pure functions from Python values to bytes and back; no txAMQP here.  The
type letters follow RabbitMQ's errata of the 0-9-1 spec rather than the spec
itself: ``s`` is a signed 16-bit integer (not a short string) and ``l`` a
signed 64-bit one.  A few letters are read for interoperability only:
py-amqp writes large integers as ``L`` and some stacks write ``U``, so both
decode as signed.

Encoding picks one letter per Python type::

    None -> V    bool -> t    int -> I (signed 32) or l (signed 64)
    float -> d   Decimal -> D  str -> S (UTF-8)   bytes -> x
    datetime -> T (whole seconds, naive values are taken as UTC)
    list/tuple -> A            dict -> F

Decoding returns ``str`` for ``S`` when it is valid UTF-8 (``bytes``
otherwise), ``bytes`` for ``x`` and timezone-aware UTC datetimes for ``T``.
"""

from __future__ import annotations

import calendar
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

__all__ = [
    "FieldTableError",
    "decode_table",
    "decode_value",
    "encode_table",
    "encode_value",
]

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class FieldTableError(ValueError):
    """A value that cannot be written to, or read from, a field table."""


class PartlyEncoded(dict):
    """
    A field table part of which is encoded already.

    Messages that repeat the same fields (Celery's task headers) encode
    them once: C{encoded} is the encoding of the fields named in C{fixed}.
    It is still a plain mapping for anyone who reads it.
    """

    def __init__(self, fixed: Mapping[str, Any], encoded: bytes, variable: Mapping[str, Any]):
        super().__init__(fixed)
        self.update(variable)
        self.fixed_encoding = encoded
        self.variable = variable


def encode_fields(table: Mapping[str, Any]) -> bytes:
    """The fields of C{table}, encoded, without the size prefix."""
    return b"".join(_encode_key(key) + encode_value(value, key) for key, value in table.items())


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    """Encode C{table} as a field table, its 32-bit size prefix included."""
    if isinstance(table, PartlyEncoded):
        body = table.fixed_encoding + encode_fields(table.variable)
        return struct.pack("!I", len(body)) + body
    body = b"".join(
        _encode_key(key) + encode_value(value, key)
        for key, value in (table or {}).items()
    )
    return struct.pack("!I", len(body)) + body


def encode_value(value: Any, key: object = None) -> bytes:
    """Encode one field value: its type letter followed by its payload.

    C{key} only names the culprit in error messages.
    """
    # bool before int: bool is an int subclass and must stay a boolean.
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if _INT32[0] <= value <= _INT32[1]:
            return struct.pack("!ci", b"I", value)
        if _INT64[0] <= value <= _INT64[1]:
            return struct.pack("!cq", b"l", value)
        raise FieldTableError(f"integer {value} for {key!r} needs more than 64 bits")
    if isinstance(value, float):
        return struct.pack("!cd", b"d", value)
    if isinstance(value, Decimal):
        return b"D" + _encode_decimal(value, key)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return struct.pack("!cI", b"S", len(data)) + data
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return struct.pack("!cI", b"x", len(data)) + data
    if isinstance(value, datetime):
        return struct.pack("!cQ", b"T", _epoch_seconds(value, key))
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, (list, tuple)):
        body = b"".join(encode_value(item, key) for item in value)
        return struct.pack("!cI", b"A", len(body)) + body
    raise FieldTableError(
        f"cannot put a {type(value).__name__} ({value!r}) in a field table"
        f" (key {key!r})"
    )


def decode_table(data: bytes, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Decode the field table (size prefix included) at C{offset}.

    @return: the table and the offset just past it.
    """
    (size,), offset = _unpack("!I", data, offset)
    end = offset + size
    _need(data, end)
    table: dict[str, Any] = {}
    while offset < end:
        (key_size,), offset = _unpack("!B", data, offset)
        _need(data, offset + key_size)
        key = bytes(data[offset : offset + key_size]).decode("utf-8", "replace")
        offset += key_size
        table[key], offset = decode_value(data, offset)
    if offset != end:
        raise FieldTableError("field table overruns its declared size")
    return table, end


def decode_value(data: bytes, offset: int) -> tuple[Any, int]:
    """Decode the typed field value at C{offset}.

    @return: the value and the offset just past it.
    """
    _need(data, offset + 1)
    letter = bytes(data[offset : offset + 1])
    offset += 1
    fixed = _FIXED.get(letter)
    if fixed is not None:
        fmt, convert = fixed
        (value,), offset = _unpack(fmt, data, offset)
        return convert(value), offset
    if letter == b"V":
        return None, offset
    if letter == b"S":
        raw, offset = _sized(data, offset)
        try:
            return raw.decode("utf-8"), offset
        except UnicodeDecodeError:
            return raw, offset
    if letter == b"x":
        return _sized(data, offset)
    if letter == b"F":
        return decode_table(data, offset)
    if letter == b"A":
        raw, offset = _sized(data, offset)
        items, position = [], 0
        while position < len(raw):
            item, position = decode_value(raw, position)
            items.append(item)
        return items, offset
    if letter == b"D":
        (scale, unscaled), offset = _unpack("!Bi", data, offset)
        return Decimal(unscaled).scaleb(-scale), offset
    raise FieldTableError(f"unknown field type {letter!r} at offset {offset - 1}")


def _identity(value: Any) -> Any:
    return value


def _timestamp(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# Fixed-size types: letter -> (struct format, conversion).
_FIXED = {
    b"t": ("!B", bool),
    b"b": ("!b", _identity),
    b"B": ("!B", _identity),
    b"s": ("!h", _identity),
    b"U": ("!h", _identity),
    b"u": ("!H", _identity),
    b"I": ("!i", _identity),
    b"i": ("!I", _identity),
    b"l": ("!q", _identity),
    b"L": ("!q", _identity),
    b"f": ("!f", _identity),
    b"d": ("!d", _identity),
    b"T": ("!Q", _timestamp),
}


def _encode_key(key: object) -> bytes:
    if not isinstance(key, str):
        raise FieldTableError(f"field table keys must be str, not {key!r}")
    data = key.encode("utf-8")
    if len(data) > 255:
        raise FieldTableError(f"field table key longer than 255 bytes: {key!r}")
    return struct.pack("!B", len(data)) + data


def _encode_decimal(value: Decimal, key: object) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise FieldTableError(f"cannot encode {value!r} (key {key!r})")
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    # A positive exponent has no scale to express it: fold it into the digits.
    scale = -exponent
    if scale < 0:
        unscaled *= 10 ** (-scale)
        scale = 0
    if scale > 255 or not _INT32[0] <= unscaled <= _INT32[1]:
        raise FieldTableError(f"decimal {value} out of range (key {key!r})")
    return struct.pack("!Bi", scale, unscaled)


def _epoch_seconds(value: datetime, key: object) -> int:
    seconds = calendar.timegm(value.utctimetuple())
    if seconds < 0:
        raise FieldTableError(f"timestamp before 1970 (key {key!r})")
    return seconds


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise FieldTableError("field table truncated")


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[tuple[Any, ...], int]:
    size = struct.calcsize(fmt)
    _need(data, offset + size)
    return struct.unpack_from(fmt, data, offset), offset + size


def _sized(data: bytes, offset: int) -> tuple[bytes, int]:
    (size,), offset = _unpack("!I", data, offset)
    _need(data, offset + size)
    return bytes(data[offset : offset + size]), offset + size
