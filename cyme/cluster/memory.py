"""The bus in one process: several branches' transports on a memory network.

A fake shipped with the package, for tests of the cluster (and of anything
above it) without a broker: L{MemoryBusTransport} implements
L{cyme.cluster.interfaces.IBusTransport} as the AMQP one does, and the
L{MemoryBusNetwork} it sits on can cut a branch off and heal it.
"""

import collections
import json

from twisted.internet import defer
from zope.interface import implementer

from .interfaces import IBusTransport


class MemoryBusNetwork:
    """
    Several branches' bus transports in one process.

    Delivery goes through the clock (C{callLater(0)}), as the network
    would, never re-entrantly; C{partition(id)} cuts a branch off.
    C{sent} records C{(sender, type, method)} of every open envelope sent
    (C{(sender, "sealed", None)} for a sealed one), C{bodies} the bytes
    (unless C{record} is false: a simulation of hundreds of branches
    keeps no such list); C{received} counts the messages each branch
    received.  C{faults} (a L{cyme.cluster.faults.Faults}), if given, delays
    or loses messages between two branches.
    """

    def __init__(self, clock, *, faults=None, record=True):
        self.clock = clock
        self.faults = faults
        self.record = record
        self.transports = {}
        self.cut = set()
        self.sent = []
        self.bodies = []
        self.received = collections.Counter()
        self._observer = None

    def observe(self, observer):
        """
        Call C{observer(target, body)} with every message received until
        the function returned is called.
        """
        self._observer = observer

        def stop():
            self._observer = None
        return stop

    def transport(self, branch_id):
        """A new transport for branch C{branch_id} on this network."""
        t = MemoryBusTransport(self, branch_id)
        self.transports[branch_id] = t
        return t

    def seen(self, target, body):
        if self._observer is not None:
            self._observer(target, body)

    def partition(self, branch_id):
        self.cut.add(branch_id)

    def heal(self, branch_id):
        self.cut.discard(branch_id)

    def reconnect(self, branch_id):
        """Branch C{branch_id}'s connection to the broker drops and comes back."""
        self.transports[branch_id].reconnect()

    def deliver(self, sender, targets, body):
        """Carry C{body} (an envelope's bytes) from C{sender} to the branches C{targets}."""
        if not isinstance(body, bytes):
            raise TypeError("the bus carries bytes")
        if self.record:
            self.sent.append((sender, *_kind(body)))
            self.bodies.append(body)
        if sender in self.cut:
            return
        for target in targets:
            if target in self.cut:
                continue
            t = self.transports.get(target)
            if t is None or not t.running:
                continue
            delay = 0 if self.faults is None else self.faults.route(sender, target)
            if delay is not None:
                self.clock.callLater(delay, t.receive, body)


def _kind(body):
    """The type and method of an open envelope; C{("sealed", None)} else."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(envelope, dict) or "sealed" in envelope:
        return "sealed", None
    return envelope.get("type"), envelope.get("method")


@implementer(IBusTransport)
class MemoryBusTransport:
    """One branch's end of a L{MemoryBusNetwork}."""

    def __init__(self, network, branch_id):
        self.network = network
        self.branch_id = branch_id
        self.connected = False
        self.running = False
        self._deliver = None
        self._changed = None

    def start(self, deliver, connection_changed):
        self._deliver = deliver
        self._changed = connection_changed
        self.running = True
        self.connected = True
        self.network.clock.callLater(0, connection_changed, True)

    def reconnect(self):
        """The connection drops (as the broker sees it) and comes back on the next turn."""
        self.connected = False
        self._changed(False)
        self.connected = True
        self.network.clock.callLater(0, self._changed, True)

    def receive(self, body):
        """An envelope's bytes arrived."""
        if self.running:
            self.network.received[self.branch_id] += 1
            self.network.seen(self.branch_id, body)
            self._deliver(body)

    def broadcast(self, body):
        self.network.deliver(self.branch_id, list(self.network.transports), body)

    def send(self, branch_id, body):
        self.network.deliver(self.branch_id, [branch_id], body)

    def stop(self):
        self.running = False
        self.connected = False
        return defer.succeed(None)
