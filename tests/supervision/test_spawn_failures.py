"""A worker that cannot be started, whatever the reason, fails its own instance.

Its directory cannot be made, its command cannot be built, its process
cannot be spawned, or its pid file cannot be written: each time the
instance is shown C{failed} with C{cannot start: <reason>} (no password
in it), is tried again with the same backoff and quarantined after the
same number of failures as a spawn that raises, while the branch's other
instances are supervised as ever.  A process spawned but not recorded is
stopped (TERM, then KILL) before another is started: never two at once.
On the fake process reactor, the fake launcher and a Clock.
"""

import os
import signal

from twisted.logger import formatEvent, globalLogPublisher

from cyme.state.models import App, Instance
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeLauncher
from cyme.supervision.workerstate import (
    FLAPPED, QUARANTINED, SPAWN_FAILED, SPAWNED, START_FAILED, STOPPING,
)

from tests.supervision.test_lifecycle import ARGV, TERM_CONT, LifecycleTestCase
from tests.supervision.test_supervisor import SupervisorTestCase

SECRET = "s3cr3t-pw"


def unwritable_pidfile(directory):
    """A directory where the worker's pid file goes: it cannot be written."""
    os.makedirs(os.path.join(directory, "worker.pid"))


def a_file(path):
    """A file where a directory should be: it cannot be made."""
    with open(path, "w"):
        pass


class LifecycleTests(LifecycleTestCase):
    """One worker's lifecycle, each failure on its own."""

    def test_a_directory_that_cannot_be_made_fails_the_start(self):
        parent = self.mktemp()
        a_file(parent)  # where the instances' directory should be
        self.directory = os.path.join(parent, "w1")
        self.make(max_restarts=2)
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        self.assertEqual(self.launcher.spawned, [])
        shown = self.worker.to_json()
        self.assertEqual((shown["state"], shown["pid"], shown["restarts"]), ("failed", None, 1))
        self.assertTrue(shown["last_error"].startswith(
            "cannot start: [Errno 20] Not a directory"), shown["last_error"])
        # The first retry is at once, the next after 0.5 s; the third
        # failure is beyond the budget of 2: quarantined.
        self.assertTrue(self.life.due())
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        self.assertFalse(self.life.due())
        self.reactor.advance(0.49)
        self.assertFalse(self.life.due())
        self.reactor.advance(0.01)
        self.assertTrue(self.life.due())
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        self.assertState(QUARANTINED)
        self.assertIn("(last: cannot start: [Errno 20] Not a directory", self.worker.last_error)
        self.assertEqual(self.flushLoggedErrors(), [])  # a warning each, no traceback

    def test_a_pid_file_that_cannot_be_written_stops_the_process(self):
        self.make(max_restarts=5)
        unwritable_pidfile(self.directory)
        waiting = self.life.wait_ready(30)
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        [process] = self.reactor.processes
        self.assertEqual(process.signals[:1], [signal.SIGTERM])
        self.assertTrue(process.ended)
        self.assertState(START_FAILED)
        shown = self.worker.to_json()
        self.assertEqual((shown["state"], shown["pid"], shown["restarts"]), ("failed", None, 1))
        self.assertTrue(shown["last_error"].startswith(
            "cannot start: [Errno 21] Is a directory"), shown["last_error"])
        # Who waits for it to come up hears at once (as it stops).
        self.assertIn("cannot start: [Errno 21]", self.successResultOf(waiting)["last_error"])
        self.assertTrue(self.life.due())  # the first retry is at once, as for any start

    def test_an_unrecorded_process_deaf_to_term_is_killed_before_another_starts(self):
        self.make(max_restarts=5)
        unwritable_pidfile(self.directory)
        self.reactor.on_signal = None  # it takes its time to stop
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        process = self.worker.process
        self.assertState(STOPPING)
        self.assertEqual(process.signals, TERM_CONT)
        self.assertIn("cannot start: [Errno 21]", self.worker.last_error)
        # Not to be started again while it lives: a second one would run beside it.
        self.assertFalse(self.life.due())
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        self.reactor.advance(10)
        self.assertEqual(process.signals, [*TERM_CONT, signal.SIGKILL])
        process.exit(signum=signal.SIGKILL)
        self.assertState(START_FAILED)
        self.assertEqual((self.worker.pid, self.worker.restarts), (None, 1))
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertTrue(self.life.due())


class BrokenStore(MemoryStore):
    """A store with records it cannot read: app C{bad}, queue C{odd}."""

    def get_app(self, name):
        if name == "bad":
            raise ValueError(f"cannot read amqp://me:{SECRET}@rabbit:5672//")
        return super().get_app(name)

    def get_queue(self, app, name):
        if name == "odd":
            return object()  # a record of no known shape
        return super().get_queue(app, name)


