"""What the network does to a bus message in a simulated cluster.

L{Faults} sits in a L{cyme.cluster.memory.MemoryBusNetwork}: for every
message from one branch to another it says after how long it arrives
(a base latency and a random jitter) or that it is lost (dropped at
random, or the two branches are on two sides of a partition).  Its random
numbers come from the generator it is given, so that a run is the same
for the same seed.
"""


class Faults:
    """Latency, loss and partitions between branches."""

    def __init__(self, rng, *, latency=0.001, jitter=0.001, drop=0.0):
        self.rng = rng
        self.latency = latency
        self.jitter = jitter
        self.drop = drop
        self._side = {}

    def split(self, *groups):
        """Partition: the branches of each of C{groups} reach only each other."""
        self._side = {b: i + 1 for i, group in enumerate(groups) for b in group}

    def heal(self):
        """Every branch reaches every other again."""
        self._side = {}

    def apart(self, a, b):
        return self._side.get(a, 0) != self._side.get(b, 0)

    def route(self, sender, target):
        """The delay of a message from C{sender} to C{target}, or None: lost."""
        if self._side and self.apart(sender, target):
            return None
        if self.drop and self.rng.random() < self.drop:
            return None
        if not self.jitter:
            return self.latency
        return self.latency + self.rng.expovariate(1.0 / self.jitter)
