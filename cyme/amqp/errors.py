"""The exceptions cyme's AMQP adapter raises, and translation from txAMQP's.

Callers catch these and never txAMQP's ``Closed`` family, whose payload is
sometimes a protocol message, sometimes a Twisted failure.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from txamqp.client import Closed as _TxClosed
from txamqp.queue import Closed as _QueueClosed

__all__ = [
    "AMQPError",
    "AMQPTimeout",
    "ChannelClosedError",
    "ConnectionClosedError",
    "ConsumerCancelled",
    "PublishNacked",
    "as_amqp_error",
]


class AMQPError(Exception):
    """Base of every error the AMQP adapter raises."""


class AMQPTimeout(AMQPError):
    """A remote call got no answer in time."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"{what}: no answer within {timeout:g} s")
        self.what = what
        self.timeout = timeout


class ChannelClosedError(AMQPError):
    """The channel is closed: by the broker (with a reply code), or by us."""

    def __init__(self, reply_code: int | None = None, reply_text: str = "") -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        if self.reply_code is None:
            return self.reply_text or "channel closed"
        return f"{self.reply_code} {self.reply_text}"


class ConnectionClosedError(ChannelClosedError):
    """The connection is gone, and every channel with it."""

    def __str__(self) -> str:
        return super().__str__() if self.reply_text else "connection closed"


class ConsumerCancelled(AMQPError):
    """The broker cancelled a consumer (e.g. its queue was deleted)."""


class PublishNacked(AMQPError):
    """The broker refused responsibility for a published message."""


def as_amqp_error(reason: Any) -> AMQPError:
    """Translate a txAMQP close reason (or failure) into an L{AMQPError}."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, AMQPError):
        return reason
    # txAMQP's Closed wraps the real reason as its only argument.
    if isinstance(reason, _TxClosed) and reason.args:
        return as_amqp_error(reason.args[0])
    if isinstance(reason, (_TxClosed, _QueueClosed)):
        return ChannelClosedError(None, "channel closed")
    method = getattr(reason, "method", None)
    if method is not None and hasattr(method, "klass"):
        code = _field(reason, "reply_code")
        text = _field(reason, "reply_text") or ""
        if method.klass.name == "connection":
            return ConnectionClosedError(code, text)
        return ChannelClosedError(code, text)
    if isinstance(reason, (ConnectionDone, ConnectionLost)):
        return ConnectionClosedError(None, str(reason) or type(reason).__name__)
    return ChannelClosedError(None, repr(reason))


def _field(message: Any, name: str) -> Any:
    try:
        return getattr(message, name)
    except (AttributeError, IndexError, KeyError):
        return None

