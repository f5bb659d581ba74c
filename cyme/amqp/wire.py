"""Frames to bytes and back, with cyme's field tables and byte-exact bodies.

txAMQP builds its own ``Codec`` inside every payload class, and that codec
writes only str/unsigned-int tables, reads only S/I/F/t, decodes bodies to
str "opportunistically" and sizes strings in characters.  Rather than patch
txAMQP's module globals, cyme's protocol packs and unpacks every frame here
with L{WireCodec}; txAMQP's payload classes (Method, Header, Body,
Heartbeat) are kept as plain data carriers, so the rest of txAMQP (channels,
content assembly, ``txamqp.testing.AMQPump``) works unchanged.
"""

from __future__ import annotations

import functools
import struct
from io import BytesIO
from typing import Any

from twisted.logger import Logger

from cyme import logs
from txamqp.codec import Codec
from txamqp.connection import Body, Frame, Header, Heartbeat, Method
from txamqp.spec import Spec, pythonize

from .codec import FieldTableError, decode_table, encode_table

__all__ = ["FrameError", "WireCodec", "pack_frame", "pack_payload", "unpack_frame"]

log = Logger(observer=logs.observer)

_FRAME_HEAD = struct.Struct("!BHI")


class FrameError(ValueError):
    """Bytes that are not a well-formed frame of the loaded spec."""


class WireCodec(Codec):
    """txAMQP's codec with complete field tables and byte-sized strings."""

    def enc_str(self, fmt: str, s: Any) -> None:
        # Size the encoded bytes, not the characters.
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        self.pack(fmt, len(data))
        self.write(data)

    def encode_table(self, tbl: Any) -> None:
        self.write(encode_table(tbl))

    def decode_table(self) -> dict[str, Any]:
        (size,) = struct.unpack("!I", self.read(4))
        raw = self.read(size)
        try:
            table, _ = decode_table(struct.pack("!I", size) + raw)
        except FieldTableError as e:
            # The table's size is known, so the frame stays readable: losing
            # one table beats dropping the connection and every consumer.
            log.warn("dropped an undecodable field table: {error}", error=str(e))
            return {}
        return table


def pack_payload(spec: Spec, payload: Any) -> bytes:
    """The bytes of a frame's payload (between its head and its end octet)."""
    if isinstance(payload, Method):
        return _pack_method(payload)
    if isinstance(payload, Header):
        return _pack_header(payload)
    if isinstance(payload, Body):
        content = payload.content
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if isinstance(payload, Heartbeat):
        return b""
    raise FrameError(f"cannot pack payload {payload!r}")


def pack_frame(spec: Spec, frame: Frame) -> bytes:
    payload = pack_payload(spec, frame.payload)
    frame_type = spec.constants.bypyname[frame.payload.type].id
    frame_end = spec.constants.bypyname["frame_end"].id
    return (
        _FRAME_HEAD.pack(frame_type, frame.channel, len(payload))
        + payload
        + bytes([frame_end])
    )


@functools.lru_cache(maxsize=8)
def _framing(spec: Spec) -> tuple[dict[int, str], bytes]:
    """The frame kinds of C{spec} by type octet, and its frame-end octet:
    looked up once, not for every frame."""
    kinds = {c.id: pythonize(c.name) for c in spec.constants.byid.values()}
    return kinds, bytes([spec.constants.bypyname["frame_end"].id])


def unpack_frame(spec: Spec, data: bytes) -> Frame:
    """Decode one whole frame; raise L{FrameError} if it is malformed."""
    if len(data) < _FRAME_HEAD.size + 1:
        raise FrameError("short frame")
    frame_type, channel, size = _FRAME_HEAD.unpack_from(data)
    payload = data[_FRAME_HEAD.size : _FRAME_HEAD.size + size]
    kinds, frame_end = _framing(spec)
    if len(payload) != size or data[_FRAME_HEAD.size + size :] != frame_end:
        raise FrameError("frame size and frame-end octet disagree")
    try:
        kind = kinds[frame_type]
    except KeyError:
        raise FrameError(f"unknown frame type {frame_type}") from None
    try:
        if kind == Frame.METHOD:
            return Frame(channel, _unpack_method(spec, payload))
        if kind == Frame.HEADER:
            return Frame(channel, _unpack_header(spec, payload))
        if kind == Frame.BODY:
            # Bodies stay bytes: decoding them made txAMQP count characters
            # and wait forever for the rest of a non-ASCII body.
            return Frame(channel, Body(bytes(payload)))
        if kind == Frame.HEARTBEAT:
            return Frame(channel, Heartbeat())
    except (KeyError, IndexError, struct.error, ValueError) as e:
        raise FrameError(f"malformed {kind} on channel {channel}: {e!r}") from e
    raise FrameError(f"unexpected frame type {kind}")


