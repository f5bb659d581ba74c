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


def parent_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


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

    def test_renew_starts_a_new_server_and_retires_the_old_one(self):
        self.say({"standby": 7})
        old_worker = Recorder()
        self.launcher.spawn(old_worker, ARGV, {}, "/tmp", self.log)
        renewed = self.launcher.renew()
        self.assertNoResult(renewed)
        new_server = self.reactor.processes[-1]
        self.assertIsNot(new_server, self.server)
        self.assertEqual(new_server.args, ["/py", "-m", "cyme.supervision.forkserver"])
        self.assertEqual(json.loads(self.server.written[-1]), {"retire": True})
        # The old server's next standby is not used: workers are exec'd
        # until the new server has one, then forked by it.
        self.say({"standby": 8})
        execd = self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.assertNotIn(execd.pid, (7, 8))
        new_server.proto.outReceived(b'{"standby": 9}\n')
        self.assertIs(self.successResultOf(renewed), True)
        forked = Recorder()
        self.assertEqual(self.launcher.spawn(forked, ARGV, {}, "/tmp", self.log).pid, 9)
        self.assertEqual(json.loads(new_server.written[-1])["spawn"], 9)
        # The retired server still tells of its worker's end, then ends
        # itself: nobody is orphaned, and it is not restarted.
        self.say({"exit": 7, "status": 0, "signal": None})
        self.assertIsInstance(self.successResultOf(old_worker.ended), ProcessDone)
        processes = len(self.reactor.processes)
        self.server.exit()
        self.reactor.advance(5)
        self.assertEqual(self.orphans, [])
        self.assertEqual(len(self.reactor.processes), processes)
        # The new server's workers are its own.
        new_server.proto.outReceived(b'{"exit": 9, "status": null, "signal": 15}\n')
        self.assertEqual(self.successResultOf(forked.ended).signal, 15)

    def test_a_retired_server_that_dies_orphans_its_workers(self):
        self.say({"standby": 7})
        self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.launcher.renew()
        self.server.exit(signum=9)
        self.assertEqual(self.orphans, [7])
        self.assertEqual(len(self.reactor.processes), 2)  # no restart of the old one

    def test_stopping_closes_every_servers_input(self):
        self.say({"standby": 7})
        self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        waiting = self.launcher.renew()
        new_server = self.reactor.processes[-1]
        stopped = self.launcher.stopService()
        self.assertTrue(self.server.stdin_closed)
        self.assertTrue(new_server.stdin_closed)
        self.assertIs(self.successResultOf(waiting), False)  # not left hanging
        self.server.exit()
        self.assertNoResult(stopped)
        new_server.exit()
        self.successResultOf(stopped)

    def test_renew_of_a_stopped_launcher_does_nothing(self):
        self.launcher.stopService()
        self.server.exit()
        self.assertIs(self.successResultOf(self.launcher.renew()), False)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_renew_while_a_dead_server_waits_to_restart(self):
        self.server.exit(status=1)
        self.launcher.renew()
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.advance(1.0)  # the pending restart was dropped
        self.assertEqual(len(self.reactor.processes), 2)

    def test_workers_of_a_dead_server_are_orphans_and_it_restarts(self):
        self.say({"standby": 7})
        self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log)
        self.server.exit(status=1)
        self.assertEqual(self.orphans, [7])
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.processes), 2)
        self.launcher.stopService()


