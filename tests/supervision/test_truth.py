"""Supervision that tells the truth, on the fakes and a Clock moved tick by
tick: every sequence of issue 9's table (changes through the API undone at
once, changes made with Celery's own remote control behind cyme's back),
the cost of a tick whatever the number of workers, liveness judged broker
by broker, the C{failed} state and the instance's C{live} field.
"""

import os
import signal

from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from cyme.state.models import App, Broker, Instance
from cyme.supervision.fakes import FakeControl
from cyme.supervision.interfaces import IControl
from tests.supervision.test_supervisor import SupervisorTestCase

TICK = 5.0
CANNOT_RESOLVE = (
    "[2026-12-02 01:10:14,744: ERROR/MainProcess] consumer: Cannot connect to "
    "amqp://me:**@w1:5672//: [Errno -2] Name or service not known.\n"
)


class TruthTestCase(SupervisorTestCase):
    def node(self, name="w1"):
        return self.control.nodes[f"{name}@h"]

    def tick(self, ticks=1):
        """Let C{ticks} supervisor ticks pass."""
        for _ in range(ticks):
            self.pump(TICK)

    def running_w1(self, **fields):
        self.start(interval=TICK)
        self.add("w1", **fields)
        self.boot()
        self.tick()
        self.assertEqual(self.state(), "running")

    def bounds(self, name="w1"):
        node = self.node(name)
        return node.max, node.min

    def ticks_until(self, check, most):
        """The ticks it took until C{check()}; fails after C{most}."""
        for ticks in range(most + 1):
            if check():
                return ticks
            self.tick()
        self.fail(f"not within {most} ticks")


class ThroughTheAPITests(TruthTestCase):
    """A change reaches the worker at once whatever came before (A, B, A)."""

    def test_a_consumer_added_then_deleted_a_second_later(self):
        self.running_w1()
        self.add("w1", queues=["tasks"])
        self.assertEqual(self.node().queue_names(), ["dq.w1", "tasks"])
        self.pump(1)
        self.add("w1", queues=[])
        self.assertEqual(self.node().queue_names(), ["dq.w1"])
        # Confirmed by asking, not assumed: verified on the next tick.
        self.tick()
        worker = self.supervisor.workers["w1"].worker
        self.assertEqual(worker.verified[0], ())
        self.assertEqual(self.node().queue_names(), ["dq.w1"])

    def test_a_consumer_deleted_then_added_back_in_300_ms(self):
        self.running_w1(queues=["tasks"])
        self.assertEqual(self.node().queue_names(), ["dq.w1", "tasks"])
        self.add("w1", queues=[])
        self.assertEqual(self.node().queue_names(), ["dq.w1"])
        self.pump(0.3)
        self.control.sent.clear()
        self.add("w1", queues=["tasks"])
        self.assertEqual([m[0] for m in self.control.messages("add_consumer")],
                         ["add_consumer"])
        self.assertEqual(self.node().queue_names(), ["dq.w1", "tasks"])

    def test_autoscale_there_and_back_a_second_apart(self):
        self.running_w1()
        self.add("w1", max_concurrency=3, min_concurrency=2)
        self.assertEqual(self.bounds(), (3, 2))
        self.pump(1)
        self.add("w1", max_concurrency=1, min_concurrency=1)
        self.assertEqual(self.bounds(), (1, 1))
        self.tick()
        self.assertEqual(self.bounds(), (1, 1))

    def test_a_change_while_the_worker_is_being_asked_is_sent_after(self):
        self.running_w1()
        self.node().responsive = False  # the question takes its timeout
        self.add("w1", queues=["tasks"])
        self.pump(0.5)
        self.node().responsive = True
        self.add("w1", queues=[])
        self.add("w1", queues=["tasks"])
        self.pump(1.5)
        self.assertEqual(self.node().queue_names(), ["dq.w1", "tasks"])


