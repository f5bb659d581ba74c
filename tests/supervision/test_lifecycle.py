"""One worker's lifecycle on a Clock and the fakes: every row of its
transition table (state × event -> next state and action), the events no
row takes, and its timers (KILL, backoff, quarantine, adoption watch,
ready wait).
"""

import os
import signal

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.supervision.fakes import (
    FakeControl,
    FakeLauncher,
    FakeProcessReactor,
    FakeProcessTable,
)
from cyme.supervision.interfaces import IControl, ILauncher, IProcessTable
from cyme.supervision.lifecycle import TRANSITIONS, WorkerLifecycle
from cyme.supervision.workerstate import (
    EVENTS,
    FAILED,
    QUARANTINED,
    RUNNING,
    STARTING,
    STATES,
    START_FAILED,
    STOPPED,
    STOPPING,
    UNRESPONSIVE,
    Policy,
    Worker,
    restart_backoff,
)

ARGV = ["/py", "-m", "cyme.supervision.workerexec", "worker", "-n", "w1@h"]
TERM_CONT = [signal.SIGTERM, signal.SIGCONT]
CANNOT_RESOLVE = (
    "[2026-12-02 01:10:14,744: ERROR/MainProcess] consumer: Cannot connect to "
    "amqp://me:**@w1:5672//: [Errno -2] Name or service not known."
)
RESOLVE_ERROR = (
    "cannot reach its broker: the host does not resolve "
    "([Errno -2] Name or service not known)"
)


class LifecycleTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.launcher = FakeLauncher(self.reactor)
        self.processes = FakeProcessTable()
        self.reconciles = []
        self.directory = self.mktemp()
        self.life = self.make()

    def spawn_fails(self):
        """A start whose process cannot be made; whether it was spawned."""
        self.launcher.fail = OSError("no such file")
        spawned = self.life.start(ARGV, {}, "spec1")
        self.flushLoggedErrors(OSError)
        return spawned

    def make(self, **figures):
        """A lifecycle for w1; C{figures} override the test's L{Policy}."""
        policy = dict(
            kill_timeout=10.0, max_restarts=1, restart_window=60.0,
            quarantine=300.0, stable_after=30.0,
            backoff=restart_backoff(jitter=lambda: 1.0),
        )
        policy.update(figures)
        self.life = WorkerLifecycle(
            Worker("w1", "w1@h", self.directory), self.reactor, self.launcher,
            self.processes, Policy(**policy), self.reconcile,
        )
        return self.life

    def reconcile(self):
        self.reconciles.append(self.reactor.seconds())

    @property
    def worker(self):
        return self.life.worker

    def pending_calls(self):
        return [c for c in self.reactor.getDelayedCalls() if c.active()]

    # Arriving in each state through real events

    def starting(self):
        self.assertTrue(self.life.start(ARGV, {}, "spec1"))
        return self.worker.process

    def running(self):
        process = self.starting()
        self.life.pong()
        return process

    def unresponsive(self):
        process = self.starting()
        self.life.ping_missed()
        return process

    def failed(self, arrive=None):
        process = (arrive or self.starting)()
        self.writes(CANNOT_RESOLVE)
        self.assertState(FAILED)
        return process

    def writes(self, *lines):
        """The worker writes C{lines} to its log; the tick reads them."""
        with open(os.path.join(self.directory, "worker.log"), "a") as f:
            f.write("".join(line + "\n" for line in lines))
        self.life.tail()

    def stopping(self, failure=None):
        process = self.running()
        self.reactor.on_signal = None  # it takes its time to stop
        self.stopped = self.life.stop("asked", failure)
        return process

    def quarantined(self):
        for _ in range(2):
            self.starting().exit(status=1)
        self.assertEqual(self.worker.state, QUARANTINED)

    def adopted_stopping(self):
        self.processes.table[4242] = "w1@h"
        self.processes.on_signal = None
        self.life.adopt(4242)
        self.stopped = self.life.stop("asked")

    def assertState(self, state):
        self.assertEqual(self.worker.state, state)