class BurstTests(SynchronousTestCase):
    """
    Many workers at once: held back for standbys, which the server is
    asked for, rather than exec'd (each would import Celery again).
    """

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.launcher = ForkServerLauncher(self.reactor, python="/py")
        self.ready = []
        self.launcher.add_ready_listener(lambda: self.ready.append(self.reactor.seconds()))
        self.launcher.startService()
        self.server = self.reactor.processes[0]
        self.log = self.mktemp()

    def say(self, message):
        self.server.proto.outReceived(json.dumps(message).encode() + b"\n")

    def asked(self):
        """What the branch asked the server for besides spawns."""
        return [json.loads(m) for m in self.server.written if b'"spawn"' not in m]

    def start_all(self, count):
        """A converge round: the pids of those that may start now, spawned."""
        pids = []
        for _ in range(count):
            if self.launcher.can_start(ARGV):
                pids.append(self.launcher.spawn(Recorder(), ARGV, {}, "/tmp", self.log).pid)
        self.reactor.advance(0)
        return pids

    def test_the_first_workers_wait_for_the_new_servers_first_standby(self):
        self.assertEqual(self.start_all(3), [])
        # One standby comes by itself; two more are asked for, at once.
        self.assertEqual(self.asked(), [{"standbys": 2}])
        for pid in (7, 8, 9):
            self.say({"standby": pid})
        self.assertEqual(len(self.ready), 3)
        self.assertEqual(self.start_all(3), [7, 8, 9])
        self.assertEqual(len(self.reactor.processes), 1)  # nothing exec'd

    def test_a_burst_asks_for_as_many_standbys_as_it_holds_back(self):
        self.say({"standby": 7})
        self.assertEqual(self.start_all(50), [7])
        # The server forks one after a spawn by itself: 48 more.
        self.assertEqual(self.asked(), [{"standbys": 48}])
        self.say({"standby": 8})
        self.say({"standby": 9})
        # The next round starts those that came and asks for nothing more.
        self.assertEqual(self.start_all(49), [8, 9])
        self.assertEqual(self.asked(), [{"standbys": 48}])
        for pid in range(10, 57):
            self.say({"standby": pid})
        self.assertEqual(self.start_all(47), list(range(10, 57)))
        self.assertEqual(len(self.reactor.processes), 1)

    def test_a_silent_server_is_given_up_for_exec_after_its_patience(self):
        self.say({"standby": 7})
        self.assertEqual(self.start_all(2), [7])
        self.reactor.advance(9)
        self.assertEqual(self.start_all(1), [])  # it may still come
        self.reactor.advance(1.5)
        execd = self.start_all(1)
        self.assertEqual(len(execd), 1)
        self.assertEqual(len(self.reactor.processes), 2)
        # A standby that comes after all is used again.
        self.say({"standby": 8})
        self.assertEqual(self.start_all(1), [8])

    def test_without_a_server_workers_are_execd_at_once(self):
        self.server.exit(status=1)
        self.assertEqual(len(self.start_all(2)), 2)
        self.assertEqual(len(self.reactor.processes), 3)
        self.launcher.stopService()

    def test_eventlet_is_execd_without_waiting(self):
        self.assertTrue(self.launcher.can_start([*ARGV[:-1], "eventlet"]))


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
        if not await self.until(lambda: launcher.standbys, 15):
            self.fail("no standby from the fork server")
        return launcher

    def spawn(self, launcher, protocol, directory=None, log=None):
        """Spawn a worker on C{launcher}, killed at the end of the test whatever happens."""
        if directory is None:
            directory, log = self.worker_files()
        process = launcher.spawn(protocol, ARGV, ENV, directory, log)
        self.addCleanup(_kill, process.pid)
        return process

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
        standby = launcher.standbys[0]
        directory, log = self.worker_files()
        protocol = Recorder()
        process = self.spawn(launcher, protocol, directory, log)
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
        process = self.spawn(launcher, protocol, directory, log)
        process.signalProcess("TERM")
        reason = yield protocol.ended
        self.assertEqual(reason.signal, signal.SIGTERM)
        yield defer.ensureDeferred(self.until(lambda: launcher.standbys, 15))
        self.assertEqual(launcher._server.pid, server, "the fork server was restarted")
        again = Recorder()
        second = self.spawn(launcher, again, directory, log)
        self.assertNotEqual(second.pid, process.pid)
        yield defer.ensureDeferred(self.assertBecomesWorker(second.pid))
        second.signalProcess("KILL")
        yield again.ended

    @defer.inlineCallbacks
    def test_renew_forks_later_workers_from_a_new_server(self):
        """
        After a renewal the next worker is the child of a new server; the
        old one keeps its worker, tells of its end, then exits.
        """
        launcher = yield defer.ensureDeferred(self.started())
        old_server = launcher._server.pid
        old = Recorder()
        first = self.spawn(launcher, old)
        yield defer.ensureDeferred(self.assertBecomesWorker(first.pid))
        yield launcher.renew().addTimeout(15, reactor)
        self.assertNotEqual(launcher._server.pid, old_server)
        table = ProcessTable()
        self.assertTrue(table.alive(old_server), "the old server left its worker")
        second = self.spawn(launcher, Recorder())
        self.assertEqual(parent_of(second.pid), launcher._server.pid)
        self.assertEqual(parent_of(first.pid), old_server)
        first.signalProcess("KILL")
        reason = yield old.ended
        self.assertEqual(reason.signal, signal.SIGKILL)
        self.assertTrue((yield defer.ensureDeferred(
            self.until(lambda: not table.alive(old_server), 10))))
        second.signalProcess("KILL")

    @defer.inlineCallbacks
    def test_a_burst_of_workers_is_forked_by_the_server(self):
        """
        Five workers at once: the one standby serves the first, the server
        forks standbys for the others when asked, and every one is its child.
        """
        launcher = yield defer.ensureDeferred(self.started())
        server = launcher._server.pid
        forked = []
        for _ in range(100):  # a converge round each time standbys came
            while len(forked) < 5 and launcher.can_start(ARGV):
                forked.append(self.spawn(launcher, Recorder()))
            if len(forked) == 5:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(forked), 5)
        self.assertEqual(len({p.pid for p in forked}), 5)
        for process in forked:
            self.assertEqual(parent_of(process.pid), server)
            yield defer.ensureDeferred(self.assertBecomesWorker(process.pid))
        for process in forked:
            process.signalProcess("KILL")
            yield process.proto.ended

    @defer.inlineCallbacks
    def test_a_standby_killed_unused_is_replaced(self):
        """The standby killed by someone: the next worker has a new one."""
        launcher = yield defer.ensureDeferred(self.started())
        server = launcher._server.pid
        dead = launcher.standbys[0]
        os.kill(dead, signal.SIGKILL)
        yield defer.ensureDeferred(
            self.until(lambda: launcher.standbys and dead not in launcher.standbys, 15)
        )
        self.assertTrue(launcher.standbys)
        self.assertNotIn(dead, launcher.standbys)
        protocol = Recorder()
        process = self.spawn(launcher, protocol)
        yield defer.ensureDeferred(self.assertBecomesWorker(process.pid))
        self.assertEqual(launcher._server.pid, server)
        process.signalProcess("KILL")
        yield protocol.ended


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass  # gone already, as it should be