class BehindCymesBackTests(TruthTestCase):
    """Celery's own control (or Flower) changes a worker: put back in two ticks."""

    def test_a_wanted_consumer_cancelled_is_put_back(self):
        self.running_w1(queues=["tasks"])
        self.control.celery_cancel_consumer("w1@h", "tasks")
        self.pump(0.1)
        ticks = self.ticks_until(lambda: "tasks" in self.node().queue_names(), 2)
        self.assertLessEqual(ticks, 2)

    def test_an_unwanted_consumer_added_is_cancelled(self):
        self.running_w1()
        self.control.celery_add_consumer("w1@h", "stray")
        self.ticks_until(lambda: self.node().queue_names() == ["dq.w1"], 2)

    def test_autoscale_changed_is_put_back(self):
        self.running_w1(max_concurrency=1, min_concurrency=1)
        self.control.celery_autoscale("w1@h", 5, 3)
        self.ticks_until(lambda: self.bounds() == (1, 1), 2)

    def live(self):
        """The instance's C{live}, its C{seen_at} checked to be this tick's."""
        live = dict(self.supervisor.status("w1")["live"])
        self.assertGreater(live.pop("seen_at"), self.reactor.seconds() - TICK)
        return live

    def test_the_json_says_what_the_worker_did_when_last_asked(self):
        self.running_w1(queues=["tasks"])
        self.assertEqual(self.live(), {"queues": ["dq.w1", "tasks"], "max": 1, "min": 1})
        self.control.celery_cancel_consumer("w1@h", "tasks")
        self.control.celery_autoscale("w1@h", 5, 3)
        self.tick()
        # Asked: it consumed dq.w1 only, at 5/3; the fixes are sent.
        self.assertEqual(self.live(), {"queues": ["dq.w1"], "max": 5, "min": 3})
        self.assertIsNone(self.supervisor.workers["w1"].worker.verified)
        self.tick()
        self.assertEqual(self.live(), {"queues": ["dq.w1", "tasks"], "max": 1, "min": 1})
        self.assertIsNotNone(self.supervisor.workers["w1"].worker.verified)

    def test_a_fix_that_does_not_take_is_told_again_and_logged(self):
        self.running_w1(queues=["tasks"])
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.control.celery_cancel_consumer("w1@h", "tasks")
        self.node().stubborn = True
        self.control.sent.clear()
        self.tick(3)
        adds = [m for m in self.control.messages("add_consumer")]
        self.assertEqual(adds, [("add_consumer", ["w1@h"], ("tasks",))] * 3)
        worker = self.supervisor.workers["w1"].worker
        self.assertIsNone(worker.verified)
        self.assertAlmostEqual(worker.sent_at, 2 * TICK, places=6)  # the first fix
        warnings = [e for e in events if "still not as asked" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)

    def test_no_answer_yet_no_live(self):
        self.start(interval=TICK)
        self.add("w1")
        self.assertIsNone(self.supervisor.status("w1")["live"])
        self.assertIsNone(self.supervisor.status("nobody")["live"])

    def test_solo_workers_have_no_bounds_and_are_not_asked_for_stats(self):
        self.running_w1(pool="solo")
        self.control.sent.clear()
        self.tick()
        self.assertEqual([m[0] for m in self.control.sent], ["ping", "active_queues"])
        live = self.supervisor.status("w1")["live"]
        self.assertEqual((live["max"], live["min"]), (None, None))


class CostTests(TruthTestCase):
    """One question per command per broker per tick, for all the workers."""

    def messages_per_tick(self, workers, apps=("foo",)):
        self.start(interval=TICK)
        for n in range(workers):
            name = f"w{n}"
            self.store.put_instance(Instance(name=name, app=apps[n % len(apps)]))
            self.supervisor.reconcile()
            self.reactor.advance(0)
            self.boot(name)
        self.tick(2)
        self.control.sent.clear()
        self.tick(3)
        return len(self.control.sent) / 3

    def test_one_worker(self):
        self.assertEqual(self.messages_per_tick(1), 3.0)

    def test_fifty_workers_cost_the_same(self):
        self.assertEqual(self.messages_per_tick(50), 3.0)
        # Each message asks all of them.
        self.assertEqual({len(m[1]) for m in self.control.sent}, {50})

    def test_one_of_each_per_broker(self):
        self.store.put_app(App("bar", broker=Broker.from_url("amqp://me:me@w1:5672//")))
        self.assertEqual(self.messages_per_tick(20, apps=("foo", "bar")), 6.0)


