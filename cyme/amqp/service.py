"""AMQPClientService: one broker connection, kept up for as long as it runs.

Modelled on Twisted's ``ClientService`` but written out because that one
cannot survive a connection that fails during the AMQP handshake (it gets a
disconnect notification in a state that has no transition for it).  The
service connects, authenticates, opens the vhost, and on any failure or
loss retries after a delay from its retry policy (exponential backoff with
jitter and a cap, see L{cyme.backoff}).  The attempt counter is reset
only by a connection that stayed up for C{stable_after} seconds, so a broker
that accepts and then drops connections is not hammered.

Listeners (L{IBrokerListener}) hear about every ready connection and every
loss: that is how the supervisor learns the broker was lost or revived.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger

from cyme import logs
from twisted.python.failure import Failure
from zope.interface import Interface

from cyme.backoff import backoff_policy
from cyme.listeners import Listeners
from .connection import Connection
from .errors import AMQPError, AMQPTimeout, as_amqp_error
from .protocol import AMQPProtocol, AMQPProtocolFactory, default_client_properties
from .timeouts import DEFAULT_TIMEOUT, within
from .tls import BrokerTLS, TLSRefused, tls_refusal
from .url import BrokerURL, parse_broker_url

__all__ = ["AMQPClientService", "IBrokerListener"]

log = Logger(observer=logs.observer)


class IBrokerListener(Interface):
    """Told when the broker connection comes and goes."""

    def broker_connected(connection: Connection) -> None:
        """A connection is ready (the first one, or one after a loss)."""

    def broker_lost(reason: AMQPError) -> None:
        """The ready connection was lost; the service is reconnecting."""


class AMQPClientService(Service):
    """Keeps one AMQP connection to C{broker} up while running."""

    def __init__(
        self,
        broker: str | BrokerURL,
        *,
        reactor: Any,
        heartbeat: int | None = None,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
        retry_policy: Callable[[int], float] | None = None,
        stable_after: float = 5.0,
        mechanism: str = "AMQPLAIN",
        connection_name: str | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        tls: BrokerTLS | None = None,
    ) -> None:
        """
        @param broker: an C{amqp://user:pass@host:port/vhost} URL, or parts.
        @param reactor: TCP, time and name resolution (injected: tests pass
            a fake one).
        @param heartbeat: AMQP heartbeat in seconds (0 turns it off); the
            URL's C{?heartbeat=}, else 30.
        @param retry_policy: C{attempt -> seconds} before attempt (1-based).
        @param endpoint: where to connect instead of the broker's host and
            port (tests).
        @param tls: how an C{amqps://} broker's certificate is verified
            (default: against the system's CAs).
        """
        self.broker = parse_broker_url(broker) if isinstance(broker, str) else broker
        self._reactor = reactor
        if heartbeat is None:
            heartbeat = self.broker.heartbeat if self.broker.heartbeat is not None else 30
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._policy = retry_policy or backoff_policy()
        self._stable_after = stable_after
        self._mechanism = mechanism
        self._endpoint = endpoint
        #: How an amqps:// broker's certificate is verified (L{BrokerTLS}).
        self.tls = tls if tls is not None else BrokerTLS()
        self._factory = AMQPProtocolFactory(
            vhost=self.broker.vhost,
            heartbeat=int(heartbeat),
            clock=self._reactor,
            client_properties=default_client_properties(connection_name),
        )
        # Each listener's two methods, so that one failing is logged alone.
        self._connected = Listeners("broker connected")
        self._lost_listeners = Listeners("broker lost")
        self._waiters: list[Deferred[Connection]] = []
        self._live: set[AMQPProtocol] = set()
        self._connection: Connection | None = None
        self._connecting: Deferred[Any] | None = None
        self._retry: Any = None
        self._attempts = 0
        self._connected_at = 0.0
        self._stopped = False
        #: Why the last attempt to connect failed; None once connected.
        self.last_error: str | None = None

    # -- public ------------------------------------------------------------

    @property
    def connection(self) -> Connection | None:
        """The ready connection, if there is one right now."""
        return self._connection

    def add_listener(self, listener: IBrokerListener) -> None:
        """Tell C{listener} about connections from now on (and about the
        current one, if any, right away)."""
        self._connected.add(listener.broker_connected)
        self._lost_listeners.add(listener.broker_lost)
        if self._connection is not None:
            self._connected.notify_one(listener.broker_connected, self._connection)

    def remove_listener(self, listener: IBrokerListener) -> None:
        self._connected.remove(listener.broker_connected)
        self._lost_listeners.remove(listener.broker_lost)

    def whenConnected(self, timeout: float | None = None) -> Deferred[Connection]:
        """The ready connection, or the next one.

        Fails with L{AMQPTimeout} after C{timeout} seconds (if given), and
        with C{CancelledError} when the service stops.
        """
        if self._connection is not None:
            return succeed(self._connection)
        if self._stopped:
            return fail(CancelledError("AMQP client service stopped"))
        d: Deferred[Connection] = Deferred(canceller=self._forget_waiter)
        self._waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self._reactor, onTimeoutCancel=self._timed_out)
        return d

    def open_channel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[Any]:
        """Wait (at most C{timeout}) for a connection, then open a channel."""
        return self.whenConnected(timeout).addCallback(
            lambda connection: connection.channel(timeout=timeout)
        )

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._stopped = False
        self._connect()

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires once every
        transport this service opened is gone."""
        super().stopService()
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(CancelledError("AMQP client service stopped"))
        closing = []
        connection, self._connection = self._connection, None
        if connection is not None:
            closing.append(connection.close(timeout=self._close_timeout))
        closing.extend(protocol.when_lost() for protocol in list(self._live))
        return gatherResults(closing, consumeErrors=True).addBoth(lambda _: None)

    # -- connecting ----------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        log.debug("connecting to AMQP broker {broker}", broker=str(self.broker))
        d = self._make_endpoint().connect(self._factory)
        self._connecting = d
        d.addCallback(self._handshake)
        d.addCallbacks(self._ready, self._attempt_failed)
        d.addErrback(lambda f: log.failure("AMQP client service failed", f))

    def _make_endpoint(self) -> IStreamClientEndpoint:
        if self._endpoint is not None:
            return self._endpoint
        from twisted.internet import endpoints

        host, port = self.broker.host, self.broker.port
        # IP literals skip name resolution (and its thread pool).
        if isIPAddress(host):
            endpoint = endpoints.TCP4ClientEndpoint(
                self._reactor, host, port, timeout=self._connect_timeout
            )
        elif isIPv6Address(host):
            endpoint = endpoints.TCP6ClientEndpoint(
                self._reactor, host, port, timeout=self._connect_timeout
            )
        else:
            endpoint = endpoints.HostnameEndpoint(
                self._reactor, host, port, timeout=self._connect_timeout
            )
        if self.broker.tls:
            # Verified or refused: a broker that fails the check is retried
            # over TLS, never spoken to in plain AMQP.
            endpoint = endpoints.wrapClientTLS(self.tls.client_options(host), endpoint)
        return endpoint

    def _handshake(self, protocol: AMQPProtocol) -> Deferred[AMQPProtocol]:
        self._live.add(protocol)
        protocol.when_lost().addCallback(lambda _: self._live.discard(protocol))
        authenticated = protocol.authenticate(
            self.broker.userid, self.broker.password, mechanism=self._mechanism
        )
        what = f"AMQP handshake with {self.broker.host}:{self.broker.port}"

        def failed(failure: Failure) -> Failure:
            if protocol.lost_reason is None:
                protocol.transport.abortConnection()
                return failure
            # The TLS layer's reason, which the AMQP one reduces to text.
            refused = tls_refusal(protocol.lost_reason, self.broker.host)
            return failure if refused is None else Failure(refused)

        return within(authenticated, self._handshake_timeout, self._reactor, what).addCallbacks(
            lambda _: protocol, failed
        )

    def _ready(self, protocol: AMQPProtocol) -> None:
        self._connecting = None
        if not self.running:
            protocol.shutdown(self._close_timeout)
            return
        connection = self._connection = Connection(protocol, self.broker, self._reactor)
        self.last_error = None
        self._connected_at = self._reactor.seconds()
        log.info(
            "connected to AMQP broker {host}:{port} (vhost {vhost})",
            host=self.broker.host,
            port=self.broker.port,
            vhost=self.broker.vhost,
        )
        protocol.when_lost().addCallback(self._lost, connection)
        # Listeners first: they keep standing state (consumers, "broker is
        # up" flags) that one-off waiters may rely on.
        self._connected.notify(connection)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(connection)

    def _attempt_failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self.running:
            return
        self._attempts += 1
        delay = self._policy(self._attempts)
        self.last_error = _describe(failure)
        # A refused certificate is the operator's to fix, not the network's.
        emit = log.error if failure.check(TLSRefused) else log.warn
        emit(
            "cannot connect to AMQP broker {host}:{port} (attempt {attempt}):"
            " {error}; retrying in {delay:.2f} s",
            host=self.broker.host,
            port=self.broker.port,
            attempt=self._attempts,
            error=self.last_error,
            delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._connect)

    def _lost(self, error: AMQPError, connection: Connection) -> None:
        if self._connection is not connection:
            # stopService let it go on purpose.
            return
        self._connection = None
        if self._reactor.seconds() - self._connected_at >= self._stable_after:
            self._attempts = 0
        self._attempts += 1
        delay = self._policy(self._attempts)
        log.warn(
            "lost AMQP broker {host}:{port}: {error}; reconnecting in {delay:.2f} s",
            host=self.broker.host,
            port=self.broker.port,
            error=str(error),
            delay=delay,
        )
        self._lost_listeners.notify(error)
        if self.running and self._connection is None and self._retry is None:
            self._retry = self._reactor.callLater(delay, self._connect)

    def _timed_out(self, result: Any, timeout: float) -> Failure:
        what = "waiting for the AMQP broker"
        if self.last_error is not None:
            what = f"{what} (last attempt: {self.last_error})"
        return Failure(AMQPTimeout(what, timeout))

    def _forget_waiter(self, d: Deferred[Connection]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)


def _describe(failure: Failure) -> str:
    if failure.check(AMQPError):
        return str(failure.value)
    if type(failure.value).__module__.startswith("txamqp"):
        return str(as_amqp_error(failure.value))
    return failure.getErrorMessage()
