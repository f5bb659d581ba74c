"""The supervisor's logic on a fake process reactor, fake remote control and
a Clock: starting, liveness, restarts with backoff, quarantine, kill
escalation, adoption, queue and autoscale reconciliation, stopping.
"""

import os
import signal

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.metrics import Metrics
from cyme.supervision.fakes import (
    FakeControl, FakeLauncher, FakeProcessReactor, FakeProcessTable,
)
from cyme.supervision.interfaces import IControl, IProcessTable
from cyme.state.models import App, Instance, Queue
from cyme.state.store import MemoryStore
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.liveness import ping_delays
from cyme.supervision.workerstate import Policy, restart_backoff


class BackoffTests(SynchronousTestCase):
    """The restart backoff (L{cyme.backoff} with the workers' figures)."""

    def test_first_restart_is_immediate(self):
        self.assertEqual(restart_backoff(jitter=lambda: 1.0)(0), 0.0)

    def test_doubles_to_the_cap_of_a_minute(self):
        delay = restart_backoff(jitter=lambda: 1.0)
        self.assertEqual([delay(n) for n in range(1, 5)], [0.5, 1.0, 2.0, 4.0])
        self.assertEqual([delay(n) for n in (8, 9, 30)], [60.0, 60.0, 60.0])

    def test_jitter_stays_in_the_upper_half(self):
        self.assertEqual(restart_backoff(jitter=lambda: 0.0)(3), 1.0)
        self.assertEqual(restart_backoff(jitter=lambda: 1.0)(3), 2.0)

    def test_ping_delays_double_up_to_the_cap(self):
        self.assertEqual(list(ping_delays(0.1, 1.6)), [0.1, 0.2, 0.4, 0.8, 1.6])


class SupervisorTestCase(SynchronousTestCase):
    #: The branch's worker policy (None: the default one).
    worker_policy = None

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.control = FakeControl(self.reactor)
        self.processes = FakeProcessTable()
        self.store = MemoryStore()
        self.store.put_app(App("foo"))
        self.store.put_queue("foo", Queue("tasks"))
        self.store.put_queue("foo", Queue("other", exchange="ex", routing_key="rk"))
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.supervisor = None

    def make(self, **kwargs):
        """A supervisor with the test's figures; C{kwargs} override L{Policy}'s."""
        figures = dict(
            interval=5.0, kill_timeout=10.0, start_timeout=30.0,
            backoff=restart_backoff(jitter=lambda: 1.0), wait_after_broker_revived=30.0,
        )
        figures.update(kwargs)
        self.supervisor = Supervisor(
            self.store, self.control, self.reactor, self.root, hostname="h",
            python="/py", processes=self.processes, policy=Policy(**figures),
            worker_policy=self.worker_policy, **self.options(),
        )
        return self.supervisor

    def options(self):
        """More of the supervisor's arguments (a test case's own)."""
        return {}

    def start(self, **kwargs):
        supervisor = self.make(**kwargs)
        supervisor.startService()
        self.addCleanup(self.stop)
        return supervisor

    def stop(self):
        if self.supervisor is not None and self.supervisor.running:
            self.successResultOf(self.supervisor.stopService())
        self.assertEqual(
            [c for c in self.reactor.getDelayedCalls() if c.active()], [],
            "the supervisor left delayed calls behind",
        )

    def pump(self, seconds, step=0.05):
        """Let C{seconds} pass in small steps, as a real clock would."""
        # Aim a hair past the target so that float sums of steps never
        # stop just short of a call due exactly then.
        target = self.reactor.seconds() + seconds + 1e-9
        while self.reactor.seconds() + step < target:
            self.reactor.advance(step)
        self.reactor.advance(target - self.reactor.seconds())

    def add(self, name="w1", **fields):
        self.store.put_instance(Instance(name=name, app="foo", **fields))
        if self.supervisor is not None:
            self.supervisor.reconcile()
            self.reactor.advance(0)

    def boot(self, name="w1"):
        """The worker of C{name} comes up (answers pings)."""
        process = self.process(name)
        self.control.up(f"{name}@h", queues=[f"dq.{name}"])
        self.reactor.advance(0.05)
        return process

    def process(self, name="w1"):
        live = [p for p in self.reactor.live() if p.node() == f"{name}@h"]
        self.assertEqual(len(live), 1, f"expected one live process for {name}")
        return live[0]

    def state(self, name="w1"):
        return self.supervisor.status(name)["state"]


