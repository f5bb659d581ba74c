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


def unpack_frame(spec: Spec, data: bytes) -> Frame:
    """Decode one whole frame; raise L{FrameError} if it is malformed."""
    if len(data) < _FRAME_HEAD.size + 1:
        raise FrameError("short frame")
    frame_type, channel, size = _FRAME_HEAD.unpack_from(data)
    payload = data[_FRAME_HEAD.size : _FRAME_HEAD.size + size]
    frame_end = spec.constants.bypyname["frame_end"].id
    if len(payload) != size or data[_FRAME_HEAD.size + size :] != bytes([frame_end]):
        raise FrameError("frame size and frame-end octet disagree")
    try:
        kind = pythonize(spec.constants.byid[frame_type].name)
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
    c = WireCodec(BytesIO(payload))
    klass = spec.classes.byid[c.decode_short()]
    method = klass.methods.byid[c.decode_short()]
    return Method(method, *[c.decode(field.type) for field in method.fields])


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
    c = WireCodec(BytesIO(payload))
    klass = spec.classes.byid[c.decode_short()]
    weight = c.decode_short()
    size = c.decode_longlong()
    present: list[bool] = []
    while True:
        word = c.decode_short()
        present.extend(bool(word & (1 << (15 - i))) for i in range(15))
        if not word & 1:
            break
    properties = {
        field.name: c.decode(field.type)
        for field, bit in zip(klass.fields, present)
        if bit
    }
    return Header(klass, weight, size, **properties)
