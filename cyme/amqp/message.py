"""Messages: basic properties by Python name, and the consumed-message object.

The 0-9-1 spec names properties with hyphens (``content-type``,
``reply-to``) and txAMQP silently drops names it does not know, so callers
use Python names (``content_type``, ``reply_to``) and this module maps them,
refusing unknown ones loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import attrs

from .codec import encode_table

__all__ = ["PROPERTY_NAMES", "Message", "Settler", "from_spec", "to_spec"]

#: Python name -> 0-9-1 spec name of every basic property.
PROPERTY_NAMES = {
    name.replace("-", "_"): name
    for name in (
        "content-type",
        "content-encoding",
        "headers",
        "delivery-mode",
        "priority",
        "correlation-id",
        "reply-to",
        "expiration",
        "message-id",
        "timestamp",
        "type",
        "user-id",
        "app-id",
    )
}
_PYTHON_NAMES = {spec: python for python, spec in PROPERTY_NAMES.items()}


def to_spec(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Python-named properties -> spec-named ones; C{None} means absent.

    Values are checked here, where the caller can see the error, rather
    than in txAMQP's writer, where a bad one would kill the connection.
    """
    unknown = set(properties) - set(PROPERTY_NAMES)
    if unknown:
        raise TypeError(f"unknown message properties: {sorted(unknown)}")
    result: dict[str, Any] = {}
    for name, value in properties.items():
        if value is None:
            continue
        if name == "headers":
            encode_table(value)
            value = dict(value)
        elif name == "timestamp" and isinstance(value, datetime):
            value = int(value.timestamp())
        elif name in ("delivery_mode", "priority"):
            if not 0 <= int(value) <= 255:
                raise ValueError(f"{name} must fit in an octet, not {value!r}")
            value = int(value)
        elif name == "expiration":
            # RabbitMQ wants the per-message TTL as a string of milliseconds.
            value = str(value)
        elif name != "timestamp":
            if not isinstance(value, str) or len(value.encode("utf-8")) > 255:
                raise ValueError(f"{name} must be a str of at most 255 bytes")
        result[PROPERTY_NAMES[name]] = value
    return result


def from_spec(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Spec-named properties (as txAMQP decodes them) -> Python-named ones."""
    return {_PYTHON_NAMES.get(name, name): value for name, value in properties.items()}


class Settler(Protocol):
    """What a message needs from its channel to be acked or rejected."""

    def settle(self, method: str, **fields: Any) -> None: ...


@attrs.frozen
class Message:
    """A message delivered to a consumer (or fetched with basic.get)."""

    body: bytes
    properties: Mapping[str, Any] = attrs.field(factory=dict)
    delivery_tag: int | None = None
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    consumer_tag: str | None = None
    _channel: Settler | None = attrs.field(
        default=None, eq=False, repr=False, alias="channel"
    )

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.get("headers") or {})

    @property
    def content_type(self) -> str | None:
        return self.properties.get("content_type")

    @property
    def content_encoding(self) -> str | None:
        return self.properties.get("content_encoding")

    @property
    def correlation_id(self) -> str | None:
        return self.properties.get("correlation_id")

    @property
    def reply_to(self) -> str | None:
        return self.properties.get("reply_to")

    @property
    def delivery_mode(self) -> int | None:
        return self.properties.get("delivery_mode")

    @property
    def message_id(self) -> str | None:
        return self.properties.get("message_id")

    def ack(self, multiple: bool = False) -> None:
        """Acknowledge (a no-op if the channel is gone: the broker requeues)."""
        self._settle("basic_ack", delivery_tag=self.delivery_tag, multiple=multiple)

    def nack(self, requeue: bool = True, multiple: bool = False) -> None:
        """Reject, putting the message back in its queue unless told not to."""
        self._settle(
            "basic_nack",
            delivery_tag=self.delivery_tag,
            multiple=multiple,
            requeue=requeue,
        )

    def reject(self, requeue: bool = True) -> None:
        self._settle("basic_reject", delivery_tag=self.delivery_tag, requeue=requeue)

    def _settle(self, method: str, **fields: Any) -> None:
        if self._channel is None or self.delivery_tag is None:
            raise ValueError("this message was not delivered by a channel")
        self._channel.settle(method, **fields)
