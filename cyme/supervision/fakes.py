"""In-memory fakes of what the supervisor drives, for tests.

``FakeControl`` implements L{IControl} over simulated worker nodes,
``FakeProcessReactor`` is a L{MemoryReactorClock} whose ``spawnProcess``
makes L{FakeProcess}es, ``FakeLauncher`` implements L{ILauncher} on it,
and ``FakeProcessTable`` implements L{IProcessTable} for adopted workers.
Time moves with ``advance()``.
"""

import signal

import attrs
from twisted.internet import defer, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from cyme.listeners import Listeners
from cyme.supervision.control import NotConnected, merged_replies
from cyme.supervision.interfaces import IControl, ILauncher, IProcessTable
from cyme.supervision.launcher import InertProcessTransport


@attrs.define
class FakeNode:
    """A simulated Celery worker as the remote control sees it."""

    name: str
    queues: list = attrs.field(factory=list)  # [{"name", "exchange": {"name"}, "routing_key"}]
    max: int = 1
    min: int = 1
    responsive: bool = True
    #: Acknowledges the changes it is told (add_consumer, autoscale, ...)
    #: but does not make them: Celery answers before it applies one.
    stubborn: bool = False
    #: Remote-control methods it does not answer (a busy pool misses stats).
    ignores: frozenset = frozenset()

    def queue_names(self):
        return [q["name"] for q in self.queues]


