"""Rolling restarts: two branches on the memory bus, each with its real
supervisor over fake workers that take their time (a warm stop of a second,
half a second to their first pong), driven through the HTTP API.

What a user notices is checked as time passes: how many of the app's
workers answer ping at every moment, which workers got which signal, what
C{GET /restarts/<id>/} says, and the events the listener was told.
"""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.operations.cluster import build_cluster
from cyme.operations.interfaces import IOperations
from cyme.operations.local import LocalOperations
from cyme.operations.rolling import RollingRestarts
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import (
    FakeControl, FakeLauncher, FakeProcessReactor, FakeProcessTable,
)
from cyme.supervision.interfaces import ILauncher
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy

KILL_TIMEOUT = 3.0
READY_TIMEOUT = 5.0
#: Seconds a worker takes to stop after TERM (its tasks finishing), and
#: from its start to its first pong.
STOP, START = 1.0, 0.5


class Workers(FakeLauncher):
    """
    Workers that take their time: each answers ping L{START} s after it is
    spawned (unless its node is in C{broken}); L{on_signal} makes one stop
    answering at once on TERM and end L{STOP} s later (at once on KILL).
    """

    def __init__(self, reactor, control):
        super().__init__(reactor)
        self.control = control
        self.broken = set()

    def spawn(self, protocol, argv, env, path, log_path):
        process = super().spawn(protocol, argv, env, path, log_path)
        node = process.node()
        if node not in self.broken:
            self.reactor.callLater(START, self._up, process)
        return process

    def _up(self, process):
        if not process.ended:
            self.control.up(process.node())


def warm_stop(control):
    def on_signal(process, signum):
        if signum == signal.SIGTERM:
            control.down(process.node())
            process.reactor.callLater(STOP, process.exit)
        elif signum == signal.SIGKILL:
            control.down(process.node())
            process.exit(signum=signum)

    return on_signal


class Branch:
    """One branch as makeService wires it, on fakes."""

    def __init__(self, test, branch_id, network, reactor, control):
        self.id = branch_id
        self.store = MemoryStore()
        root = test.mktemp()
        os.makedirs(root)
        self.launcher = Workers(reactor, control)
        self.supervisor = Supervisor(
            self.store, control, reactor, root, hostname=branch_id,
            processes=FakeProcessTable(), python="/py", launcher=self.launcher,
            policy=Policy(interval=1.0, kill_timeout=KILL_TIMEOUT),
        )
        self.store.subscribe(self.supervisor.reconcile)
        self.local = LocalOperations(
            self.store, branch_id=branch_id, supervisor=self.supervisor, control=control,
            clock=reactor, ready_timeout=READY_TIMEOUT,
        )
        self.cluster, self.bus = build_cluster(
            self.local, network.transport(branch_id), reactor, ready_timeout=READY_TIMEOUT,
            seal=OpenSeal(), launcher=self.launcher, restart_listener=test.listen,
            kill_timeout=KILL_TIMEOUT,
        )
        self.client = APIClient(BranchAPI(self.cluster, clock=Clock()).resource())
        for service in (self.bus, self.supervisor):
            service.startService()
            test.addCleanup(service.stopService)