class StartTests(SupervisorTestCase):
    def test_fakes_implement_the_interfaces(self):
        self.assertTrue(verifyObject(IControl, self.control))
        self.assertTrue(verifyObject(IProcessTable, self.processes))

    def test_new_instance_spawns_a_celery_worker(self):
        self.start()
        self.add("w1", queues=["tasks"], max_concurrency=4, min_concurrency=2)
        process = self.process("w1")
        args = process.args
        self.assertEqual(args[:3], ["/py", "-m", "cyme.supervision.workerexec"])
        self.assertIn("worker", args)
        self.assertEqual(args[args.index("-Q") + 1], "dq.w1,tasks")
        self.assertIn("--autoscale=4,2", args)
        self.assertIn("--without-mingle", args)
        self.assertIn("-E", args)
        self.assertEqual(process.path, os.path.join(self.root, "w1"))
        with open(os.path.join(self.root, "w1", "worker.pid")) as f:
            self.assertEqual(f.read(), f"{process.pid}\n")
        self.assertTrue(process.stdin_closed)
        self.assertEqual(self.state(), "starting")
        self.assertEqual(self.supervisor.status("w1")["pid"], process.pid)

    def test_running_after_first_pong(self):
        self.start()
        self.add()
        self.boot()
        self.assertEqual(self.state(), "running")

    def test_wait_ready_fires_on_first_pong(self):
        self.start()
        self.add()
        d = self.supervisor.wait_ready("w1", 10)
        self.assertNoResult(d)
        self.boot()
        self.assertEqual(self.successResultOf(d)["state"], "running")

    def test_wait_ready_times_out_with_state_starting(self):
        self.start()
        self.add()
        d = self.supervisor.wait_ready("w1", 2)
        self.pump(2)
        self.assertEqual(self.successResultOf(d)["state"], "starting")

    def test_disabled_instance_is_not_started_and_stops_when_disabled(self):
        self.start()
        self.add("w1", is_enabled=False)
        self.assertEqual(self.reactor.live(), [])
        self.add("w2")
        process = self.boot("w2")
        self.add("w2", is_enabled=False)
        self.assertIn(signal.SIGTERM, process.signals)
        self.assertEqual(self.state("w2"), "stopped")

    def test_configuration_change_restarts_the_worker(self):
        self.start()
        self.add("w1")
        first = self.boot()
        self.add("w1", pool="solo")
        self.assertIn(signal.SIGTERM, first.signals)
        second = self.process()
        self.assertNotEqual(first.pid, second.pid)
        self.assertIn("solo", second.args)

    def test_one_ping_message_per_round_whatever_the_number_of_workers(self):
        self.start()
        for n in range(50):
            self.add(f"w{n}")
            self.control.up(f"w{n}@h")
        self.pump(5)
        self.control.sent.clear()
        self.pump(5)
        # One ping, and one of each question asking what they consume,
        # for all 50: the cost of a tick does not grow with the workers.
        self.assertEqual([m[0] for m in self.control.sent],
                         ["ping", "active_queues", "stats"])
        self.assertEqual([len(m[1]) for m in self.control.sent], [50, 50, 50])