@implementer(IControl)
class FakeControl:
    """
    Remote control over L{FakeNode}s: nodes that are up and responsive
    answer at once (or after C{latency} seconds on the clock); a call that
    misses a node waits out its timeout on the clock, as the real one does.

    Like L{cyme.supervision.control.ControlRouter}, it sends a command to
    each broker once for all of that broker's nodes (one entry of C{sent}
    each), and each broker is connected or not on its own.  The
    C{celery_*} methods play Celery's own remote control (or Flower)
    changing a worker behind the supervisor's back.
    """

    DEFAULT = "amqp://default//"

    def __init__(self, clock, latency=0.0):
        self.clock = clock
        self.latency = latency
        self.nodes = {}
        self.sent = []
        #: Node -> the URL of its broker (as registered).
        self.brokers = {}
        #: Broker URL -> whether its connection is up (absent: up).
        self.links = {}
        self._listeners = Listeners("remote-control connection")

    @property
    def connected(self):
        return self.links.get(self.DEFAULT, True)

    # Test controls

    def up(self, node, queues=(), max=1, min=1):
        self.nodes[node] = FakeNode(
            node,
            [{"name": q, "exchange": {"name": q}, "routing_key": q} for q in queues],
            max,
            min,
        )
        return self.nodes[node]

    def down(self, node):
        self.nodes.pop(node, None)

    def set_connected(self, connected, broker=None):
        """The connection to C{broker} (default: every broker) is lost or back."""
        urls = [broker] if broker is not None else sorted(
            {self.DEFAULT, *self.brokers.values(), *self.links}
        )
        for url in urls:
            self.links[url] = connected
            self._listeners.notify(connected, url)

    def messages(self, method=None):
        return [m for m in self.sent if method is None or m[0] == method]

    def celery_cancel_consumer(self, node, queue_name):
        """C{celery control cancel_consumer}, not through cyme."""
        n = self.nodes[node]
        n.queues = [q for q in n.queues if q["name"] != queue_name]

    def celery_add_consumer(self, node, queue_name):
        """C{celery control add_consumer}, not through cyme."""
        n = self.nodes[node]
        n.queues = [q for q in n.queues if q["name"] != queue_name] + [
            {"name": queue_name, "exchange": {"name": queue_name},
             "routing_key": queue_name}
        ]

    def celery_autoscale(self, node, max_concurrency, min_concurrency):
        """C{celery control autoscale} (or Flower's), not through cyme."""
        n = self.nodes[node]
        n.max, n.min = max_concurrency, min_concurrency

    # IControl

    def add_connection_listener(self, listener):
        self._listeners.add(listener)

    def register(self, node, broker_url):
        self.brokers[node] = broker_url

    def unregister(self, node):
        self.brokers.pop(node, None)

    def broker(self, node):
        return self.brokers.get(node, self.DEFAULT)

    def reachable(self, node):
        return self.links.get(self.broker(node), True)

    def _call(self, method, nodes, timeout, reply, *args):
        groups = {}
        for name in sorted(set(nodes), key=list(nodes).index):
            groups.setdefault(self.broker(name), []).append(name)
        return merged_replies([
            self._send(method, group, timeout, reply, url, *args)
            for url, group in groups.items()
        ])

    def _send(self, method, nodes, timeout, reply, url, *args):
        self.sent.append((method, list(nodes), args))
        if not self.links.get(url, True):
            # As the real control says it: the command was not sent.
            return defer.fail(NotConnected("broker connection lost"))
        replies = {}
        for name in nodes:
            node = self.nodes.get(name)
            if node is not None and node.responsive and method not in node.ignores:
                replies[name] = reply(node)
        if len(replies) == len(set(nodes)) or timeout is None:
            if self.latency:
                return task.deferLater(self.clock, self.latency, lambda: replies)
            return defer.succeed(replies)
        # The silent nodes never answer: what came is all there is.
        return defer.Deferred().addTimeout(
            timeout, self.clock, onTimeoutCancel=lambda _result, _timeout: replies
        )

    def ping(self, nodes, timeout):
        return self._call("ping", nodes, timeout, lambda n: {"ok": "pong"})

    def stats(self, nodes, timeout):
        return self._call(
            "stats", nodes, timeout,
            lambda n: {"autoscaler": {"max": n.max, "min": n.min}, "pid": 0},
        )

    def active_queues(self, nodes, timeout):
        return self._call(
            "active_queues", nodes, timeout, lambda n: [dict(q) for q in n.queues]
        )

    def add_consumer(self, nodes, queue, timeout):
        def apply(node):
            if node.stubborn:
                return {"ok": "told"}
            node.queues = [q for q in node.queues if q["name"] != queue.name] + [
                {"name": queue.name, "exchange": {"name": queue.exchange},
                 "routing_key": queue.routing_key}
            ]
            return {"ok": f"add consumer {queue.name}"}

        return self._call("add_consumer", nodes, timeout, apply, queue.name)

    def cancel_consumer(self, nodes, queue_name, timeout):
        def apply(node):
            if node.stubborn:
                return {"ok": "told"}
            node.queues = [q for q in node.queues if q["name"] != queue_name]
            return {"ok": f"no longer consuming from {queue_name}"}

        return self._call("cancel_consumer", nodes, timeout, apply, queue_name)

    def autoscale(self, nodes, max_concurrency, min_concurrency, timeout):
        def apply(node):
            if node.stubborn:
                return {"ok": "told"}
            node.max, node.min = max_concurrency, min_concurrency
            return {"ok": f"autoscale now max={max_concurrency} min={min_concurrency}"}

        return self._call(
            "autoscale", nodes, timeout, apply, max_concurrency, min_concurrency
        )

    def shutdown(self, nodes):
        self.sent.append(("shutdown", list(nodes), ()))
        for name in nodes:
            self.nodes.pop(name, None)
        return defer.succeed({})