class RollingTestCase(SynchronousTestCase):
    #: Instance name -> the branch it is created on.
    placement = {"w1": "b1", "w2": "b1", "w3": "b2", "w4": "b2"}

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.control = FakeControl(self.reactor)
        self.reactor.on_signal = warm_stop(self.control)
        self.network = MemoryBusNetwork(self.reactor)
        self.events = []
        self.listener_fails = False
        self.branches = {b: Branch(self, b, self.network, self.reactor, self.control)
                         for b in ("b1", "b2")}
        self.settle()
        self.assertEqual(self.request("b1", "PUT", "/foo/").code, 201)
        for name, branch in self.placement.items():
            response = self.request("b1", "PUT", f"/foo/instances/!/{name}/?branch={branch}")
            self.assertEqual(response.code, 202, response.json)
        self.wait(2)
        self.assertEqual(self.answering(), len(self.placement))
        self.first_pids = self.pids()
        # The fewest workers answering, sampled every 50 ms from now on.
        self.fewest = len(self.placement)
        self.sampler = LoopingCall(self.sample)
        self.sampler.clock = self.reactor
        self.sampler.start(0.05)
        self.addCleanup(self.sampler.stop)

    def listen(self, event):
        self.events.append(event)
        if self.listener_fails:
            raise RuntimeError("the event stream broke")

    # Time and requests

    def settle(self):
        for _ in range(500):
            self.reactor.advance(0)
            for branch in self.branches.values():
                branch.client.flush()
            if not any(c.getTime() <= self.reactor.seconds()
                       for c in self.reactor.getDelayedCalls()):
                return
        self.fail("did not settle")

    def wait(self, seconds, step=0.05):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.settle()

    def request(self, branch, method, path, seconds=0, **kwargs):
        """The answer to a request, after C{seconds} (a stop, a bus timeout)."""
        d = self.branches[branch].client.request(method, path, **kwargs)
        self.settle()
        self.wait(seconds)
        return self.successResultOf(d)

    # What a user sees

    def nodes(self):
        return {name: f"{name}@{branch}" for name, branch in self.placement.items()}

    def answering(self):
        return sum(1 for node in self.nodes().values() if node in self.control.nodes)

    def sample(self):
        self.fewest = min(self.fewest, self.answering())

    def pids(self):
        return {name: self.branches[branch].supervisor.status(name)["pid"]
                for name, branch in self.placement.items()}

    def processes(self, name):
        """The fake processes of instance C{name}'s workers, oldest first."""
        node = self.nodes()[name]
        return [p for p in self.reactor.processes if p.node() == node]

    def restart(self, branch="b1", query="", expected=202):
        response = self.request(branch, "POST", f"/foo/restart/{query}")
        self.assertEqual(response.code, expected, response.json)
        return response

    def progress(self, restart_id, branch="b1"):
        response = self.request(branch, "GET", f"/restarts/{restart_id}/")
        self.assertEqual(response.code, 200, response.json)
        return response.json

    def until_finished(self, restart_id, seconds=60):
        for _ in range(round(seconds / 0.5)):
            self.wait(0.5)
            body = self.progress(restart_id)
            if body["state"] != "running":
                return body
        self.fail(f"restart {restart_id} still running after {seconds} s")

    def steps(self, kind="restart.instance"):
        return [(e["instance"], e["state"]) for e in self.events if e["type"] == kind]