class DeathTests(SupervisorTestCase):
    def test_dead_worker_is_restarted_at_once(self):
        self.start()
        self.add()
        first = self.boot()
        first.exit(signum=signal.SIGKILL)
        self.reactor.advance(0)
        second = self.process()
        self.assertNotEqual(first.pid, second.pid)
        status = self.supervisor.status("w1")
        self.assertEqual(status["restarts"], 1)
        self.assertEqual(status["last_error"], "killed by SIGKILL")

    def start_after_an_earlier_run(self):
        """w1 started, its log holding an earlier run's lines; the log's path."""
        log = os.path.join(self.root, "w1", "worker.log")
        os.makedirs(os.path.dirname(log))
        with open(log, "w") as f:
            f.write("an earlier run's last words\n")
        self.start()
        self.add()
        return log

    def test_a_worker_that_fails_says_why_in_last_error(self):
        log = self.start_after_an_earlier_run()
        process = self.process()
        with open(log, "a") as f:
            f.write("Traceback (most recent call last):\n  ...\n"
                    "amqp.exceptions.PreconditionFailed: inequivalent arg 'type'"
                    " for exchange 'tasks'\n\n")
        process.exit(status=1)
        self.reactor.advance(0)
        self.assertEqual(
            self.supervisor.status("w1")["last_error"],
            "exited with status 1: amqp.exceptions.PreconditionFailed: "
            "inequivalent arg 'type' for exchange 'tasks'",
        )
        # Killed, its last line is no reason: the signal is.
        with open(log, "a") as f:
            f.write("celery@w1 ready.\n")
        self.process().exit(signum=signal.SIGKILL)
        self.reactor.advance(0)
        self.assertEqual(self.supervisor.status("w1")["last_error"], "killed by SIGKILL")

    def test_a_worker_failing_silently_blames_no_earlier_run(self):
        self.start_after_an_earlier_run()
        self.process().exit(status=3)
        self.reactor.advance(0)
        self.assertEqual(self.supervisor.status("w1")["last_error"], "exited with status 3")

    def test_repeated_deaths_back_off(self):
        self.start()
        self.add()
        self.boot().exit(status=1)
        self.reactor.advance(0)
        self.process().exit(status=1)
        self.reactor.advance(0)
        # Second failure within the stable period: 0.5 s before the next try.
        self.assertEqual(self.reactor.live(), [])
        self.pump(0.45)
        self.assertEqual(self.reactor.live(), [])
        self.pump(0.1)
        self.assertEqual(len(self.reactor.live()), 1)

    def test_flapping_instance_is_quarantined_then_retried(self):
        self.start(max_restarts=3, restart_window=60.0, quarantine=300.0)
        self.add()
        for _ in range(4):
            self.pump(10)
            self.process().exit(status=1)
            self.reactor.advance(0)
        status = self.supervisor.status("w1")
        self.assertEqual(status["state"], "quarantined")
        self.assertIn("exited with status 1", status["last_error"])
        self.assertEqual(self.reactor.live(), [])
        self.pump(299)
        self.assertEqual(self.reactor.live(), [])
        self.pump(5)
        self.assertEqual(len(self.reactor.live()), 1)

    def test_manual_restart_clears_quarantine(self):
        self.start(max_restarts=1, quarantine=300.0)
        self.add()
        for _ in range(2):
            self.pump(10)
            self.process().exit(status=1)
            self.reactor.advance(0)
        self.assertEqual(self.state(), "quarantined")
        self.successResultOf(self.supervisor.restart("w1"))
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.live()), 1)
        self.assertEqual(self.state(), "starting")


