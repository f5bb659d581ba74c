"""What carries the bus's bytes between branches: L{IBusTransport}.

Two implementations: L{cyme.cluster.transport.AMQPBusTransport} (RabbitMQ)
and L{cyme.cluster.memory.MemoryBusTransport} (one process, for tests and
the simulator); the bus (L{cyme.cluster.bus.Bus}) seals and opens what
they carry.
"""

from zope.interface import Attribute, Interface


class IBusTransport(Interface):
    """Carries the bytes of bus envelopes between branches."""

    connected = Attribute("True while messages can be sent.")

    def start(deliver, connection_changed):
        """Begin: C{deliver(body)} per message (bytes), C{connection_changed(bool)}."""

    def broadcast(body):
        """Send C{body} (bytes) to every branch, this one included."""

    def send(branch_id, body):
        """Send C{body} (bytes) to one branch."""

    def stop():
        """Stop; a Deferred that fires once done."""
