"""Drift: what an instance asks against what its worker does, with since when."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster.presence import Peer
from cyme.operations.drift import DriftWatch, offline
from cyme.operations.events import EventLog


def instance(**changes):
    data = {"name": "w1", "app": "foo", "queues": ["tasks"], "max_concurrency": 4,
            "min_concurrency": 2, "is_enabled": True, "pool": "prefork", "state": "running",
            "pid": 12, "last_error": None,
            "live": {"queues": ["dq.w1", "tasks"], "max": 4, "min": 2, "seen_at": 1.0}}
    data.update(changes)
    return data


class DriftTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.log = EventLog("b1", self.clock)
        self.watch = DriftWatch(self.clock)
        self.log.subscribe(self.watch.seen)

    def at(self, seconds, *event):
        self.clock.advance(seconds - self.clock.seconds())
        self.log.record(*event)

    def test_as_asked_is_no_drift(self):
        self.assertEqual(self.watch.of(instance()), [])
        self.assertEqual(self.watch.of(instance(pool="solo", live={"queues": ["tasks"]})), [])

    def test_without_a_supervisor_nothing_is_known(self):
        self.assertEqual(self.watch.of(instance(state=None)), [])

    def test_worker_down_since_its_last_change(self):
        self.at(110, "ready", "foo", "w1")
        self.at(120, "unresponsive", "foo", "w1")
        self.at(121, "created", "foo", "w2")
        self.assertEqual(self.watch.of(instance(state="unresponsive")), [
            {"kind": "worker", "detail": "worker unresponsive", "since": 120.0}])
        self.assertEqual(self.watch.of(instance(state="quarantined", pid=None,
                                                last_error="failing too often")), [
            {"kind": "worker", "detail": "worker quarantined: failing too often",
             "since": 120.0}])
        # Before any event of it: since the branch started.
        self.assertEqual(self.watch.of(instance(name="w9", state="starting")), [
            {"kind": "worker", "detail": "worker starting", "since": 100.0}])

    def test_a_disabled_instance_whose_worker_runs(self):
        self.assertEqual(self.watch.of(instance(is_enabled=False, state="stopped", pid=None)),
                         [])
        self.assertEqual(self.watch.of(instance(is_enabled=False, state="stopping")), [
            {"kind": "worker", "detail": "disabled, yet its worker is stopping",
             "since": 100.0}])

    def test_queues_not_consumed_yet_or_still(self):
        self.at(110, "ready", "foo", "w1")
        self.at(130, "consumer", "foo", "w1", "consumes more")
        found = self.watch.of(instance(queues=["tasks", "more"],
                                       live={"queues": ["dq.w1", "tasks", "old"]}))
        self.assertEqual(found, [
            {"kind": "queues", "detail": "not consuming more yet", "since": 130.0},
            {"kind": "queues", "detail": "still consuming old", "since": 130.0}])
        # Not asked yet what it consumes: it is not known to.
        self.assertEqual(self.watch.of(instance(live=None)), [
            {"kind": "queues", "detail": "not consuming tasks yet", "since": 130.0}])

    def test_a_restart_counts_from_the_worker_coming_up(self):
        self.at(110, "consumer", "foo", "w1", "consumes tasks")
        self.at(150, "ready", "foo", "w1")
        self.assertEqual(self.watch.of(instance(live={"queues": ["dq.w1"]}))[0]["since"],
                         150.0)

    def test_autoscale_not_applied(self):
        self.at(140, "changed", "foo", "w1", "autoscale max=4 min=2")
        found = self.watch.of(instance(live={"queues": ["tasks"], "max": 3, "min": 1}))
        self.assertEqual(found, [{
            "kind": "autoscale", "since": 140.0,
            "detail": "autoscale max=4 min=2 not applied (the worker has max=3 min=1)"}])
        # A pool without autoscale has no bounds to apply.
        self.assertEqual(self.watch.of(instance(
            pool="solo", live={"queues": ["tasks"], "max": 1, "min": 1})), [])

    def test_deleted_forgets(self):
        self.at(120, "unresponsive", "foo", "w1")
        self.at(130, "deleted", "foo", "w1")
        self.assertEqual(self.watch.of(instance(state="starting"))[0]["since"], 100.0)

    def test_offline_branch(self):
        self.assertEqual(offline(Peer("b2", last_seen=90.0)), [
            {"kind": "branch", "detail": "branch b2 is offline: its workers are not known",
             "since": 90.0}])