class RollingRestartTests(RollingTestCase):
    def test_the_fakes_implement_the_interfaces(self):
        self.assertTrue(verifyObject(ILauncher, self.branches["b1"].launcher))
        self.assertTrue(verifyObject(IOperations, self.branches["b1"].cluster))

    def test_one_at_a_time_across_branches_keeping_the_others_answering(self):
        response = self.restart()
        body = response.json
        restart_id = body["id"]
        self.assertTrue(restart_id.endswith("@b1"), restart_id)
        self.assertEqual(response.header("Location"), f"/restarts/{restart_id}/")
        self.assertEqual((body["state"], body["parallel"], body["keep_answering"]),
                         ("running", 1, 3))
        self.assertEqual([(i["name"], i["branch"], i["state"]) for i in body["instances"]],
                         [("w1", "b1", "pending"), ("w2", "b1", "pending"),
                          ("w3", "b2", "pending"), ("w4", "b2", "pending")])
        done = self.until_finished(restart_id)
        self.assertEqual(done["state"], "done", done)
        self.assertIsNone(done["reason"])
        self.assertEqual(done["fork_servers"], {"b1": "replaced", "b2": "replaced"})
        new_pids = self.pids()
        for step in done["instances"]:
            name = step["name"]
            self.assertEqual(step["state"], "done")
            self.assertEqual(step["old_pid"], self.first_pids[name])
            self.assertEqual(step["pid"], new_pids[name])
            self.assertNotEqual(step["pid"], step["old_pid"])
            # A warm stop, then its start: 1.5 s here, measured by the coordinator.
            self.assertGreaterEqual(step["seconds"], STOP + START)
            # TERM (and CONT): the tasks finish; no KILL.
            old = self.processes(name)[0]
            self.assertEqual(old.signals, [signal.SIGTERM, signal.SIGCONT])
        self.assertEqual(self.answering(), 4)
        self.assertEqual(self.fewest, 3)
        # Each replacement answered before the next one was stopped.
        self.assertEqual(self.steps(), [
            ("w1", "restarting"), ("w1", "done"), ("w2", "restarting"), ("w2", "done"),
            ("w3", "restarting"), ("w3", "done"), ("w4", "restarting"), ("w4", "done"),
        ])
        # Any branch answers with the coordinator's progress.
        self.assertEqual(self.progress(restart_id, branch="b2"), done)

    def test_fork_servers_are_replaced_before_any_worker_stops(self):
        for branch in self.branches.values():
            branch.launcher.hold_renewal = True
        restart_id = self.restart().json["id"]
        self.wait(2)
        self.assertEqual([b.launcher.renewals for b in self.branches.values()], [1, 1])
        self.assertEqual(self.pids(), self.first_pids)
        self.branches["b1"].launcher.held[0].callback(True)
        self.wait(2)
        self.assertEqual(self.pids(), self.first_pids)  # b2 is not ready yet
        self.branches["b2"].launcher.held[0].callback(True)
        self.assertEqual(self.until_finished(restart_id)["state"], "done")
        renewed = [e["branch"] for e in self.events if e["type"] == "restart.renewed"]
        self.assertEqual(renewed, ["b1", "b2"])

    def test_a_new_fork_server_slow_to_be_ready_does_not_hold_the_restart(self):
        self.branches["b2"].launcher.hold_renewal = True
        restart_id = self.restart().json["id"]
        done = self.until_finished(restart_id, seconds=90)
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["fork_servers"]["b2"], "replaced, not ready")

    def test_a_branch_that_cannot_replace_its_fork_server_stops_it_before_any_worker(self):
        self.branches["b2"].launcher.fail_renewal = OSError("cannot fork")
        restart_id = self.restart().json["id"]
        done = self.until_finished(restart_id)
        self.flushLoggedErrors(OSError)
        self.assertEqual(done["state"], "failed")
        self.assertEqual(done["reason"], "the fork servers were not all replaced, so "
                                         "nothing was restarted (branch b2: internal error)")
        self.assertEqual({i["state"] for i in done["instances"]}, {"skipped"})
        self.assertEqual(self.pids(), self.first_pids)
        self.assertEqual(self.fewest, 4)

    def test_instances_of_a_branch_that_does_not_answer_are_left_out(self):
        self.network.partition("b2")
        body = self.request("b1", "POST", "/foo/restart/", seconds=11).json
        self.assertEqual([i["name"] for i in body["instances"]], ["w1", "w2"])
        self.assertEqual([s["name"] for s in body["skipped"]], ["w3", "w4"])
        self.assertIn("did not answer", body["skipped"][0]["reason"])
        self.assertEqual(body["missing_branches"], ["b2"])
        self.assertEqual(body["keep_answering"], 1)
        done = self.until_finished(body["id"])
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["fork_servers"], {"b1": "replaced"})

    def test_parallel_two(self):
        restart_id = self.restart(query="?parallel=2").json["id"]
        done = self.until_finished(restart_id)
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["keep_answering"], 2)
        self.assertEqual(self.fewest, 2)
        self.assertEqual(self.steps()[:2], [("w1", "restarting"), ("w2", "restarting")])

    def test_a_replacement_that_does_not_answer_stops_the_rollout(self):
        self.branches["b1"].launcher.broken.add("w2@b1")
        restart_id = self.restart().json["id"]
        done = self.until_finished(restart_id, seconds=120)
        self.assertEqual(done["state"], "failed")
        states = {i["name"]: i["state"] for i in done["instances"]}
        self.assertEqual(states, {"w1": "done", "w2": "failed", "w3": "skipped",
                                  "w4": "skipped"})
        self.assertTrue(done["reason"].startswith("w2: its new worker did not answer ping"),
                        done["reason"])
        pids = self.pids()
        self.assertEqual((pids["w3"], pids["w4"]), (self.first_pids["w3"], self.first_pids["w4"]))
        self.assertEqual(self.fewest, 3)
        finished = [e for e in self.events if e["type"] == "restart.finished"]
        self.assertEqual([(e["state"], e["reason"]) for e in finished],
                         [("failed", done["reason"])])

    def test_an_instance_down_meanwhile_holds_the_rollout_until_it_is_back(self):
        restart_id = self.restart().json["id"]
        self.wait(0.1)
        # w4 stops answering while w1 restarts, and its own replacement
        # too: stopping another would leave two of four answering.
        self.control.nodes["w4@b2"].responsive = False
        self.branches["b2"].launcher.broken.add("w4@b2")
        self.wait(10)
        held = [i for i in self.progress(restart_id)["instances"] if i["state"] == "pending"]
        self.assertEqual(self.steps()[-1][1], "done")
        self.assertIn(held[0]["name"], ("w2", "w3"))
        self.assertEqual(len(self.processes(held[0]["name"])), 1)
        self.branches["b2"].launcher.broken.clear()
        self.control.up("w4@b2")
        done = self.until_finished(restart_id)
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(self.fewest, 2)  # w4's doing, never the restart's

    def test_an_instance_down_too_long_fails_the_rollout_without_stopping_more(self):
        restart_id = self.restart().json["id"]
        self.wait(0.1)
        self.control.nodes["w4@b2"].responsive = False
        self.branches["b2"].launcher.broken.add("w4@b2")
        done = self.until_finished(restart_id, seconds=120)
        self.assertEqual(done["state"], "failed")
        self.assertRegex(done["reason"], r"^(w2|w3) was not stopped: 2 other instances answer "
                                         r"\(w4 [a-z]+\), and at least 3 must$")
        held = done["reason"][:2]
        self.assertEqual(len(self.processes(held)), 1)
        self.assertEqual(done["instances"][-1]["state"], "skipped")

    def test_instances_not_answering_go_first(self):
        self.control.nodes["w3@b2"].responsive = False
        self.branches["b2"].launcher.broken.add("w3@b2")
        supervisor = self.branches["b2"].supervisor
        for _ in range(100):
            if supervisor.status("w3")["state"] != "running":
                break
            self.wait(0.1)
        restart_id = self.restart().json["id"]
        self.branches["b2"].launcher.broken.clear()
        planned = [i["name"] for i in self.progress(restart_id)["instances"]]
        self.assertEqual(planned, ["w3", "w1", "w2", "w4"])
        self.assertEqual(self.until_finished(restart_id)["state"], "done")

    def test_disabled_instances_are_left_alone(self):
        response = self.request("b1", "POST", "/foo/instances/w3/disable/", seconds=STOP + 1)
        self.assertEqual(response.code, 200)
        body = self.restart().json
        self.assertEqual([i["name"] for i in body["instances"]], ["w1", "w2", "w4"])
        self.assertEqual(body["skipped"], [{"name": "w3", "reason": "disabled"}])
        self.assertEqual(body["keep_answering"], 2)
        self.assertEqual(self.until_finished(body["id"])["state"], "done")
        self.assertEqual(self.processes("w3")[-1].signals, [signal.SIGTERM, signal.SIGCONT])
        self.assertEqual(len(self.processes("w3")), 1)

    def test_an_instance_deleted_meanwhile_is_skipped(self):
        restart_id = self.restart().json["id"]
        self.wait(0.1)
        self.assertEqual(self.request("b2", "DELETE", "/foo/instances/w4/").code, 200)
        done = self.until_finished(restart_id)
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["instances"][3], {
            "name": "w4", "branch": "b2", "state": "skipped", "old_pid": self.first_pids["w4"],
            "pid": None, "seconds": None, "reason": "deleted meanwhile"})

    def test_the_single_instance_restart_is_unchanged(self):
        response = self.request("b2", "POST", "/foo/instances/w1/restart/",
                                seconds=STOP + START + 1)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json["state"], "running")
        self.assertEqual(self.branches["b1"].launcher.renewals, 0)
        self.assertEqual(self.events, [])

    def test_a_failing_listener_does_not_stop_the_restart(self):
        self.listener_fails = True
        restart_id = self.restart().json["id"]
        self.assertEqual(self.until_finished(restart_id)["state"], "done")
        # started, renewed twice, each instance restarting and done, finished.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 12)

    def test_events_say_who_what_and_when(self):
        restart_id = self.restart(branch="b2").json["id"]
        self.until_finished(restart_id)
        kinds = [e["type"] for e in self.events]
        self.assertEqual(kinds[0], "restart.started")
        self.assertEqual(kinds[-1], "restart.finished")
        first = next(e for e in self.events if e["type"] == "restart.instance")
        self.assertEqual(
            {k: first[k] for k in ("restart", "app", "branch", "instance", "state", "pid")},
            {"restart": restart_id, "app": "foo", "branch": "b1", "instance": "w1",
             "state": "restarting", "pid": self.first_pids["w1"]})
        self.assertIsInstance(first["time"], float)