class W1Launcher(FakeLauncher):
    """The fake launcher, which cannot make w1's process."""

    def spawn(self, protocol, argv, env, path, log_path):
        if "w1@h" in argv:
            raise OSError("fork failed")
        return super().spawn(protocol, argv, env, path, log_path)


class SupervisorTests(SupervisorTestCase):
    """Every cause fails its own instance alike; the others run."""

    def setUp(self):
        super().setUp()
        store = BrokenStore()
        for app in self.store.apps():
            store.put_app(app)
            for queue in self.store.queues(app.name):
                store.put_queue(app.name, queue)
        self.store = store
        self.timeline = []
        self.launcher = FakeLauncher(self.reactor)

    def options(self):
        return {"transition": self.transition, "launcher": self.launcher}

    def transition(self, worker, before, event, detail):
        if worker.name != "w1":
            return
        if event in (SPAWN_FAILED, FLAPPED):
            self.timeline.append((self.reactor.seconds(), event))
        elif event == SPAWNED:  # the one just made, and no other
            self.alive.append(len([p for p in self.reactor.live() if p.node() == "w1@h"]))

    def run_for(self, seconds):
        """Let C{seconds} pass, from one due call to the next (exact times)."""
        end = self.reactor.seconds() + seconds
        while True:
            due = min((c.getTime() for c in self.reactor.getDelayedCalls() if c.active()),
                      default=end)
            if due > end:
                break
            self.reactor.advance(due - self.reactor.seconds())

    def fails(self, obstacle=None, **fields):
        """w1 (with C{fields}) fails to start; w2 runs beside it. What w1 showed.
        C{obstacle} is put in w1's way once the branch started (its start
        removes what deleted instances left)."""
        self.alive = []
        self.control.up("w2@h", queues=["dq.w2"])
        self.start()
        if obstacle is not None:
            obstacle(os.path.join(self.root, "w1"))
        self.store.put_instance(Instance(name="w1", **{"app": "foo", **fields}))
        self.add("w2")
        shown = self.supervisor.status("w1")
        self.run_for(20)  # every retry, to quarantine
        self.assertEqual(set(self.alive), set() if not self.alive else {1})
        self.assertEqual(self.state("w1"), QUARANTINED)
        self.assertEqual(self.state("w2"), "running")
        # w2 is supervised as ever: its death is noticed, it is restarted.
        self.process("w2").exit(status=1)
        self.reactor.advance(0)
        self.process("w2")
        self.assertEqual(self.flushLoggedErrors(), [])
        return shown

    def assertFailedAsASpawn(self, shown, reason):
        self.assertEqual((shown["state"], shown["pid"]), ("failed", None))
        self.assertTrue(shown["last_error"].startswith("cannot start: " + reason),
                        shown["last_error"])
        self.assertNotIn(SECRET, shown["last_error"])
        self.assertIn("(last: cannot start: " + reason,
                      self.supervisor.status("w1")["last_error"])
        # As a spawn that raises: the first retry at the next round, then
        # 0.5, 1, 2 s apart; the sixth failure is beyond the budget of 5.
        self.assertEqual(self.timeline, [
            (0.0, SPAWN_FAILED), (5.0, SPAWN_FAILED), (5.5, SPAWN_FAILED),
            (6.5, SPAWN_FAILED), (8.5, SPAWN_FAILED), (12.5, FLAPPED)])

    def test_a_spawn_that_raises(self):
        # The reference: the launcher cannot make the process.
        self.launcher = W1Launcher(self.reactor)
        self.assertFailedAsASpawn(self.fails(), "fork failed")

    def test_a_directory_that_cannot_be_made(self):
        self.assertFailedAsASpawn(self.fails(obstacle=a_file), "[Errno 17] File exists")

    def test_a_record_that_cannot_be_read(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.store.put_app(App("bad"))
        self.assertFailedAsASpawn(self.fails(app="bad"), "ValueError: cannot read amqp://me:**@")
        # A bug, not a bad value: the log says where it was raised, and
        # still no password.
        lines = [formatEvent(e) for e in events if "cannot start" in formatEvent(e)]
        self.assertTrue(lines)
        self.assertIn("in get_app", lines[0])
        self.assertNotIn(SECRET, "".join(lines))

    def test_a_command_that_cannot_be_built(self):
        self.assertFailedAsASpawn(self.fails(queues=["odd"]), "AttributeError: ")

    def test_a_pid_file_that_cannot_be_written(self):
        self.assertFailedAsASpawn(self.fails(obstacle=unwritable_pidfile),
                                  "[Errno 21] Is a directory")
        spawned = [p for p in self.reactor.processes if p.node() == "w1@h"]
        self.assertEqual(len(spawned), 6)  # one per failure
        for process in spawned:
            self.assertEqual(process.signals[:1], [signal.SIGTERM])
            self.assertTrue(process.ended)
