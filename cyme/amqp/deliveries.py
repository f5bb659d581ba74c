"""Deliveries assembled as their frames arrive, without txAMQP's queues.

txAMQP hands every incoming method to one worker through a DeferredQueue
per channel, and assembles a message's content with a generator that waits
on that queue for each frame: for a short message some thirty Deferreds
and about 350 microseconds, more than the bus then spends opening,
checking and answering it (a cluster listing is one delivery on each
branch and one reply per branch on the one asked: bench/ten_branches.py).
L{Deliveries} takes a basic.deliver and its header and body frames straight
from the frame reader and hands the whole message to the delegate's
C{basic_deliver}, as txAMQP's worker would.  It steps aside (the frame
goes txAMQP's way) while that channel still has frames queued there, so
that a channel's messages keep their order.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from txamqp.connection import Frame, Header, Method
from txamqp.content import Content
from txamqp.message import Message as TxMessage

from cyme import logs

log = Logger(observer=logs.observer)


class _Assembling:
    """A basic.deliver whose header and body frames are still coming."""

    __slots__ = ("channel", "method", "header", "chunks", "received")

    def __init__(self, channel: Any, method: Method) -> None:
        self.channel = channel
        self.method = method
        self.header: Header | None = None
        self.chunks: list[bytes] = []
        self.received = 0


class Deliveries:
    """The deliveries of one connection, handed to C{delegate.basic_deliver}."""

    def __init__(self, delegate: Any) -> None:
        self._delegate = delegate
        self._assembling: dict[int, _Assembling] = {}

    def take(self, frame: Frame, channel: Any) -> bool:
        """
        Handle C{frame}, received on C{channel} (None if released) if it
        is a delivery's; False if it is not, and it goes txAMQP's way.
        """
        payload = frame.payload
        assembling = self._assembling.get(frame.channel)
        if assembling is not None:
            return self._more(frame.channel, assembling, payload)
        if (
            isinstance(payload, Method)
            and payload.method.name == "deliver"
            and payload.method.klass.name == "basic"
            and channel is not None
            and not channel.closed
            and not channel.incoming.pending
        ):
            self._assembling[frame.channel] = _Assembling(channel, payload)
            return True
        return False

    def _more(self, channel_id: int, assembling: _Assembling, payload: Any) -> bool:
        if assembling.header is None:
            if not isinstance(payload, Header):
                # Not what the protocol says comes next: forget the
                # delivery, and let txAMQP see the frame (and object).
                del self._assembling[channel_id]
                log.warn("a delivery on channel {id} had no content header", id=channel_id)
                return False
            assembling.header = payload
        else:
            content = payload.content
            if isinstance(content, str):  # an empty body frame decodes as ""
                content = content.encode("utf-8")
            assembling.chunks.append(content)
            assembling.received += len(content)
        if assembling.received >= assembling.header.size:
            del self._assembling[channel_id]
            self._deliver(assembling)
        return True

    def _deliver(self, assembling: _Assembling) -> None:
        channel = assembling.channel
        if channel.closed:
            return  # as txAMQP's path drops what comes for a closed channel
        header = assembling.header
        content = Content(b"".join(assembling.chunks), [], dict(header.properties))
        method = assembling.method
        message = TxMessage(method.method, list(method.args), content)
        try:
            self._delegate.basic_deliver(channel, message)
        except Exception:
            log.failure("handling a delivery failed")