class PerBrokerTests(TruthTestCase):
    """One broker out of reach freezes nothing on the others."""

    BAR = "amqp://me:me@w1:5672//"

    def setUp(self):
        super().setUp()
        self.store.put_app(App("bar", broker=Broker.from_url(self.BAR)))

    def bar_away(self):
        """foo's w1 running; bar's b1 started on a broker out of reach."""
        self.start(interval=TICK)
        self.add("w1")
        self.boot()
        self.store.put_instance(Instance(name="b1", app="bar"))
        self.supervisor.reconcile()
        self.reactor.advance(0)
        bar = self.control.broker("b1@h")
        self.assertNotEqual(bar, self.control.broker("w1@h"))
        self.control.set_connected(False, broker=bar)
        return bar

    def test_the_fake_is_an_icontrol(self):
        self.assertTrue(verifyObject(IControl, FakeControl(self.reactor)))

    def test_a_killed_worker_on_a_healthy_broker_is_restarted_at_once(self):
        self.bar_away()
        self.tick()
        first = self.process("w1")
        first.exit(signum=signal.SIGKILL)
        self.reactor.advance(0)
        second = self.process("w1")
        self.assertNotEqual(first.pid, second.pid)
        self.control.up("w1@h", queues=["dq.w1"])
        self.reactor.advance(0.05)
        self.assertEqual(self.state("w1"), "running")

    def test_a_silent_worker_on_a_healthy_broker_is_replaced(self):
        self.bar_away()
        self.tick()
        first = self.process("w1")
        self.node("w1").responsive = False
        self.tick(2)
        self.assertIn(signal.SIGTERM, first.signals)

    def test_workers_on_the_broker_away_are_not_judged(self):
        self.bar_away()
        self.pump(60)  # beyond the start timeout
        self.assertEqual(self.process("b1").signals, [])
        self.assertEqual(self.state("b1"), "starting")
        self.assertEqual(self.state("w1"), "running")

    def test_a_new_instance_on_a_healthy_broker_is_ready_when_it_pongs(self):
        self.bar_away()
        self.tick()
        self.add("w2")
        ready = self.supervisor.wait_ready("w2", 10)
        self.pump(0.3)
        self.assertNoResult(ready)
        self.control.up("w2@h", queues=["dq.w2"])
        self.pump(0.05)
        self.assertEqual(self.successResultOf(ready)["state"], "running")

    def test_queues_on_a_healthy_broker_are_still_fixed(self):
        self.bar_away()
        self.tick()
        self.control.celery_cancel_consumer("w1@h", "dq.w1")
        self.add("w1", queues=["tasks"])
        self.assertEqual(self.node("w1").queue_names(), ["tasks"])

    def test_a_revived_broker_gives_only_its_own_workers_time(self):
        bar = self.bar_away()
        self.control.up("b1@h")
        self.control.set_connected(True, broker=bar)
        self.pump(0.1)
        self.assertEqual(self.state("b1"), "running")
        self.control.set_connected(False, broker=bar)
        self.control.set_connected(True, broker=bar)
        self.node("b1").responsive = False
        self.node("w1").responsive = False
        self.tick(2)
        self.assertEqual(self.process("b1").signals, [])  # within its grace
        self.assertEqual(self.supervisor.status("w1")["last_error"], "did not answer ping")

    def test_a_worker_that_cannot_reach_its_broker_is_failed_with_why(self):
        self.bar_away()
        with open(os.path.join(self.root, "b1", "worker.log"), "a") as f:
            f.write(CANNOT_RESOLVE)
        self.tick()
        status = self.supervisor.status("b1")
        self.assertEqual(status["state"], "failed")
        self.assertEqual(
            status["last_error"],
            "cannot reach its broker: the host does not resolve "
            "([Errno -2] Name or service not known)",
        )
        self.assertNotIn("me:me", status["last_error"])

    def test_a_create_waiting_on_a_worker_that_cannot_connect_is_told(self):
        self.bar_away()
        ready = self.supervisor.wait_ready("b1", 10)
        with open(os.path.join(self.root, "b1", "worker.log"), "a") as f:
            f.write(CANNOT_RESOLVE)
        self.tick()
        self.assertEqual(self.successResultOf(ready)["state"], "failed")

    def test_deleting_the_last_worker_of_a_broker_lets_its_connection_go(self):
        bar = self.bar_away()
        self.assertIn(bar, self.control.brokers.values())
        self.store.delete_instance("b1")
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.assertNotIn("b1", self.supervisor.workers)
        self.assertNotIn(bar, self.control.brokers.values())
        self.assertIn("w1@h", self.control.brokers)


class PartialAnswerTests(TruthTestCase):
    """An answer that says less than it should is not taken for more."""

    def test_bounds_that_did_not_come_are_neither_verified_nor_shown_empty(self):
        self.running_w1(max_concurrency=3, min_concurrency=1)
        self.tick(2)
        self.assertEqual(self.supervisor.status("w1")["live"]["max"], 3)
        node = self.node()
        node.ignores = frozenset({"stats"})
        # Changed behind cyme's back while its stats do not come.
        self.control.celery_autoscale("w1@h", 5, 2)
        self.tick(3)
        live = self.supervisor.status("w1")["live"]
        self.assertEqual((live["max"], live["min"]), (3, 1))
        node.ignores = frozenset()
        self.ticks_until(lambda: self.bounds() == (3, 1), 2)
        self.tick()
        live = self.supervisor.status("w1")["live"]
        self.assertEqual((live["max"], live["min"]), (3, 1))

    def test_an_answer_of_a_replaced_process_is_dropped(self):
        self.running_w1()
        self.tick()
        old = self.process()
        # The round waits for stats that do not come; the worker dies and
        # is started again meanwhile.
        self.node().ignores = frozenset({"stats"})
        self.control.down("w1@h")
        self.control.up("w1@h", queues=["other"])
        self.node().ignores = frozenset({"stats"})
        self.reactor.advance(TICK)
        old.exit(1)
        self.reactor.advance(0)
        new = self.process()
        self.assertNotEqual(new.pid, old.pid)
        self.reactor.advance(1.0)
        self.assertIsNone(self.supervisor.status("w1")["live"])


class ConcurrentFixTests(TruthTestCase):
    def test_a_worker_slow_to_answer_a_fix_holds_up_no_other(self):
        self.start(interval=TICK)
        for name in ("w1", "w2"):
            self.add(name, queues=["tasks"])
            self.boot(name)
        self.tick(2)
        for name in ("w1", "w2"):
            self.assertIn("tasks", self.node(name).queue_names())
            self.control.celery_cancel_consumer(f"{name}@h", "tasks")
        # w1 (asked first) does not answer the add, which waits its timeout.
        self.node("w1").ignores = frozenset({"add_consumer"})
        self.pump(TICK, step=TICK)
        self.reactor.advance(0.1)
        self.assertIn("tasks", self.node("w2").queue_names())