def _pack_method(payload: Method) -> bytes:
    buf = BytesIO()
    c = WireCodec(buf)
    method = payload.method
    c.encode_short(method.klass.id)
    c.encode_short(method.id)
    for field, value in zip(method.fields, payload.args):
        c.encode(field.type, value)
    c.flush()
    return buf.getvalue()


def _unpack_method(spec: Spec, payload: bytes) -> Method:
    class_id, method_id = _IDS.unpack_from(payload)
    method = spec.classes.byid[class_id].methods.byid[method_id]
    if (class_id, method_id) == _BASIC_DELIVER:
        return _unpack_deliver(method, payload)
    c = WireCodec(BytesIO(payload[_IDS.size :]))
    return Method(method, *[c.decode(field.type) for field in method.fields])


_IDS = struct.Struct("!HH")
_LONGLONG = struct.Struct("!Q")
_BASIC_DELIVER = (60, 60)


def _shortstr(payload: bytes, at: int) -> tuple[Any, int]:
    end = at + 1 + payload[at]
    if end > len(payload):
        raise FrameError("short string past the end of the method")
    data = payload[at + 1 : end]
    try:
        return data.decode(), end  # as txAMQP's codec: text when it decodes
    except UnicodeDecodeError:
        return data, end


def _unpack_deliver(method: Any, payload: bytes) -> Method:
    """basic.deliver, the method of every message consumed, read in one go
    (txAMQP's codec reads a byte at a time): consumer-tag, delivery-tag,
    redelivered, exchange, routing-key."""
    tag, at = _shortstr(payload, _IDS.size)
    (delivery_tag,) = _LONGLONG.unpack_from(payload, at)
    redelivered = bool(payload[at + 8] & 1)
    exchange, at = _shortstr(payload, at + 9)
    routing_key, _ = _shortstr(payload, at)
    return Method(method, tag, delivery_tag, redelivered, exchange, routing_key)


def _pack_header(payload: Header) -> bytes:
    buf = BytesIO()
    c = WireCodec(buf)
    fields = list(payload.klass.fields)
    unknown = set(payload.properties) - {f.name for f in fields}
    if unknown:
        raise FrameError(f"unknown properties {sorted(unknown)}")
    c.encode_short(payload.klass.id)
    c.encode_short(payload.weight)
    c.encode_longlong(payload.size)
    present = [payload.properties.get(f.name) is not None for f in fields]
    # Property flags: 15 presence bits per 16-bit word, high bit first; the
    # lowest bit says another flag word follows.
    for start in range(0, max(len(fields), 1), 15):
        word = 0
        for i, bit in enumerate(present[start : start + 15]):
            if bit:
                word |= 1 << (15 - i)
        if start + 15 < len(fields):
            word |= 1
        c.encode_short(word)
    for field, bit in zip(fields, present):
        if bit:
            c.encode(field.type, payload.properties[field.name])
    c.flush()
    return buf.getvalue()


def _unpack_header(spec: Spec, payload: bytes) -> Header:
    class_id, weight, size = _HEADER_HEAD.unpack_from(payload)
    klass = spec.classes.byid[class_id]
    at = _HEADER_HEAD.size
    present: list[bool] = []
    while True:
        (word,) = _SHORT.unpack_from(payload, at)
        at += _SHORT.size
        present.extend(bool(word & (1 << (15 - i))) for i in range(15))
        if not word & 1:
            break
    properties = {}
    for field, bit in zip(klass.fields, present):
        if bit:
            properties[field.name], at = _PROPERTY_READERS[field.type](payload, at)
    if at > len(payload):
        raise FrameError("properties past the end of the header")
    return Header(klass, weight, size, **properties)


# The property types of AMQP 0-9-1 (basic's use all of them), read with
# struct from the payload rather than a byte at a time by txAMQP's codec.
_HEADER_HEAD = struct.Struct("!HHQ")
_SHORT = struct.Struct("!H")
_LONG = struct.Struct("!I")


def _octet(payload: bytes, at: int) -> tuple[int, int]:
    return payload[at], at + 1


def _longlong(payload: bytes, at: int) -> tuple[int, int]:
    return _LONGLONG.unpack_from(payload, at)[0], at + _LONGLONG.size


def _table(payload: bytes, at: int) -> tuple[dict[str, Any], int]:
    (size,) = _LONG.unpack_from(payload, at)
    end = at + _LONG.size + size
    try:
        table, _ = decode_table(payload[at:end])
    except FieldTableError as e:
        # The table's size is known, so the frame stays readable (as
        # WireCodec.decode_table does).
        log.warn("dropped an undecodable field table: {error}", error=str(e))
        table = {}
    return table, end


_PROPERTY_READERS = {
    "shortstr": _shortstr, "octet": _octet, "table": _table, "timestamp": _longlong,
}