class TransitionListenerTests(LifecycleTestCase):
    """The branch's events hear of every transition, and of nothing else."""

    def make(self, **figures):
        self.told = []
        life = super().make(**figures)
        return WorkerLifecycle(
            life.worker, self.reactor, self.launcher, self.processes, life._policy,
            self.reconcile, transition=self.transition,
        )

    def transition(self, worker, before, event, detail):
        self.told.append((before, worker.state, event))

    def test_each_transition_is_told_as_its_state_is_assigned(self):
        self.life = self.make()
        self.running()
        self.life.pong()  # running -> running: a row, told too
        self.life.restart()  # the fake process ends at once on TERM
        self.reactor.advance(0)
        self.assertEqual(self.told, [
            (STOPPED, STARTING, "spawned"), (STARTING, RUNNING, "pong"),
            (RUNNING, RUNNING, "pong"), (RUNNING, STOPPING, "restart asked"),
            (STOPPING, STOPPED, "exited"),
        ])

    def test_an_event_no_row_takes_is_not_told(self):
        self.life = self.make()
        self.life.ping_missed()  # stopped: nothing to miss
        self.assertEqual(self.told, [])


class FakeTests(SynchronousTestCase):
    def test_fakes_implement_the_interfaces(self):
        reactor = FakeProcessReactor()
        self.assertTrue(verifyObject(IControl, FakeControl(reactor)))
        self.assertTrue(verifyObject(ILauncher, FakeLauncher(reactor)))
        self.assertTrue(verifyObject(IProcessTable, FakeProcessTable()))


class TableTests(SynchronousTestCase):
    def test_rows_name_known_states_events_and_actions(self):
        for (state, event), (next_state, actions) in TRANSITIONS.items():
            self.assertIn(state, STATES)
            self.assertIn(event, EVENTS)
            self.assertIn(next_state, STATES)
            for action in actions:
                self.assertTrue(callable(getattr(WorkerLifecycle, action)), action)

    def test_every_row_has_a_test(self):
        for state, event in TRANSITIONS:
            name = f"test_{state}_{event}".replace(" ", "_")
            self.assertTrue(hasattr(RowTests, name), f"no {name}")

    def test_every_state_can_be_stopped_and_restarted(self):
        for state in STATES:
            self.assertIn((state, "stop asked"), TRANSITIONS)
            self.assertIn((state, "restart asked"), TRANSITIONS)