@implementer(IProcessTransport)
class FakeProcess(InertProcessTransport):
    """A spawned process that ends when the test (or a signal) says so."""

    def __init__(self, reactor, proto, pid, executable, args, env, path, childFDs):
        self.reactor = reactor
        self.proto = proto
        self.pid = pid
        self.executable = executable
        self.args = args
        self.env = env
        self.path = path
        self.childFDs = childFDs
        self.signals = []
        self.ended = False
        self.stdin_closed = False
        #: What was written to its stdin.
        self.written = []

    def node(self):
        return self.args[self.args.index("-n") + 1]

    def signalProcess(self, signalID):
        if self.ended:
            from twisted.internet.error import ProcessExitedAlready

            raise ProcessExitedAlready()
        signum = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}.get(signalID, signalID)
        self.signals.append(signum)
        behaviour = self.reactor.on_signal
        if behaviour is not None:
            behaviour(self, signum)

    def exit(self, status=0, signum=None):
        """End the process with exit C{status}, or killed by C{signum}."""
        if self.ended:
            return
        self.ended = True
        if signum is None and status == 0:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(None if signum else status, signum)
        self.proto.processEnded(Failure(reason))

    def closeStdin(self):
        self.stdin_closed = True

    def write(self, data):
        self.written.append(data)



def obey_signals(process, signum):
    """A worker that ends at once on TERM or KILL (a default for tests)."""
    if signum in (signal.SIGTERM, signal.SIGKILL):
        process.exit(signum=signum)


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """A memory reactor with a clock that spawns L{FakeProcess}es."""

    def __init__(self):
        super().__init__()
        self.processes = []
        self.next_pid = 1000
        self.on_signal = obey_signals

    def spawnProcess(self, processProtocol, executable, args=(), env={}, path=None,
                     uid=None, gid=None, usePTY=0, childFDs=None):
        self.next_pid += 1
        process = FakeProcess(
            self, processProtocol, self.next_pid, executable, list(args), env, path, childFDs
        )
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    def live(self):
        return [p for p in self.processes if not p.ended]


@implementer(ILauncher)
class FakeLauncher:
    """
    Spawns L{FakeProcess}es on a L{FakeProcessReactor}; C{fail} makes the
    next spawns raise, C{orphan(pid)} plays a fork server that ended.
    C{renewals} counts the L{renew} calls; C{hold_renewal} makes them wait
    (in C{held}) until the test fires them, C{fail_renewal} (an exception)
    fail.  C{slots} (None: no limit) is how many workers L{can_start}
    lets start, as a fork server's standbys would; C{give(n)} plays the
    server forking n more (C{asked} counts the workers held back).
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.fail = None
        self.spawned = []
        self.renewals = 0
        self.hold_renewal = False
        self.fail_renewal = None
        self.held = []
        self.slots = None
        self.asked = 0
        self._orphans = Listeners("orphaned worker")
        self._ready = Listeners("launcher ready")

    def can_start(self, argv):
        if self.slots is None:
            return True
        if self.slots > 0:
            self.slots -= 1
            return True
        self.asked += 1
        return False

    def add_ready_listener(self, listener):
        self._ready.add(listener)

    def give(self, n):
        self.slots = (self.slots or 0) + n
        self._ready.notify()

    def renew(self):
        self.renewals += 1
        if self.fail_renewal is not None:
            return defer.fail(self.fail_renewal)
        if not self.hold_renewal:
            return defer.succeed(True)
        self.held.append(defer.Deferred())
        return self.held[-1]

    def spawn(self, protocol, argv, env, path, log_path):
        if self.fail is not None:
            raise self.fail
        process = self.reactor.spawnProcess(protocol, argv[0], argv, env=env, path=path)
        self.spawned.append((argv, log_path))
        return process

    def add_orphan_listener(self, listener):
        self._orphans.add(listener)

    def orphan(self, pid):
        self._orphans.notify(pid)


@implementer(IProcessTable)
class FakeProcessTable:
    """Processes left by an earlier branch: C{pid -> node}."""

    def __init__(self):
        self.table = {}
        self.signals = []
        self.on_signal = obey_table_signals

    def alive(self, pid):
        return pid in self.table

    def is_worker(self, pid, node):
        return self.table.get(pid) == node

    def signal(self, pid, signum):
        self.signals.append((pid, signum))
        if pid in self.table and self.on_signal is not None:
            self.on_signal(self, pid, signum)


def obey_table_signals(table, pid, signum):
    if signum in (signal.SIGTERM, signal.SIGKILL):
        table.table.pop(pid, None)