class RollingRestartAPITests(RollingTestCase):
    def test_one_restart_of_an_app_at_a_time(self):
        restart_id = self.restart().json["id"]
        again = self.restart(expected=409).json
        self.assertEqual(again["restart"], restart_id)
        self.until_finished(restart_id)
        self.restart()

    def test_bad_parallel_is_a_400_and_starts_nothing(self):
        for query in ("?parallel=0", "?parallel=x", "?parallel=101", "?parallel=-1",
                      "?parallel=1.5"):
            body = self.restart(query=query, expected=400).json
            self.assertEqual(body["field"], "parallel")
        self.wait(2)
        self.assertEqual(self.events, [])
        self.assertEqual(self.branches["b1"].launcher.renewals, 0)

    def test_parallel_in_a_json_body(self):
        response = self.request("b1", "POST", "/foo/restart/", json={"parallel": 4})
        self.assertEqual(response.code, 202, response.json)
        self.assertEqual(response.json["keep_answering"], 0)

    def test_unknown_app_is_a_404(self):
        body = self.request("b1", "POST", "/nope/restart/").json
        self.assertEqual((body["kind"], body["name"]), ("app", "nope"))

    def test_only_post(self):
        response = self.request("b1", "PUT", "/foo/restart/")
        self.assertEqual(response.code, 405)

    def test_unknown_and_malformed_restart_ids_are_404s(self):
        for restart_id in ("0123456789ab@b1", "0123456789ab@b2", "0123456789ab@b9", "x",
                           "0123456789AB@b1", "0123456789ab@b1@b2", "restarts", "a" * 300):
            response = self.request("b1", "GET", f"/restarts/{restart_id}/")
            self.assertEqual(response.code, 404, (restart_id, response.json))
            self.assertEqual(response.json["kind"], "restart")

    def test_a_restart_kept_by_an_offline_branch_is_a_503(self):
        restart_id = self.restart(branch="b2").json["id"]
        self.until_finished(restart_id)  # asked through b1, as every poll here
        self.network.partition("b2")
        self.wait(8)
        response = self.request("b1", "GET", f"/restarts/{restart_id}/")
        self.assertEqual(response.code, 503)
        self.assertIn("offline", response.json["error"])

    def test_a_malformed_bus_request_is_refused(self):
        d = defer.ensureDeferred(
            self.branches["b1"].bus.call("b2", "restart.get", {"id": ["x"]}, 1.0))
        self.settle()
        self.assertEqual(self.failureResultOf(d).value.status, 400)

    def test_the_progress_of_finished_restarts_is_kept_within_a_limit(self):
        ids = []
        for _ in range(self.branches["b1"].cluster.restarts.keep + 2):
            ids.append(self.restart().json["id"])
            self.until_finished(ids[-1], seconds=120)
        self.assertEqual(self.request("b1", "GET", f"/restarts/{ids[0]}/").code, 404)
        self.assertEqual(self.request("b1", "GET", f"/restarts/{ids[-1]}/").code, 200)