class RowTests(LifecycleTestCase):
    """One test per row: C{test_<state>_<event>}."""

    # stopped

    def test_stopped_spawned(self):
        process = self.starting()
        self.assertState(STARTING)
        self.assertEqual((self.worker.pid, self.worker.spec), (process.pid, "spec1"))
        self.assertEqual(process.args, ARGV)
        with open(os.path.join(self.directory, "worker.pid")) as f:
            self.assertEqual(f.read(), f"{process.pid}\n")
        with open(os.path.join(self.directory, "worker.spec")) as f:
            self.assertEqual(f.read(), "spec1")

    def test_stopped_adopted(self):
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "worker.spec"), "w") as f:
            f.write("old\n")
        self.processes.table[4242] = "w1@h"
        self.life.adopt(4242)
        self.assertState(STARTING)
        self.assertEqual((self.worker.pid, self.worker.spec), (4242, "old"))
        self.assertTrue(self.worker.adopted)

    def test_stopped_spawn_failed(self):
        self.make(max_restarts=5)
        waiting = self.life.wait_ready(30)
        self.assertFalse(self.spawn_fails())
        self.assertState(START_FAILED)
        shown = self.worker.to_json()
        self.assertEqual((shown["state"], shown["pid"]), ("failed", None))
        self.assertEqual(shown["last_error"], "cannot start: no such file")
        self.assertEqual(self.worker.restarts, 1)
        # A create waiting for the worker hears at once, not after 30 s.
        self.assertEqual(self.successResultOf(waiting)["state"], "failed")
        # The first retry is due at once: the next converge starts it.
        self.assertTrue(self.life.due())
        self.assertEqual(self.reconciles, [])

    def test_stopped_flapped(self):
        self.make(max_restarts=0)
        self.spawn_fails()
        self.assertState(QUARANTINED)
        self.assertEqual(
            self.worker.last_error,
            "quarantined: failed 1 times within 60 s (last: cannot start: no such file)",
        )

    # start failed: its process could not be made

    def start_failed(self):
        self.make(max_restarts=5)
        self.spawn_fails()
        self.spawn_fails()
        self.assertState(START_FAILED)
        self.assertFalse(self.life.due())  # the second failure backs off

    def test_start_failed_spawned(self):
        self.start_failed()
        self.reactor.advance(60)
        self.launcher.fail = None
        self.assertTrue(self.life.start(ARGV, {}, "spec1"))
        self.assertState(STARTING)
        self.assertEqual(self.worker.to_json()["state"], "starting")

    def test_start_failed_spawn_failed(self):
        self.start_failed()
        self.assertEqual(self.worker.restarts, 2)
        waiting = self.life.wait_ready(30)
        self.reactor.advance(60)
        self.spawn_fails()
        self.assertState(START_FAILED)
        self.assertEqual(self.worker.restarts, 3)
        self.assertEqual(self.successResultOf(waiting)["state"], "failed")

    def test_start_failed_flapped(self):
        self.spawn_fails()
        self.spawn_fails()
        self.assertState(QUARANTINED)
        self.assertEqual(
            self.worker.last_error,
            "quarantined: failed 2 times within 60 s (last: cannot start: no such file)",
        )

    def test_start_failed_stop_asked(self):
        self.start_failed()
        self.assertIsNone(self.successResultOf(self.life.stop("disabled")))
        self.assertState(STOPPED)
        self.assertEqual(self.worker.to_json()["state"], "stopped")

    def test_start_failed_restart_asked(self):
        self.start_failed()
        self.assertIsNone(self.successResultOf(self.life.restart()))
        self.assertState(STOPPED)
        self.assertTrue(self.life.due())  # a restart forgives the backoff

    def test_start_failed_backoff_elapsed(self):
        self.start_failed()
        self.assertEqual(self.reconciles, [])
        self.reactor.advance(60)
        self.assertState(START_FAILED)
        self.assertEqual(len(self.reconciles), 1)  # the end of the backoff asks for a round
        self.assertTrue(self.life.due())

    def test_start_failed_pong(self):
        self.start_failed()
        self.reactor.advance(1)
        self.life.pong()
        self.assertState(START_FAILED)
        self.assertEqual(self.worker.last_pong, 1.0)

    def test_stopped_stop_asked(self):
        self.assertIsNone(self.successResultOf(self.life.stop("asked")))
        self.assertState(STOPPED)

    def test_stopped_restart_asked(self):
        self.make(max_restarts=5)
        self.starting().exit(status=1)
        self.starting().exit(status=1)
        self.assertFalse(self.life.due())  # backing off
        self.assertIsNone(self.successResultOf(self.life.restart()))
        self.assertState(STOPPED)
        self.assertTrue(self.life.due())
        self.assertEqual((self.worker.attempt, self.worker.restart_times), (0, []))
        self.assertEqual(self.pending_calls(), [])

    def test_stopped_backoff_elapsed(self):
        self.make(max_restarts=5)
        self.starting().exit(status=1)
        self.starting().exit(status=1)
        self.assertEqual(self.reconciles, [0.0, 0.0])
        self.reactor.advance(0.5)
        self.assertState(STOPPED)
        self.assertEqual(self.reconciles, [0.0, 0.0, 0.5])
        self.assertTrue(self.life.due())

    def test_stopped_pong(self):
        ready = self.life.wait_ready(10)
        self.reactor.advance(1)
        self.assertFalse(self.life.pong())
        self.assertState(STOPPED)
        self.assertEqual(self.worker.last_pong, 1.0)
        self.assertEqual(self.successResultOf(ready)["state"], STOPPED)

    # quarantined

    def test_quarantined_stop_asked(self):
        self.quarantined()
        self.assertIsNone(self.successResultOf(self.life.stop("asked")))
        self.assertState(QUARANTINED)

    def test_quarantined_restart_asked(self):
        self.quarantined()
        self.successResultOf(self.life.restart())
        self.assertState(STOPPED)
        self.assertIsNone(self.worker.quarantined_until)
        self.assertTrue(self.life.due())
        self.assertEqual(self.pending_calls(), [])

    def test_quarantined_quarantine_elapsed(self):
        self.quarantined()
        self.assertEqual(self.worker.quarantined_until, 300.0)
        self.reactor.advance(300)
        self.assertState(STOPPED)
        self.assertIsNone(self.worker.quarantined_until)
        self.assertEqual((self.worker.attempt, self.worker.restart_times), (0, []))
        self.assertEqual(self.reconciles[-1], 300.0)

    def test_quarantined_pong(self):
        self.quarantined()
        self.life.pong()
        self.assertState(QUARANTINED)
        self.assertEqual(self.worker.last_pong, 0.0)

    # starting, running, unresponsive: the live states

    def test_starting_pong(self):
        self.starting()
        ready = self.life.wait_ready(10)
        self.assertTrue(self.life.pong())
        self.assertState(RUNNING)
        self.assertEqual(self.successResultOf(ready)["state"], RUNNING)

    def test_running_pong(self):
        self.running()
        self.reactor.advance(2)
        self.assertFalse(self.life.pong())
        self.assertState(RUNNING)
        self.assertEqual(self.worker.last_pong, 2.0)

    def test_unresponsive_pong(self):
        self.unresponsive()
        self.assertTrue(self.life.pong())
        self.assertState(RUNNING)
        self.assertEqual(self.worker.missed, 0)

    def check_ping_missed(self, arrive, missed):
        arrive()
        self.assertEqual(self.life.ping_missed(), missed)
        self.assertState(UNRESPONSIVE)
        self.assertEqual(self.worker.process.signals, [])

    def test_starting_ping_missed(self):
        self.check_ping_missed(self.starting, 1)

    def test_running_ping_missed(self):
        self.check_ping_missed(self.running, 1)

    def test_unresponsive_ping_missed(self):
        self.check_ping_missed(self.unresponsive, 2)

    def check_stop_asked(self, arrive):
        process = arrive()
        self.reactor.on_signal = None
        ready = self.life.wait_ready(10)
        stopped = self.life.stop("asked")
        self.assertState(STOPPING)
        self.assertEqual(process.signals, TERM_CONT)
        self.assertNoResult(stopped)
        self.successResultOf(ready)  # nobody waits for a worker that stops
        process.exit(signum=signal.SIGTERM)
        self.successResultOf(stopped)

    def test_starting_stop_asked(self):
        self.check_stop_asked(self.starting)

    def test_running_stop_asked(self):
        self.check_stop_asked(self.running)

    def test_unresponsive_stop_asked(self):
        self.check_stop_asked(self.unresponsive)

    def check_restart_asked(self, arrive):
        self.make(max_restarts=5)
        self.starting().exit(status=1)
        process = arrive()
        self.assertEqual(self.worker.attempt, 1)
        stopped = self.life.restart()
        self.assertState(STOPPED)  # it obeyed the TERM at once
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.successResultOf(stopped)
        self.assertEqual((self.worker.attempt, self.worker.restart_times), (0, []))
        self.assertTrue(self.life.due())

    def test_starting_restart_asked(self):
        self.check_restart_asked(self.starting)

    def test_running_restart_asked(self):
        self.check_restart_asked(self.running)

    def test_unresponsive_restart_asked(self):
        self.check_restart_asked(self.unresponsive)

    def check_crashed(self, arrive, error="exited with status 1"):
        process = arrive()
        process.exit(status=1)
        self.assertState(STOPPED)
        self.assertEqual(self.worker.last_error, error)
        self.assertEqual((self.worker.restarts, self.worker.pid), (1, None))
        self.assertFalse(os.path.exists(os.path.join(self.directory, "worker.pid")))
        self.assertEqual(self.reconciles, [0.0])

    def test_starting_crashed(self):
        self.check_crashed(self.starting)

    def test_running_crashed(self):
        self.check_crashed(self.running)

    def test_unresponsive_crashed(self):
        self.check_crashed(self.unresponsive)

    def check_flapped(self, arrive):
        self.make(max_restarts=0)
        process = arrive()
        ready = self.life.wait_ready(10)
        process.exit(signum=signal.SIGKILL)
        self.assertState(QUARANTINED)
        self.assertEqual(
            self.worker.last_error,
            "quarantined: failed 1 times within 60 s (last: killed by SIGKILL)",
        )
        self.assertEqual((self.worker.restarts, self.reconciles), (0, []))
        self.successResultOf(ready)  # nobody waits for a quarantined worker

    def test_starting_flapped(self):
        self.check_flapped(self.starting)

    def test_running_flapped(self):
        self.check_flapped(self.running)

    def test_unresponsive_flapped(self):
        self.check_flapped(self.unresponsive)

    def check_orphaned(self, arrive, state):
        arrive()
        pid = self.worker.pid
        self.life.orphaned()
        self.assertState(state)
        self.assertTrue(self.worker.adopted)
        self.processes.table[pid] = "w1@h"
        self.life.stop("asked")
        self.assertEqual(self.processes.signals, [(pid, s) for s in TERM_CONT])

    def test_starting_orphaned(self):
        self.check_orphaned(self.starting, STARTING)

    def test_running_orphaned(self):
        self.check_orphaned(self.running, RUNNING)

    def test_unresponsive_orphaned(self):
        self.check_orphaned(self.unresponsive, UNRESPONSIVE)

    # failed: up, but it says it cannot reach its broker

    def check_cannot_connect(self, arrive):
        arrive()
        ready = self.life.wait_ready(10)
        self.writes("[x: INFO/MainProcess] Connected to nothing yet", CANNOT_RESOLVE)
        self.assertState(FAILED)
        self.assertEqual(self.worker.last_error, RESOLVE_ERROR)
        # Whoever waits for it to come up is told now, not at the timeout.
        told = self.successResultOf(ready)["state"]
        self.assertEqual(told, "running" if arrive == self.running else "failed")
        self.assertEqual(self.pending_calls(), [])

    def test_starting_cannot_connect(self):
        self.check_cannot_connect(self.starting)

    def test_running_cannot_connect(self):
        self.check_cannot_connect(self.running)

    def test_unresponsive_cannot_connect(self):
        self.check_cannot_connect(self.unresponsive)

    def test_failed_cannot_connect(self):
        self.failed()
        self.writes(
            "[x: ERROR/MainProcess] consumer: Cannot connect to amqp://me:**@w1:5672//: "
            "[Errno 111] Connection refused."
        )
        self.assertState(FAILED)
        self.assertEqual(
            self.worker.last_error,
            "cannot reach its broker: connection refused ([Errno 111] Connection refused)",
        )

    def test_failed_pong(self):
        self.failed()
        self.assertTrue(self.life.pong())
        self.assertState(RUNNING)
        # Why it failed stays until something else goes wrong.
        self.assertEqual(self.worker.last_error, RESOLVE_ERROR)

    def test_failed_ping_missed(self):
        self.failed()
        self.assertEqual(self.life.ping_missed(), 1)
        self.assertState(FAILED)
        self.assertEqual(self.worker.process.signals, [])

    def test_failed_stop_asked(self):
        self.check_stop_asked(self.failed)

    def test_failed_restart_asked(self):
        self.check_restart_asked(self.failed)

    def test_failed_crashed(self):
        # Celery gives up (access refused is unrecoverable): its reason,
        # not a traceback's last line, says why.
        self.check_crashed(self.failed, f"exited with status 1: {RESOLVE_ERROR}")

    def test_failed_flapped(self):
        self.check_flapped(self.failed)

    def test_failed_orphaned(self):
        self.check_orphaned(self.failed, FAILED)

    def adopt_with_log(self, *lines):
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "worker.log"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
        self.processes.table[4242] = "w1@h"
        self.life.adopt(4242)

    def test_adopted_still_failing_is_failed_at_once(self):
        # Its next attempt may be half a minute away: the log says it now.
        self.adopt_with_log(CANNOT_RESOLVE, "Trying again in 30.00 seconds... (9/100)")
        self.assertState(FAILED)
        self.assertEqual(self.worker.last_error, RESOLVE_ERROR)

    def test_adopted_after_it_connected_is_starting(self):
        self.adopt_with_log(
            CANNOT_RESOLVE, "[x: INFO/MainProcess] Connected to amqp://guest:**@h:5672//",
        )
        self.assertState(STARTING)
        self.assertIsNone(self.worker.last_error)

    def test_access_refused_and_tls_failures_are_named(self):
        self.starting()
        self.writes(
            "[x: CRITICAL/MainProcess] Unrecoverable error: AccessRefused(403, "
            "'ACCESS_REFUSED - Login was refused using authentication mechanism "
            "PLAIN.', (0, 0), '')"
        )
        self.assertTrue(self.worker.last_error.startswith(
            "cannot reach its broker: access refused (AccessRefused(403"))
        self.writes(
            "[x: ERROR/MainProcess] consumer: Cannot connect to amqps://g:**@h:5671//: "
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed."
        )
        self.assertEqual(
            self.worker.last_error,
            "cannot reach its broker: TLS: the broker's certificate is not trusted: refused "
            "([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed)",
        )
        self.assertNotIn("**", self.worker.last_error)
        self.writes(
            "[x: ERROR/MainProcess] consumer: Cannot connect to amqps://g:**@h:5671//: "
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, "
            "certificate is not valid for 'h'. (_ssl.c:1006)."
        )
        self.assertTrue(self.worker.last_error.startswith(
            "cannot reach its broker: TLS: the broker's certificate is not for its host "
            "name: refused ([SSL: CERTIFICATE_VERIFY_FAILED]"), self.worker.last_error)
        self.writes(
            "[x: ERROR/MainProcess] consumer: Cannot connect to amqps://g:**@h:5672//: "
            "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)."
        )
        self.assertTrue(self.worker.last_error.startswith(
            "cannot reach its broker: TLS failure ([SSL: WRONG_VERSION_NUMBER]"))

    # stopping

    def test_stopping_pong(self):
        self.stopping()
        self.assertFalse(self.life.pong())
        self.assertState(STOPPING)

    def test_stopping_stop_asked(self):
        process = self.stopping()
        again = self.life.stop("again")
        self.assertState(STOPPING)
        self.assertEqual(process.signals, TERM_CONT)
        process.exit(signum=signal.SIGTERM)
        self.successResultOf(again)
        self.successResultOf(self.stopped)

    def test_stopping_restart_asked(self):
        process = self.stopping()
        self.worker.attempt = 3
        restarted = self.life.restart()
        self.assertState(STOPPING)
        self.assertEqual(self.worker.attempt, 0)
        process.exit(signum=signal.SIGTERM)
        self.successResultOf(restarted)

    def test_stopping_kill_timeout(self):
        process = self.stopping()
        self.reactor.advance(10)
        self.assertState(STOPPING)
        self.assertEqual(process.signals, [*TERM_CONT, signal.SIGKILL])

    def test_stopping_watch(self):
        self.adopted_stopping()
        self.assertEqual(self.processes.signals, [(4242, s) for s in TERM_CONT])
        self.reactor.advance(0.1)
        self.assertState(STOPPING)
        del self.processes.table[4242]
        self.reactor.advance(0.1)
        self.assertState(STOPPED)
        self.successResultOf(self.stopped)
        self.assertEqual(self.pending_calls(), [])

    def test_stopping_orphaned(self):
        self.stopping()
        pid = self.worker.pid
        self.processes.table[pid] = "w1@h"
        self.life.orphaned()
        self.assertState(STOPPING)
        del self.processes.table[pid]
        self.reactor.advance(0.1)  # watched by pid now
        self.assertState(STOPPED)
        self.successResultOf(self.stopped)

    def test_stopping_exited(self):
        process = self.stopping()
        process.exit(signum=signal.SIGTERM)
        self.assertState(STOPPED)
        self.successResultOf(self.stopped)
        self.assertEqual((self.worker.restarts, self.worker.last_error), (0, None))
        self.assertEqual((self.reconciles, self.pending_calls()), ([], []))

    def test_stopping_crashed(self):
        process = self.stopping(failure="did not answer ping")
        process.exit(signum=signal.SIGTERM)
        self.assertState(STOPPED)
        self.successResultOf(self.stopped)
        self.assertEqual(self.worker.last_error, "did not answer ping")
        self.assertEqual((self.worker.restarts, self.reconciles), (1, [0.0]))

    def test_stopping_flapped(self):
        self.make(max_restarts=0)
        process = self.stopping(failure="did not answer ping")
        process.exit(signum=signal.SIGKILL)
        self.assertState(QUARANTINED)
        self.successResultOf(self.stopped)
        self.assertIn("(last: did not answer ping)", self.worker.last_error)

    def test_stopping_spawn_failed(self):
        # Spawned, but its pid file could not be written: stopped at once.
        self.make(max_restarts=5)
        os.makedirs(os.path.join(self.directory, "worker.pid"))
        self.reactor.on_signal = None  # it takes its time to stop
        self.assertFalse(self.life.start(ARGV, {}, "spec1"))
        self.assertState(STOPPING)
        self.worker.process.exit(signum=signal.SIGTERM)
        self.assertState(START_FAILED)
        self.assertEqual((self.worker.pid, self.worker.restarts), (None, 1))
        self.assertIn("cannot start: [Errno 21] Is a directory", self.worker.last_error)


