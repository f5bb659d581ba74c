"""A ready (authenticated, vhost open) AMQP connection: a channel factory."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime

from .channel import Channel
from .errors import AMQPError
from .protocol import AMQPProtocol
from .timeouts import DEFAULT_TIMEOUT
from .url import BrokerURL

__all__ = ["Connection"]


class Connection:
    """One connection to the broker, as L{AMQPClientService} hands it out."""

    def __init__(
        self, protocol: AMQPProtocol, broker: BrokerURL, clock: IReactorTime
    ) -> None:
        self._protocol = protocol
        self._clock = clock
        self.broker = broker

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Connection to {self.broker} {state}>"

    @property
    def is_open(self) -> bool:
        return not self._protocol.closed and self._protocol.lost_reason is None

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said about itself (product, version, capabilities)."""
        return self._protocol.server_properties

    def channel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[Channel]:
        """Open a new channel."""
        try:
            raw = self._protocol.allocate_channel()
        except AMQPError:
            return fail()
        return Channel(raw, self._clock).open(timeout=timeout)

    def close(self, *, timeout: float = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Close cleanly (connection.close, at most C{timeout} s to answer);
        fires once the transport is gone."""
        return self._protocol.shutdown(timeout)

    def abort(self) -> None:
        """Drop the transport at once, as a network failure would."""
        if self._protocol.transport is not None:
            self._protocol.transport.abortConnection()

    def when_closed(self) -> Deferred[AMQPError]:
        """Fires with the reason (an L{AMQPError}) once the transport is gone."""
        return self._protocol.when_lost()
