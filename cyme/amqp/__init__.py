"""cyme's AMQP adapter: everything the branch says to RabbitMQ goes through here.

It speaks through txAMQP and contains txAMQP's defects (missing spec file,
partial field tables, str bodies, no confirm handling, fragile error paths)
so that no other module ever touches txAMQP.  Start here:

- L{AMQPClientService}: a reconnecting connection (backoff with jitter),
  C{whenConnected()}, C{open_channel()}, L{IBrokerListener} notifications.
- L{BrokerPool}: one client service per broker URL, shared by the branch's
  parts; C{on_connection()} runs a set-up on every (re)connection.
- L{Connection}: a ready connection; C{channel()}, C{close()}.
- L{Channel}: declare/bind/publish/consume/get with a timeout on each call;
  publisher confirms with C{confirm_select()}.
- L{Message}: a consumed message (bytes body, headers, properties, ack/nack).
- L{BrokerTLS}: how C{amqps://} brokers are verified (certificate and host
  name, against the system's or a private CA); a refusal is L{TLSRefused}.
- L{cyme.amqp.codec}: AMQP 0-9-1 field tables (RabbitMQ's dialect).
"""

from cyme.backoff import backoff_delay, backoff_policy
from .channel import Channel, Consumer, QueueDeclared
from .codec import FieldTableError, decode_table, encode_table
from .connection import Connection
from .errors import (
    AMQPError,
    AMQPTimeout,
    ChannelClosedError,
    ConnectionClosedError,
    ConsumerCancelled,
    PublishNacked,
)
from .message import Message
from .pool import BrokerPool
from .service import AMQPClientService, IBrokerListener
from .spec import load_spec
from .timeouts import DEFAULT_TIMEOUT
from .tls import BrokerTLS, TLSRefused
from .url import BrokerURL, mask_passwords, parse_broker_url

__all__ = [
    "AMQPClientService",
    "AMQPError",
    "AMQPTimeout",
    "BrokerPool",
    "BrokerTLS",
    "BrokerURL",
    "Channel",
    "ChannelClosedError",
    "Connection",
    "ConnectionClosedError",
    "Consumer",
    "ConsumerCancelled",
    "DEFAULT_TIMEOUT",
    "FieldTableError",
    "IBrokerListener",
    "Message",
    "PublishNacked",
    "QueueDeclared",
    "TLSRefused",
    "backoff_delay",
    "backoff_policy",
    "decode_table",
    "encode_table",
    "load_spec",
    "mask_passwords",
    "parse_broker_url",
]
