"""The branch's broker connections: one reconnecting client per broker URL.

The remote control, the bus and the task service all talk to brokers; they
share this pool, so that a branch holds one connection per broker however
many of its parts use it, and a broker's faults stay with that broker's
users.  L{BrokerPool.on_connection} is the one place that runs a set-up on
every (re)connection and reports one that failed; L{BrokerPool.release}
closes a connection once nobody uses it.
"""

from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from .private import setup_failed
from .service import AMQPClientService, IBrokerListener


@implementer(IBrokerListener)
class _OnConnection:
    """Runs C{setup(connection)} on each connection, C{lost(reason)} on loss."""

    def __init__(self, setup, lost, what, log, locked):
        self._setup = setup
        self._lost = lost
        self._what = what
        self._log = log
        self._locked = locked

    def broker_connected(self, connection):
        d = defer.ensureDeferred(self._setup(connection))
        d.addErrback(lambda f: setup_failed(self._log, self._what, f, connection,
                                            locked=self._locked))

    def broker_lost(self, reason):
        if self._lost is not None:
            self._lost(reason)


class BrokerPool(service.MultiService):
    """
    URL -> L{AMQPClientService}, created on first use and run while the
    pool runs.
    """

    def __init__(self, reactor, make_client=None, connection_name="cyme branch", tls=None):
        """
        @param tls: how the certificates of C{amqps://} brokers are checked
            (a L{cyme.amqp.tls.BrokerTLS}; default: against the system's CAs).
        """
        super().__init__()
        self._reactor = reactor
        self._make_client = make_client or (
            lambda url: AMQPClientService(
                url, reactor=reactor, connection_name=connection_name, tls=tls
            )
        )
        self._clients = {}
        # Who uses each connection: the listeners of on_connection (given
        # back by release), and whether client() was asked for it (a user
        # that never gives it back).
        self._listeners = {}
        self._held = set()

    def client(self, url):
        """The client service of the broker at C{url}."""
        self._held.add(url)
        return self._client(url)

    def _client(self, url):
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self._make_client(url)
            client.setServiceParent(self)
        return client

    def urls(self):
        return list(self._clients)

    def connected(self, url):
        """Whether the connection to C{url} is up (None: the branch uses none)."""
        client = self._clients.get(url)
        return None if client is None else client.connection is not None

    def last_error(self, url):
        """Why the last attempt to connect to C{url} failed (None: it did not)."""
        client = self._clients.get(url)
        return None if client is None else client.last_error

    def on_connection(self, url, setup, lost=None, *, what, log, locked=None):
        """
        Run C{await setup(connection)} on every connection to C{url} (the
        current one too), and C{lost(reason)} when one is lost.

        A set-up that fails is logged as the set-up of C{what} and drops the
        connection, so that the client reconnects and the set-up runs again;
        C{locked} is the log line for an exclusive queue held elsewhere.
        """
        listener = _OnConnection(setup, lost, what, log, locked)
        self._listeners.setdefault(url, []).append(listener)
        self._client(url).add_listener(listener)
        return listener

    def release(self, url, listener):
        """
        C{listener} (from L{on_connection}) no longer uses C{url}: it hears
        of it no more, and once nobody uses the connection it is closed.
        Fires with whether it was (once it is), or kept for its other users.
        """
        client = self._clients.get(url)
        users = self._listeners.get(url, [])
        if listener in users:
            users.remove(listener)
        if client is None:
            return defer.succeed(False)
        client.remove_listener(listener)
        if users or url in self._held:
            return defer.succeed(False)
        del self._clients[url]
        self._listeners.pop(url, None)
        return defer.maybeDeferred(self.removeService, client).addCallback(lambda _: True)