class AloneTests(SynchronousTestCase):
    def test_a_branch_without_a_coordinator_says_so(self):
        store = MemoryStore()
        client = APIClient(BranchAPI(LocalOperations(store), clock=Clock()).resource())
        self.successResultOf(client.request("PUT", "/foo/"))
        response = self.successResultOf(client.request("POST", "/foo/restart/"))
        self.assertEqual(response.code, 503)
        response = self.successResultOf(client.request("GET", "/restarts/0123456789ab@x/"))
        self.assertEqual(response.code, 503)

    def test_a_branch_alone_restarts_its_own_instances(self):
        reactor = FakeProcessReactor()
        control = FakeControl(reactor)
        reactor.on_signal = warm_stop(control)
        store = MemoryStore()
        root = self.mktemp()
        os.makedirs(root)
        launcher = Workers(reactor, control)
        supervisor = Supervisor(store, control, reactor, root, hostname="h",
                                processes=FakeProcessTable(), python="/py", launcher=launcher)
        store.subscribe(supervisor.reconcile)
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        ops = LocalOperations(store, supervisor=supervisor, control=control, clock=reactor,
                              restarts=RollingRestarts(reactor, "branch", launcher=launcher))
        client = APIClient(BranchAPI(ops, clock=Clock()).resource())
        self.successResultOf(client.request("PUT", "/foo/"))
        self.successResultOf(client.request("PUT", "/foo/instances/!/w1/"))
        reactor.pump([0.05] * 40)
        self.assertEqual(supervisor.status("w1")["state"], "running")
        body = self.successResultOf(client.request("POST", "/foo/restart/")).json
        reactor.pump([0.05] * 100)
        client.flush()
        done = self.successResultOf(client.request("GET", f"/restarts/{body['id']}/")).json
        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["fork_servers"], {"branch": "replaced"})
        self.assertEqual(launcher.renewals, 1)