class LivenessTests(SupervisorTestCase):
    def test_a_round_that_is_not_answered_replaces_the_worker(self):
        self.start(interval=1.0, kill_timeout=1.0)
        self.add()
        hung = self.boot()
        self.control.nodes["w1@h"].responsive = False
        self.reactor.on_signal = None
        # Within a 1 s tick: pings at 0.1, 0.2, 0.4 s, then TERM; KILL 1 s later.
        self.pump(1.8)
        self.assertEqual(hung.signals, [signal.SIGTERM, signal.SIGCONT])
        self.pump(1.0)
        self.assertEqual(hung.signals, [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL])
        hung.exit(signum=signal.SIGKILL)
        self.reactor.advance(0)
        self.assertNotEqual(self.process().pid, hung.pid)

    def test_hung_worker_is_killed_and_replaced(self):
        self.reactor.on_signal = None  # a stopped process ignores TERM
        self.start(max_missed=2, kill_timeout=10.0)
        self.add()
        hung = self.boot()
        self.control.nodes["w1@h"].responsive = False
        self.pump(8.5)  # tick at 5 s, then pings 0.1 … 1.6 s: one missed round
        self.assertEqual(self.state(), "unresponsive")
        self.assertEqual(hung.signals, [])
        self.pump(5)  # second missed round: TERM
        self.assertEqual(hung.signals, [signal.SIGTERM, signal.SIGCONT])
        self.pump(10)  # did not stop: KILL
        self.assertEqual(hung.signals, [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL])
        hung.exit(signum=signal.SIGKILL)
        self.reactor.advance(0)
        self.assertEqual(self.supervisor.status("w1")["last_error"],
                         "did not answer ping in 2 rounds")
        self.assertNotEqual(self.process().pid, hung.pid)

    def test_pings_are_retried_with_backoff_within_a_round(self):
        self.start(max_missed=2)
        self.add()
        self.boot()
        self.control.nodes["w1@h"].responsive = False
        self.control.sent.clear()
        self.pump(8.5)
        self.assertEqual(len(self.control.messages("ping")), 5)

    def test_slow_starter_gets_its_start_timeout(self):
        self.start(start_timeout=30.0)
        self.add()
        slow = self.process()
        for _ in range(5):
            self.pump(5)
        self.assertEqual(self.state(), "starting")
        self.assertEqual(slow.signals, [])
        self.pump(10)
        self.assertEqual(slow.signals, [signal.SIGTERM])
        self.assertEqual(self.supervisor.status("w1")["last_error"], "did not answer ping")
        self.assertNotEqual(self.process().pid, slow.pid)

    def test_nothing_judged_while_the_broker_is_down_nor_soon_after(self):
        self.start(wait_after_broker_revived=30.0)
        self.add()
        process = self.boot()
        self.control.nodes["w1@h"].responsive = False
        self.control.set_connected(False)
        for _ in range(10):
            self.pump(5)
        self.control.set_connected(True)
        for _ in range(5):
            self.pump(5)
        self.assertEqual(process.signals, [])
        self.assertEqual(self.state(), "running")
        self.control.nodes["w1@h"].responsive = True
        self.pump(5)
        self.assertEqual(self.state(), "running")
        self.assertEqual(process.signals, [])


class QueueTests(SupervisorTestCase):
    def test_missing_queue_is_added_and_verified_next_tick(self):
        self.start()
        self.add("w1", queues=["tasks"])
        self.boot()  # running: checked at once
        self.assertEqual(self.control.nodes["w1@h"].queue_names(), ["dq.w1", "tasks"])
        self.assertIsNone(self.supervisor.workers["w1"].worker.verified)
        # The next tick asks again, finds it right: verified, nothing sent.
        self.control.sent.clear()
        self.pump(5)
        self.assertEqual([m[0] for m in self.control.sent], ["ping", "active_queues", "stats"])
        self.assertIsNotNone(self.supervisor.workers["w1"].worker.verified)
        self.control.sent.clear()
        self.pump(5)
        self.assertEqual([m[0] for m in self.control.sent], ["ping", "active_queues", "stats"])

    def test_extra_queue_is_cancelled_but_never_the_dead_letter_queue(self):
        self.start()
        self.add("w1")
        self.boot()
        self.control.up("w1@h", queues=["dq.w1", "stray"])
        self.store.put_instance(Instance(name="w1", app="foo", max_concurrency=1))
        self.supervisor.workers["w1"].worker.verified = None
        self.pump(5)
        self.assertEqual(self.control.nodes["w1@h"].queue_names(), ["dq.w1"])

    def ask_w1_and_a_slow_w2(self):
        """w1 is to consume C{tasks}; asking w1 and w2 what they consume
        takes a second, as w2 is slow to answer."""
        self.start()
        self.add("w1")
        self.boot("w1")
        self.add("w2")
        self.boot("w2")
        self.control.nodes["w2@h"].responsive = False
        self.supervisor.workers["w2"].worker.verified = None
        self.add("w1", queues=["tasks"])
        self.assertEqual(self.control.sent[-1][0], "active_queues")

    def test_a_queue_deleted_while_the_workers_are_asked_is_dropped_quietly(self):
        self.ask_w1_and_a_slow_w2()
        self.store.delete_queue("foo", "tasks")
        self.pump(2.1)  # active_queues, then stats: a second each
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.control.nodes["w1@h"].queue_names(), ["dq.w1"])

    def test_stopping_while_a_worker_is_told_its_queues_logs_nothing(self):
        self.ask_w1_and_a_slow_w2()
        # w1 answered what it consumes; by the time it is told, it is slow.
        self.control.nodes["w1@h"].responsive = False
        self.pump(2.05)
        self.assertEqual(self.control.sent[-1][0], "add_consumer")
        self.successResultOf(self.supervisor.stopService())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_declaration_change_rebinds(self):
        self.start()
        self.add("w1", queues=["other"])
        self.boot()
        self.pump(5)
        self.store.put_queue("foo", Queue("other", exchange="ex2", routing_key="rk2"))
        self.supervisor.reconcile()
        self.reactor.advance(0)
        queue = [q for q in self.control.nodes["w1@h"].queues if q["name"] == "other"][0]
        self.assertEqual((queue["exchange"]["name"], queue["routing_key"]), ("ex2", "rk2"))

    def test_autoscale_applied_live(self):
        self.start()
        self.add("w1")
        self.boot()
        self.pump(5)
        self.add("w1", max_concurrency=6, min_concurrency=2)
        node = self.control.nodes["w1@h"]
        self.assertEqual((node.max, node.min), (6, 2))
        self.assertEqual(len(self.reactor.live()), 1)


