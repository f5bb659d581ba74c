"""Starting workers: through the fork server, or exec'd when it is not ready.

The logic with a fake process reactor; then the real fork server forking
real (broker-less, so forever connecting) Celery workers.
"""

import json
import os
import signal
import sys

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cyme.supervision.fakes import FakeProcessReactor
from cyme.supervision.launcher import ForkServerLauncher
from cyme.supervision.workers import ProcessTable


class Recorder(ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.transport = None

    def makeConnection(self, transport):
        self.transport = transport

    def processEnded(self, reason):
        self.ended.callback(reason.value)


ARGV = [sys.executable, "-m", "cyme.supervision.workerexec", "-A", "cyme.tasks.worker",
        "-b", "amqp://guest:guest@127.0.0.1:1//", "worker", "-n", "w1@h", "-P", "solo"]
ENV = {"PATH": os.environ["PATH"]}


class ForkServerLogicTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.launcher = ForkServerLauncher(self.reactor, python="/py")
        self.orphans = []
        self.launcher.add_orphan_listener(self.orphans.append)
        self.launcher.startService()
        self.server = self.reactor.processes[0]
        self.log = os.path.join(self.mktemp())

    def say(self, message):
        self.server.proto.outReceived(json.dumps(message).encode() + b"\n")

    def test_the_server_is_started(self):
        self.assertEqual(self.server.args, ["/py", "-m", "cyme.supervision.forkserver"])

    def test_exec_until_a_standby_is_ready(self):
        protocol = Recorder()
        process = self.launcher.spawn(protocol, ARGV, {}, "/tmp", self.log)
        self.assertEqual(process.args, ARGV)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_forked_worker_has_the_standbys_pid_and_its_end_is_told(self):
        self.say({"standby": 4242})
        protocol = Recorder()
        process = self.launcher.spawn(protocol, ARGV, {"X": "1"}, "/tmp", self.log)
        self.assertEqual(process.pid, 4242)
        self.assertIs(protocol.transport, process)
        self.assertEqual(len(self.reactor.processes), 1)  # nothing exec'd
        # The next spawn has no standby until the server says so.
        other = self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.assertNotEqual(other.pid, 4242)
        self.say({"exit": 4242, "status": None, "signal": 9})
        reason = self.successResultOf(protocol.ended)
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, 9)

    def test_a_spawn_on_a_standby_gone_meanwhile_ends_at_once(self):
        self.say({"standby": 4242})
        self.say({"exit": 4242, "status": None, "signal": 9})  # died unused
        process = self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.assertNotEqual(process.pid, 4242)  # exec'd meanwhile
        self.assertEqual(len(self.reactor.processes), 2)

    def test_clean_exit(self):
        self.say({"standby": 7})
        protocol = Recorder()
        self.launcher.spawn(protocol, ARGV, {}, "/tmp", self.log)
        self.say({"exit": 7, "status": 0, "signal": None})
        self.assertIsInstance(self.successResultOf(protocol.ended), ProcessDone)

    def test_eventlet_and_gevent_are_always_execd(self):
        self.say({"standby": 7})
        process = self.launcher.spawn(Recorder(), [*ARGV[:-1], "gevent"], {}, "/tmp", self.log)
        self.assertNotEqual(process.pid, 7)

    def test_workers_of_a_dead_server_are_orphans_and_it_restarts(self):
        self.say({"standby": 7})
        self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.server.exit(status=1)
        self.assertEqual(self.orphans, [7])
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 2)
        self.launcher.stopService()


class ForkServerTests(TestCase):
    """The real fork server and real Celery workers (no broker needed)."""

    timeout = 60

    async def until(self, predicate, seconds):
        """Poll C{predicate} every 50 ms for up to C{seconds}; its last value."""
        for _ in range(int(seconds / 0.05)):
            if predicate():
                return True
            await deferLater(reactor, 0.05, lambda: None)
        return predicate()

    async def started(self):
        launcher = ForkServerLauncher(reactor)
        launcher.startService()
        self.addCleanup(launcher.stopService)
        if not await self.until(lambda: launcher._standby is not None, 15):
            self.fail("no standby from the fork server")
        return launcher

    def worker_files(self):
        """A fresh directory for a worker, and its log's path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return directory, os.path.join(directory, "worker.log")

    async def assertBecomesWorker(self, pid):
        """C{pid} takes worker w1@h's name (within 5 s)."""
        table = ProcessTable()
        self.assertTrue(await self.until(lambda: table.is_worker(pid, "w1@h"), 5))

    @defer.inlineCallbacks
    def test_forks_a_named_worker_and_tells_its_end(self):
        launcher = yield defer.ensureDeferred(self.started())
        standby = launcher._standby
        directory, log = self.worker_files()
        protocol = Recorder()
        process = launcher.spawn(protocol, ARGV, ENV, directory, log)
        self.assertEqual(process.pid, standby)
        yield defer.ensureDeferred(self.assertBecomesWorker(process.pid))
        self.assertEqual(os.getsid(process.pid), process.pid)  # its own session

        # Its output goes to its log: the banner names its (unreachable) broker.
        def banner():
            with open(log, "rb") as f:
                return b"amqp://guest:**@127.0.0.1:1//" in f.read()

        self.assertTrue((yield defer.ensureDeferred(self.until(banner, 10))))
        process.signalProcess("KILL")
        reason = yield protocol.ended
        self.assertEqual(reason.signal, signal.SIGKILL)

    @defer.inlineCallbacks
    def test_a_worker_stopped_before_it_was_told_what_to_be(self):
        """
        A worker TERMed in the very turn it was spawned dies as the standby
        it still was; the fork server lives on and forks the next one.
        """
        launcher = yield defer.ensureDeferred(self.started())
        server = launcher._server.pid
        directory, log = self.worker_files()
        protocol = Recorder()
        process = launcher.spawn(protocol, ARGV, ENV, directory, log)
        process.signalProcess("TERM")
        reason = yield protocol.ended
        self.assertEqual(reason.signal, signal.SIGTERM)
        yield defer.ensureDeferred(self.until(lambda: launcher._standby is not None, 15))
        self.assertEqual(launcher._server.pid, server, "the fork server was restarted")
        again = Recorder()
        second = launcher.spawn(again, ARGV, ENV, directory, log)
        self.assertNotEqual(second.pid, process.pid)
        yield defer.ensureDeferred(self.assertBecomesWorker(second.pid))
        second.signalProcess("KILL")
        yield again.ended

    @defer.inlineCallbacks
    def test_a_standby_killed_unused_is_replaced(self):
        """The standby killed by someone: the next worker has a new one."""
        launcher = yield defer.ensureDeferred(self.started())
        server = launcher._server.pid
        dead = launcher._standby
        os.kill(dead, signal.SIGKILL)
        yield defer.ensureDeferred(
            self.until(lambda: launcher._standby not in (None, dead), 15)
        )
        self.assertNotIn(launcher._standby, (None, dead))
        protocol = Recorder()
        process = launcher.spawn(protocol, ARGV, ENV, *self.worker_files())
        yield defer.ensureDeferred(self.assertBecomesWorker(process.pid))
        self.assertEqual(launcher._server.pid, server)
        process.signalProcess("KILL")
        yield protocol.ended