class NoRowTests(LifecycleTestCase):
    """An event its state has no row for changes nothing."""

    def test_ping_missed_while_stopped(self):
        self.life.ping_missed()
        self.assertState(STOPPED)
        self.assertEqual(self.worker.missed, 0)

    def test_start_while_up_spawns_nothing(self):
        self.running()
        self.assertFalse(self.life.start(ARGV, {}, "spec2"))
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertState(RUNNING)

    def test_an_end_while_stopped_is_ignored(self):
        self.life.ended(None)
        self.assertState(STOPPED)
        self.assertEqual(self.worker.restarts, 0)

    def test_a_deleted_workers_failing_stop_is_no_failure(self):
        process = self.stopping(failure="did not answer ping")
        self.life.retire()
        process.exit(signum=signal.SIGTERM)
        self.assertState(STOPPED)
        self.assertEqual((self.worker.restarts, self.reconciles), (0, []))


class TimerTests(LifecycleTestCase):
    def test_kill_follows_term_after_the_kill_timeout_exactly(self):
        process = self.stopping()
        self.reactor.advance(9.99)
        self.assertEqual(process.signals, TERM_CONT)
        self.reactor.advance(0.01)
        self.assertEqual(process.signals, [*TERM_CONT, signal.SIGKILL])

    def test_an_exit_cancels_the_kill(self):
        process = self.stopping()
        process.exit(signum=signal.SIGTERM)
        self.assertEqual(self.pending_calls(), [])

    def test_restarts_back_off_doubling(self):
        self.make(max_restarts=10, restart_window=1000.0)
        delays = []
        for _ in range(5):
            self.starting().exit(status=1)
            delay = self.worker.next_start - self.reactor.seconds()
            delays.append(delay)
            if delay:
                self.reactor.advance(delay * 0.99)
                self.assertFalse(self.life.due())
                self.reactor.advance(delay * 0.01)
            self.assertTrue(self.life.due())
        # At once, then 0.5, 1, 2, 4 s after each failure.
        self.assertEqual(delays, [0.0, 0.5, 1.0, 2.0, 4.0])
        self.assertEqual(len(self.reconciles), 5 + 4)  # each death, each backoff

    def test_a_worker_that_ran_stable_starts_its_backoff_over(self):
        self.make(max_restarts=10, restart_window=1000.0)
        self.starting().exit(status=1)
        self.starting().exit(status=1)
        self.assertEqual(self.worker.attempt, 2)
        self.reactor.advance(1)
        self.starting()
        self.reactor.advance(30)
        self.worker.process.exit(status=1)
        self.assertEqual(self.worker.attempt, 1)
        self.assertTrue(self.life.due())

    def test_the_quarantine_ends_on_time(self):
        self.quarantined()
        self.reactor.advance(299.9)
        self.assertState(QUARANTINED)
        self.reactor.advance(0.1)
        self.assertState(STOPPED)

    def test_wait_ready_times_out_with_the_status_then(self):
        self.starting()
        ready = self.life.wait_ready(2)
        self.reactor.advance(1.99)
        self.assertNoResult(ready)
        self.reactor.advance(0.01)
        self.assertEqual(self.successResultOf(ready)["state"], STARTING)
        self.assertEqual(self.worker.ready_waiters, [])
        self.assertEqual(self.pending_calls(), [])

    def test_wait_ready_of_a_running_worker_fires_at_once(self):
        self.running()
        self.assertEqual(self.successResultOf(self.life.wait_ready(2))["state"], RUNNING)

    def test_cancel_timers(self):
        self.make(max_restarts=5)
        self.starting().exit(status=1)
        self.starting().exit(status=1)
        self.assertEqual(len(self.pending_calls()), 1)  # the backoff
        self.life.cancel_timers()
        self.assertEqual(self.pending_calls(), [])


class ClosedTests(LifecycleTestCase):
    """After the supervisor stopped, nothing of a worker's is scheduled."""

    def test_an_exit_after_the_stop_schedules_no_restart(self):
        self.make(max_restarts=5)
        self.starting().exit(status=1)
        process = self.starting()
        self.life.cancel_timers()
        process.exit(status=1)
        self.assertEqual(self.pending_calls(), [])

    def test_who_waits_for_ready_is_answered_at_the_stop(self):
        self.make()
        self.starting()
        ready = self.life.wait_ready(10)
        self.life.cancel_timers()
        self.assertEqual(self.successResultOf(ready)["state"], STARTING)
        self.assertEqual(self.pending_calls(), [])
