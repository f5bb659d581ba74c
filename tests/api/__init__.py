"""
Tests of the HTTP API, run against every L{IOperations}: one branch alone
(L{LocalOperations}) and a cluster of one branch on the in-memory bus
(L{ClusterOperations}).  A test mixin names the behaviour once;
L{against_every_ops} makes it a test case per implementation.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.memory import MemoryBusNetwork
from cyme.operations.cluster import build_cluster
from cyme.operations.local import LocalOperations
from tests.cluster import seal


def single_branch_cluster(local, clock):
    """
    The cluster operations of a cluster of one branch, C{local}, on the
    in-memory bus: C{(ops, bus)}, the bus a service to start.

    The one place these tests build a cluster: if the constructors of the
    bus or of L{ClusterOperations} change, only this function does.
    """
    network = MemoryBusNetwork(clock)
    return build_cluster(local, network.transport(local.branch_id), clock,
                         ready_timeout=local.ready_timeout, seal=seal(clock))


class LocalBranch:
    """The API of one branch alone."""

    def makeOps(self, store, **collaborators):
        """The operations to serve over C{store}: L{LocalOperations} arguments."""
        return LocalOperations(store, **collaborators)


class ClusterOfOneBranch:
    """The API of a cluster of one branch: every operation goes through the cluster layer."""

    def makeOps(self, store, **collaborators):
        local = LocalOperations(store, **collaborators)
        ops, bus = single_branch_cluster(local, collaborators.get("clock") or Clock())
        bus.startService()
        self.addCleanup(bus.stopService)
        return ops


def against_every_ops(namespace, *mixins):
    """
    For each C{XTestsMixin} of C{mixins}, add the test cases C{LocalXTests}
    and C{ClusterXTests} to C{namespace} (a module's C{globals()}).
    """
    for mixin in mixins:
        base = mixin.__name__.removesuffix("Mixin")
        for prefix, ops in [("Local", LocalBranch), ("Cluster", ClusterOfOneBranch)]:
            name = prefix + base
            case = type(name, (ops, mixin, SynchronousTestCase), {
                "__module__": namespace["__name__"], "__qualname__": name,
            })
            namespace[name] = case