class ReservedNameTests(SupervisorTestCase):
    """
    Queue records an older version let through, on a branch of the cluster
    named prod: one consumes the cluster's bus, another binds to its
    exchange.  Their workers never start; an instance of other queues does.
    """

    def options(self):
        return {"cluster": "prod"}

    def test_a_worker_on_the_clusters_bus_is_not_started(self):
        self.store.put_queue("foo", Queue("prod.branch.b2"))
        self.store.put_queue("foo", Queue("tap", exchange="prod.bus.direct",
                                          routing_key="b2"))
        self.start()
        self.add("w1", queues=["prod.branch.b2"])
        self.add("w2", queues=["tap"])
        self.add("w3", queues=["tasks"])
        self.pump(1)
        for name, field, reserved in (("w1", "name", "prod.branch.b2"),
                                      ("w2", "exchange", "prod.bus.direct")):
            status = self.supervisor.status(name)
            self.assertEqual((status["state"], status["pid"]), ("failed", None), name)
            self.assertEqual(status["last_error"],
                             f"cannot start: {field} {reserved!r} is reserved: names "
                             "starting with 'prod.' belong to cyme, Celery or the broker")
        self.assertEqual([p.node() for p in self.reactor.live()], ["w3@h"])


class StopTests(SupervisorTestCase):
    def test_deleted_instance_is_stopped_and_its_directory_removed(self):
        self.start()
        self.add("w1", queues=["tasks"])
        process = self.boot()
        self.pump(5)
        self.store.delete_instance("w1")
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.assertIn(("cancel_consumer", ["w1@h"], ("tasks",)), self.control.sent)
        self.assertEqual(process.signals, [signal.SIGTERM])
        self.assertFalse(os.path.exists(os.path.join(self.root, "w1")))
        self.assertNotIn("w1", self.supervisor.workers)

    def test_stop_kills_after_the_timeout(self):
        self.reactor.on_signal = None
        self.start(kill_timeout=10.0)
        self.add("w1")
        process = self.boot()
        self.store.delete_instance("w1")
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.pump(9.9)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGCONT])
        self.pump(0.1)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL])
        self.assertTrue(os.path.exists(os.path.join(self.root, "w1")))
        process.exit(signum=signal.SIGKILL)
        self.assertFalse(os.path.exists(os.path.join(self.root, "w1")))

    def test_stopping_the_branch_leaves_workers_running(self):
        self.start()
        self.add("w1")
        process = self.boot()
        self.successResultOf(self.supervisor.stopService())
        self.assertEqual(process.signals, [])
        self.assertFalse(process.ended)

    def test_stop_workers_on_exit(self):
        self.reactor.on_signal = None
        self.start(stop_workers_on_exit=True, kill_timeout=10.0)
        self.add("w1")
        process = self.boot()
        d = self.supervisor.stopService()
        self.assertNoResult(d)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGCONT])
        process.exit(signum=signal.SIGTERM)
        self.successResultOf(d)


