"""Where a branch's events come from: a real supervisor on the fake process
reactor and remote control (workers started, up, killed, hung, flapping),
the store's changes, and the bus's presence."""

import signal

from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.presence import Peer
from cyme.operations.eventfeeds import EventFeeds
from cyme.operations.events import EventLog
from cyme.state.models import App, Broker, Instance, Queue
from cyme.state.replica import Replica
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeControl, FakeProcessReactor, FakeProcessTable
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy, restart_backoff


class FeedsTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.store = MemoryStore()
        self.store.put_app(App("foo"))
        self.log = EventLog("b1", self.reactor)
        self.feeds = EventFeeds(self.log, self.store)
        self.store.subscribe(self.feeds.store_changed)
        self.events = []
        self.log.subscribe(self.events.append)

    def said(self, *types):
        """The (type, instance, reason) of the events since the last look."""
        found, self.events[:] = [(e.type, e.instance, e.reason) for e in self.events], []
        if types:
            self.assertEqual([f[0] for f in found], list(types), found)
        return found


class WorkerEventTests(FeedsTestCase):
    def setUp(self):
        super().setUp()
        self.control = FakeControl(self.reactor)
        root = self.mktemp()
        self.supervisor = Supervisor(
            self.store, self.control, self.reactor, root, hostname="h", python="/py",
            processes=FakeProcessTable(), transition=self.feeds.transition,
            policy=Policy(interval=5.0, kill_timeout=10.0, max_restarts=2, restart_window=60,
                          backoff=restart_backoff(jitter=lambda: 1.0)),
        )
        self.store.subscribe(self.supervisor.reconcile)
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)

    def pump(self, seconds, step=0.05):
        target = self.reactor.seconds() + seconds + 1e-9
        while self.reactor.seconds() + step < target:
            self.reactor.advance(step)
        self.reactor.advance(target - self.reactor.seconds())

    def boot(self):
        [process] = [p for p in self.reactor.live() if p.node() == "w1@h"]
        self.control.up("w1@h", queues=["dq.w1"])
        self.pump(0.2)
        return process

    def test_the_branch_says_it_started(self):
        log = EventLog("b9", self.reactor)
        EventFeeds(log, self.store)
        [event] = log.buffer
        self.assertEqual((event.type, event.peer), ("online", "b9"))

    def test_created_started_ready(self):
        self.store.put_instance(Instance(name="w1", app="foo", queues=()))
        self.reactor.advance(0)
        process = self.boot()
        [created, started, ready] = self.said("created", "started", "ready")
        self.assertEqual(created[1], "w1")
        self.assertEqual(started[2], f"pid {process.pid}")
        self.assertEqual(ready[2], f"pid {process.pid} answered ping")
        self.assertEqual({e.app for e in self.log.buffer if e.instance}, {"foo"})

    def test_a_killed_worker_stops_and_restarts(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        process = self.boot()
        self.said()
        self.control.down("w1@h")
        process.exit(signum=signal.SIGKILL)
        self.pump(0.1)
        self.boot()
        stopped, restarted, ready = self.said("stopped", "restarted", "ready")
        self.assertIn(f"pid {process.pid} died", stopped[2])
        self.assertIn("SIGKILL", stopped[2])
        self.assertIn("last error", restarted[2])

    def test_a_silent_worker_is_unresponsive_then_replaced(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        process = self.boot()
        self.said()
        self.control.nodes["w1@h"].responsive = False
        self.pump(8.5)
        # The fake process ends at once on TERM; it is replaced.
        unresponsive, stopping, _, _ = self.said("unresponsive", "stopping", "stopped",
                                                 "restarted")
        self.assertEqual(unresponsive[2], f"pid {process.pid} did not answer ping")
        self.assertEqual(stopping[2], f"pid {process.pid}: unresponsive: did not answer ping")
        self.assertEqual(process.signals[:1], [signal.SIGTERM])

    def test_a_worker_that_keeps_dying_is_quarantined(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        for _ in range(3):
            [process] = self.reactor.live()
            process.exit(1)
            self.pump(2)
        found = self.said()
        self.assertEqual(found[-1][0], "quarantined", found)
        self.assertIn("failing too often (last: exited with status 1", found[-1][2])

    def test_disabled_stops_and_enabled_starts(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        process = self.boot()
        self.said()
        self.store.put_instance(Instance(name="w1", app="foo", is_enabled=False))
        self.reactor.advance(0)
        process.exit(0)
        self.reactor.advance(0)
        changed, stopping, stopped = self.said("changed", "stopping", "stopped")
        self.assertEqual(changed[2], "disabled")
        self.assertEqual(stopping[2], f"pid {process.pid}: disabled")
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        self.said("changed", "started")

    def test_deleted(self):
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.reactor.advance(0)
        process = self.boot()
        self.said()
        self.store.delete_instance("w1")
        self.reactor.advance(0)
        process.exit(0)
        self.reactor.advance(0)
        deleted, stopping, stopped = self.said("deleted", "stopping", "stopped")
        self.assertEqual(stopped[1], "w1")
        self.assertEqual([e.app for e in self.log.buffer if e.type == "stopped"], ["foo"])


class StoreEventTests(FeedsTestCase):
    def test_apps_without_their_secrets(self):
        self.store.put_app(App("bar", broker=Broker(password="s3cret")))
        self.store.put_app(App("bar", broker=Broker(password="other"), arguments="-O fair"))
        self.store.put_app(App("bar", broker=Broker(password="other"), arguments="-O fair"))
        self.store.delete_app("bar")
        found = self.said("app", "app", "app")
        self.assertEqual([f[2] for f in found], [
            "app bar created", "app bar changed: arguments, broker", "app bar deleted"])
        self.assertNotIn("s3cret", repr(list(self.log.buffer)))
        self.assertNotIn("other", repr(list(self.log.buffer)))

    def test_queues(self):
        self.store.put_queue("foo", Queue("tasks"))
        self.store.put_queue("foo", Queue("tasks", routing_key="rk"))
        self.store.delete_queue("foo", "tasks")
        self.assertEqual([(f[0], f[2]) for f in self.said()], [
            ("queue", "queue tasks declared"), ("queue", "queue tasks changed"),
            ("queue", "queue tasks deleted")])

    def test_instances_consumers_and_settings(self):
        self.store.put_queue("foo", Queue("tasks"))
        self.store.put_queue("foo", Queue("more"))
        self.store.put_instance(Instance(name="w1", app="foo", queues=["tasks"]))
        self.store.put_instance(Instance(name="w1", app="foo", queues=["more"],
                                         max_concurrency=4, min_concurrency=2))
        self.store.put_instance(Instance(name="w1", app="foo", queues=["more"],
                                         max_concurrency=4, min_concurrency=2, pool="solo"))
        self.store.delete_app("foo")
        found = self.said()
        self.assertEqual([(t, i, r) for t, i, r in found if t != "queue"], [
            ("created", "w1", "consumes tasks; autoscale max=1 min=1"),
            ("consumer", "w1", "consumes more"),
            ("consumer", "w1", "no longer consumes tasks"),
            ("changed", "w1", "autoscale max=4 min=2"),
            ("changed", "w1", "changed: pool"),
            ("app", None, "app foo deleted"),
            ("deleted", "w1", "instance deleted with its app or queue"),
        ])

    def test_a_replica_tells_nothing_of_apps_another_branch_changed(self):
        other = MemoryStore()
        other.put_app(App("remote"), (1, "b2"))
        self.store.merge(Replica.from_json(other.replica()))
        self.assertEqual(self.said(), [])
        self.store.put_app(App("remote", arguments="-O fair"), (2, "b1"))
        self.assertEqual(self.said(), [("app", None, "app remote changed: arguments")])


class PresenceEventTests(FeedsTestCase):
    def test_online_and_offline_once_each(self):
        self.said()
        peer = Peer("b2", url="http://b2:8000/", version="0.1.0", last_seen=0.0)
        self.feeds.peer_changed(peer)
        self.feeds.peer_changed(peer)  # another beat
        self.reactor.advance(7)
        peer.status = "dead"
        self.feeds.peer_changed(peer)
        found = [(e.type, e.peer, e.reason) for e in self.log.buffer][1:]
        self.assertEqual(found, [
            ("online", "b2", "branch b2 at http://b2:8000/ (cyme 0.1.0)"),
            ("offline", "b2", "branch b2: last heartbeat 7.0 s ago")])


class RestartEventTests(FeedsTestCase):
    def test_each_step_of_a_rolling_restart_is_an_event(self):
        for step in (
            {"type": "restart.started", "restart": "r1@b1", "app": "foo", "branch": "b1",
             "instance": None, "state": "running", "pid": None, "reason": None},
            {"type": "restart.instance", "restart": "r1@b1", "app": "foo", "branch": "b2",
             "instance": "w1", "state": "running", "pid": 4242, "reason": None},
        ):
            self.feeds.restart_step(step)
        self.assertEqual(self.said("restart", "restart"), [
            ("restart", None, "r1@b1 started: branch b1 state running"),
            ("restart", "w1", "r1@b1 instance: branch b2 state running pid 4242"),
        ])
