"""
How deep an instance create goes: from the route to the spawned worker's
command line through at most 8 of cyme's functions (issue 8), the store,
the models and the listener helper aside.  A deeper path is a layer that
only passes a call on, which is what the restructure removed.

The branch is wired as makeService wires it (the cluster of one branch on
the in-memory bus, the supervisor subscribed to the store) on fakes and a
Clock; the stacks are taken where the desired state changes (the
supervisor's store listener) and where the launcher is asked to spawn.
"""

import os
import traceback

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import cyme
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.cluster.memory import MemoryBusNetwork
from tests.cluster import seal
from cyme.operations.cluster import build_cluster
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeControl, FakeLauncher, FakeProcessReactor
from cyme.supervision.supervisor import Supervisor

PACKAGE = os.path.dirname(cyme.__file__)
#: Not counted: the desired state itself and the helper that notifies.
ASIDE = (os.path.join(PACKAGE, "state") + os.sep, os.path.join(PACKAGE, "listeners.py"))


def cyme_functions(stack):
    """The names of cyme's own functions in C{stack}, outermost first."""
    return [
        f"{os.path.relpath(frame.filename, PACKAGE)}:{frame.name}"
        for frame in stack
        if frame.filename.startswith(PACKAGE + os.sep)
        and not frame.filename.startswith(ASIDE)
    ]


ROUTE = "api/routes.py:put_instance"


class RecordingSupervisor(Supervisor):
    def reconcile(self, change=None):
        self.chains.append(traceback.extract_stack()[:-1])
        return super().reconcile(change)


class RecordingLauncher(FakeLauncher):
    def spawn(self, protocol, argv, env, path, log_path):
        self.chains.append(traceback.extract_stack()[:-1])
        return super().spawn(protocol, argv, env, path, log_path)


class CreatePathTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        store = MemoryStore()
        root = self.mktemp()
        os.makedirs(root)
        self.launcher = RecordingLauncher(self.reactor)
        self.launcher.chains = []
        control = FakeControl(self.reactor)
        self.supervisor = RecordingSupervisor(
            store, control, self.reactor, root, hostname="h",
            python="/py", launcher=self.launcher,
        )
        self.supervisor.chains = []
        store.subscribe(self.supervisor.reconcile)
        local = LocalOperations(store, branch_id="b1", supervisor=self.supervisor,
                                control=control, clock=self.reactor)
        cluster, bus = build_cluster(
            local, MemoryBusNetwork(self.reactor).transport("b1"), self.reactor,
            ready_timeout=local.ready_timeout, seal=seal(self.reactor),
        )
        for service in (bus, self.supervisor):
            service.startService()
            self.addCleanup(service.stopService)
        self.reactor.advance(0)
        self.client = APIClient(BranchAPI(cluster, clock=Clock()).resource())

    def create(self, path):
        self.assertEqual(self.successResultOf(self.client.request("PUT", "/foo/")).code, 201)
        self.supervisor.chains.clear()
        response = self.successResultOf(self.client.request("PUT", path))
        self.assertEqual(response.code, 202)
        self.reactor.advance(0)
        [to_store] = self.supervisor.chains
        [to_spawn] = self.launcher.chains
        to_store = cyme_functions(to_store)
        # From the route's handler on (the test client and the resource
        # that hands the request to Klein are before the route).
        to_store = to_store[to_store.index(ROUTE):]
        # The recording subclasses stand for the listener and the spawn.
        return (to_store + ["supervision/supervisor.py:reconcile"],
                cyme_functions(to_spawn) + ["launcher:spawn"])

    def test_named_create_within_eight_functions(self):
        to_store, to_spawn = self.create("/foo/instances/!/w1/")
        self.assertEqual(to_store[-1], "supervision/supervisor.py:reconcile")
        self.assertEqual(to_spawn[0], "supervision/supervisor.py:converge")
        self.assertLessEqual(len(to_store) + len(to_spawn), 8, (to_store, to_spawn))

    def test_anonymous_create_within_eight_functions(self):
        to_store, to_spawn = self.create("/foo/instances/!/")
        self.assertLessEqual(len(to_store) + len(to_spawn), 8, (to_store, to_spawn))