class AdoptionTests(SupervisorTestCase):
    def leave_worker(self, name, pid):
        directory = os.path.join(self.root, name)
        os.makedirs(directory)
        with open(os.path.join(directory, "worker.pid"), "w") as f:
            f.write(f"{pid}\n")
        self.processes.table[pid] = f"{name}@h"
        return directory

    def test_live_worker_is_adopted_not_restarted(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.leave_worker("w1", 4242)
        self.control.up("w1@h")
        self.start()
        self.pump(0.1)
        self.assertEqual(self.reactor.processes, [])
        status = self.supervisor.status("w1")
        self.assertEqual((status["state"], status["pid"]), ("running", 4242))

    def test_stale_pidfile_starts_a_new_worker(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.leave_worker("w1", 4242)
        del self.processes.table[4242]
        self.start()
        self.assertEqual(len(self.reactor.live()), 1)

    def test_pid_reused_by_another_process_is_not_adopted(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.leave_worker("w1", 4242)
        self.processes.table[4242] = "someone-else@h"
        self.start()
        self.assertEqual(len(self.reactor.live()), 1)
        self.assertEqual(self.processes.signals, [])

    def test_worker_of_a_deleted_instance_is_stopped_and_removed(self):
        directory = self.leave_worker("gone", 4343)
        self.start()
        self.assertEqual(self.processes.signals, [(4343, signal.SIGTERM), (4343, signal.SIGCONT)])
        self.pump(0.1)
        self.assertFalse(os.path.exists(directory))

    def test_adopted_worker_death_is_noticed_and_restarted(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.leave_worker("w1", 4242)
        self.control.up("w1@h")
        self.start()
        del self.processes.table[4242]
        self.pump(5)
        self.assertEqual(len(self.reactor.live()), 1)


    def test_worker_still_starting_when_the_branch_stopped_is_adopted(self):
        """
        The branch stops before its new worker has come up: the next run
        finds the worker by the pid file the branch wrote at spawn and
        waits for it, instead of starting a second worker beside it.
        """
        self.start()
        self.add("w1")
        pid = self.process("w1").pid
        self.stop()
        # The worker outlives the branch; it comes up while none runs.
        self.processes.table[pid] = "w1@h"
        self.control.up("w1@h")
        self.start()
        self.pump(0.1)
        self.assertEqual(len(self.reactor.processes), 1)
        status = self.supervisor.status("w1")
        self.assertEqual((status["state"], status["pid"]), ("running", pid))

    def test_a_dead_workers_pid_file_is_removed(self):
        self.start()
        self.add("w1")
        process = self.process("w1")
        pidfile = os.path.join(self.root, "w1", "worker.pid")
        self.assertTrue(os.path.exists(pidfile))
        process.exit(status=1)
        self.reactor.advance(0)
        with open(pidfile) as f:
            self.assertNotEqual(f.read().strip(), str(process.pid))


class FlakyStore(MemoryStore):
    """A store whose reads fail while C{broken} is set."""

    broken = False

    def instances(self, app=None):
        if self.broken:
            raise OSError("disk on fire")
        return super().instances(app)


class RobustnessTests(SupervisorTestCase):
    def test_a_failing_tick_is_logged_and_the_next_one_runs(self):
        store = FlakyStore()
        store.put_app(App("foo"))
        self.store = store
        self.start()
        store.broken = True
        self.pump(5)
        self.assertTrue(self.flushLoggedErrors(OSError))
        store.broken = False
        self.add("w1")
        self.pump(5)
        self.assertEqual(len(self.reactor.live()), 1)


class RevivalTests(SupervisorTestCase):
    def test_a_worker_starting_when_the_broker_came_back_is_up_at_its_first_pong(self):
        self.start(wait_after_broker_revived=30.0)
        self.add()
        self.control.set_connected(False)
        self.pump(1)
        self.control.set_connected(True)
        self.control.up("w1@h")
        self.pump(1)
        self.assertEqual(self.state(), "running")

    def test_autoscale_of_a_solo_worker_does_not_restart_it(self):
        self.start()
        self.add("w1", pool="solo")
        first = self.boot()
        self.add("w1", pool="solo", max_concurrency=4)
        self.assertEqual(first.signals, [])
        self.assertNotIn("-c", first.args)


class RoundTests(SupervisorTestCase):
    def test_worker_up_during_a_ping_round_is_not_judged(self):
        self.store.put_instance(Instance("w1", "foo"))
        supervisor = self.start(interval=1.0)
        self.pump(0.5)  # the round's last ping (t=0.3) found no worker yet
        self.control.up("w1@h")  # the start-up poll gets the first pong
        self.pump(0.4)  # the round ends unanswered at t=0.7
        worker = supervisor.workers["w1"].worker
        self.assertEqual((worker.state, worker.pid, worker.restarts), ("running", 1001, 0))


class SlowSpawning(FakeProcessReactor):
    """Each spawn holds the reactor for 30 ms: time passes, nothing else runs."""

    def spawnProcess(self, *args, **kwargs):
        self.rightNow += 0.03
        return super().spawnProcess(*args, **kwargs)


class FiguresTests(SupervisorTestCase):
    """What /metrics shows of the supervision: the workers as they are, and timings."""

    def setUp(self):
        super().setUp()
        self.reactor = SlowSpawning()
        self.control = FakeControl(self.reactor)
        self.launcher = FakeLauncher(self.reactor)
        self.metrics = Metrics()

    def options(self):
        return {"launcher": self.launcher, "metrics": self.metrics}

    def sample(self, name, **labels):
        return self.metrics.registry.get_sample_value(name, labels)

    def test_a_tick_is_timed_while_it_holds_the_reactor(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.start()  # its first tick starts w1: 30 ms
        self.pump(5)  # the next has nothing to start
        name = "cyme_supervisor_tick_duration_seconds"
        self.assertEqual(self.sample(name + "_count"), 2)
        self.assertEqual(self.supervisor.metrics()["ticks"], 2)
        self.assertEqual(self.sample(name + "_bucket", le="0.025"), 1)
        self.assertEqual(self.sample(name + "_bucket", le="0.05"), 2)
        self.assertAlmostEqual(self.sample(name + "_sum"), 0.03)

    def test_workers_by_app_and_state_a_failed_start_shown_failed(self):
        self.store.put_app(App("bar"))
        self.start()
        self.add("w1")
        self.boot("w1")
        self.launcher.fail = OSError("fork failed")
        self.add("w2")
        self.assertEqual(self.flushLoggedErrors(), [])  # a warning, no traceback
        self.assertEqual(self.state("w2"), "failed")
        by_app = self.supervisor.metrics()["by_app"]
        self.assertEqual(by_app[("foo", "running")], 1)
        self.assertEqual(by_app[("foo", "failed")], 1)
        # Every state of every app, so that a state emptied shows 0.
        self.assertEqual(by_app[("bar", "running")], 0)
        self.assertEqual({state for _, state in by_app}, {
            "starting", "running", "unresponsive", "failed", "stopping", "stopped",
            "quarantined"})
        self.assertEqual(self.supervisor.metrics()["states"], {"running": 1, "failed": 1})

    def test_restarts_and_quarantines_of_each_instance(self):
        self.start(max_restarts=1, quarantine=300.0)
        self.add("w1")
        for _ in range(2):
            self.pump(10)
            self.process().exit(status=1)
            self.reactor.advance(0)
        self.assertEqual(self.supervisor.metrics()["workers"], [
            {"app": "foo", "instance": "w1", "state": "quarantined", "restarts": 1,
             "quarantines": 1}])
        self.pump(300)  # out of quarantine, it fails twice again
        for _ in range(2):
            self.process().exit(status=1)
            self.reactor.advance(0)
            self.pump(1)
        shown = self.supervisor.metrics()["workers"][0]
        self.assertEqual((shown["state"], shown["restarts"], shown["quarantines"]),
                         ("quarantined", 2, 2))

    def test_the_round_trip_of_liveness_pings(self):
        self.control.latency = 0.004
        self.start(interval=5.0)
        self.add("w1")
        self.boot("w1")
        self.pump(5, step=0.001)
        name = "cyme_worker_ping_round_trip_seconds"
        count = self.sample(name + "_count")
        self.assertGreaterEqual(count, 1)
        self.assertAlmostEqual(self.sample(name + "_sum") / count, 0.004)
