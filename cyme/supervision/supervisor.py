"""The supervisor: keeps this branch's worker processes as the store wants them.

The supervisor decides; each worker's L{WorkerLifecycle} does.  Every tick
(a LoopingCall, and at once after each change of the store, whose change
events call L{Supervisor.reconcile}) it converges the workers with the
store: it starts new or dead workers, stops removed and disabled ones,
restarts those whose command line changed.  In the background it pings
the workers (L{cyme.supervision.liveness}; a worker silent for
C{max_missed} rounds is replaced) and makes the live ones consume the
right queues at the right autoscale bounds, asking every one each tick
(L{cyme.supervision.consuming}).  Liveness is judged broker by broker:
while one broker is away its workers are not judged (nor for
C{wait_after_broker_revived} seconds after it is back), and the others
go on as usual.  After a restart of the branch, the workers it left
running are adopted, not restarted.  A record that cannot make a worker's
command fails its own instance (backoff, quarantine), never the round.
"""

import os
import shutil
import socket
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import logs
from cyme.errors import NotFound
from cyme.metrics import Metrics
from cyme.state.models import check_hostname
from cyme.state.workeroptions import WorkerPolicy
from cyme.supervision.consuming import check
from cyme.supervision.control import safe_url
from cyme.supervision.launcher import ExecLauncher
from cyme.supervision.lifecycle import WorkerLifecycle
from cyme.supervision.liveness import StartupPoll, ping_delays, ping_rounds
from cyme.supervision.workers import (
    ProcessTable, WorkerCommands, cancel_call, node_name, worker_directories,
)
from cyme.supervision.workerstate import (
    LIVE, STARTING, STOPPED, STOPPING, Policy, Worker, supervision_figures,
)


def _ignore(failure):
    """A best effort: the worker is stopped anyway."""


class Supervisor(service.Service):
    """
    The branch's workers: one L{WorkerLifecycle} per instance in C{workers}.

    C{launcher} starts them (exec'd by default), C{processes} sees those not
    our children, C{policy} holds the figures (L{Policy}), C{metrics}
    (L{cyme.metrics.Metrics}) times ticks and pings; none consumes C{cluster}'s bus.
    """

    log = Logger(observer=logs.observer)
    name = "supervisor"

    def __init__(
        self, store, control, reactor, instances_dir, hostname=None,
        python=sys.executable, processes=None, launcher=None, policy=None,
        worker_loglevel="info", worker_policy=None, transition=None, metrics=None,
        cluster="cyme"):
        self.store = store
        self.control = control
        self.reactor = reactor
        self.instances_dir = instances_dir
        self.hostname = hostname or socket.gethostname()
        self.python = python
        self.processes = processes if processes is not None else ProcessTable()
        self.launcher = launcher if launcher is not None else ExecLauncher(reactor)
        self.policy = policy if policy is not None else Policy()
        self.worker_loglevel, self.cluster = worker_loglevel, cluster
        #: What this branch's operator allows workers (L{WorkerPolicy}).
        self.worker_policy = worker_policy if worker_policy is not None else WorkerPolicy()
        self._metrics = metrics if metrics is not None else Metrics()
        self._commands = WorkerCommands(self.hostname, python, worker_loglevel,
                                        self.worker_policy, self.cluster)
        #: Instance name -> L{WorkerLifecycle}.
        self.workers = {}
        #: Told of every worker's transitions (L{WorkerLifecycle}'s C{transition}).
        self._transition = transition
        self._loop = self._soon = None
        self._checks = {}
        self._rerun = set()
        #: Broker URL -> when its workers may be judged again (after a revival).
        self._judge_after = {}
        #: The brokers whose connection was lost once (the next is a revival).
        self._lost = set()
        #: Whether the next verification asks every running worker.
        self._everyone = False
        self._startup = StartupPoll(reactor, control, self._starting, self._pong_current,
                                    self._check_failed, lambda: len(self.workers))
        self._ticks = 0
        self.last_tick = None  # when the last tick began (GET /health/ sees it late)
        control.add_connection_listener(self._broker_changed)
        self.launcher.add_orphan_listener(self._orphaned)
        # Workers held back for the fork server's standbys start once they came.
        self.launcher.add_ready_listener(self.reconcile)

    # Service

    def startService(self):
        super().startService()
        self._startup.start()
        self._adopt()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.policy.interval, now=True)

    def stopService(self):
        """
        Stop supervising; fires once the tick in progress and every stop
        under way have finished.  Workers keep running for the next start
        unless the policy says C{stop_workers_on_exit}.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        cancel_call(self._soon)
        self._rerun.clear()
        self._startup.stop()
        for running in filter(None, self._checks.values()):
            running.cancel()
        pending = []
        for life in self.workers.values():
            if self.policy.stop_workers_on_exit and life.worker.pid is not None:
                pending.append(life.stop("branch stopping"))
            elif life.worker.state == STOPPING:
                pending.append(life.wait_stopped())
        return defer.DeferredList(pending, consumeErrors=True).addCallback(self._stopped)

    def _stopped(self, _):
        for life in self.workers.values():
            life.cancel_timers()

    # Public operations, used by the operations layer

    def reconcile(self, change=None):
        """Converge soon (the store's change listener; one round for many)."""
        if self.running and (self._soon is None or not self._soon.active()):
            self._soon = self.reactor.callLater(0, self.converge)

    def status(self, name):
        life = self.workers.get(name)
        if life is None:
            return {"state": STOPPED, "pid": None, "restarts": 0, "last_error": None,
                    "live": None, "uptime": None, "last_pong": None}
        return life.worker.to_json(self.reactor.seconds())

    def wait_ready(self, name, timeout):
        """The instance's state once its worker answered a ping, or after C{timeout} s."""
        # Created a moment ago, the tick that starts it may not have run.
        life = self.workers.get(name) or self._lifecycle(name)
        return life.wait_ready(timeout)

    def restart(self, name):
        """Restart its worker now, clearing quarantine; fires once the old one is gone."""
        life = self.workers.get(name)
        if life is None:
            self.reconcile()
            return defer.succeed(None)
        return life.restart().addCallback(self._reconcile_after)

    def wait_stopped(self, name):
        """Apply the desired state now; fire once C{name}'s worker is gone."""
        self.converge(verify=False)
        life = self.workers.get(name)
        if life is None:
            return defer.succeed(self.status(name))
        return life.wait_stopped().addCallback(lambda _: self.status(name))

    def metrics(self):
        """What C{/metrics} shows of the supervision now: ticks, messages, workers."""
        return {"ticks": self._ticks, "messages": getattr(self.control, "published", 0),
                **supervision_figures([life.worker for life in self.workers.values()],
                                      self.store)}

    def node(self, name):
        life = self.workers.get(name)
        if life is None:
            raise NotFound("instance", name)
        return life.worker.node

    # The tick and converging

    def tick(self):
        """Converge now; check liveness and queues in the background (never delaying it)."""
        self._ticks, self.last_tick = self._ticks + 1, self.reactor.seconds()
        try:
            self.converge(verify=False)
            self._background("pinging", self._ping_round)
            # Every worker, for changes made behind cyme's back.
            self._everyone = True
            self._background("verifying", self._verify)
            for life in list(self.workers.values()):
                life.tail()
        except Exception:
            # The LoopingCall would stop for good on an exception.
            self.log.failure("supervisor tick failed")
        self._metrics.tick_seconds.observe(max(0.0, self.reactor.seconds() - self.last_tick))

    def converge(self, verify=True):
        """Make the workers what the store wants now (start, stop, restart); then,
        unless C{verify} is false, check the live ones' queues."""
        started = False
        try:
            desired = {i.name: i for i in self.store.instances()}
            self._retire_deleted(desired)
            for instance in desired.values():
                try:
                    start = self._plan(instance)
                    if start is not None and self.launcher.can_start(start[1][0]):
                        life, command = start
                        started = life.start(*command) or started
                except Exception:
                    # One instance's fault must not stop the others' round.
                    self.log.failure("{instance}: converging failed", instance=instance.name)
            for life in list(self.workers.values()):
                if life.worker.adopted and life.worker.state != STOPPING:
                    life.check()
        except Exception:
            self.log.failure("supervisor tick failed")
        if started:
            self._startup.poll()
        if verify:
            self._background("verifying", self._verify)

    def _plan(self, instance):
        """Stop or restart C{instance}'s worker as the store wants; hand a start
        back to converge: C{(lifecycle, (argv, env, spec))}."""
        life = self.workers.get(instance.name) or self._lifecycle(instance.name)
        worker = life.worker
        if not instance.is_enabled and not worker.retired:
            life.stop("disabled")
        # A retired one is still stopping: start after it.
        if worker.retired or not instance.is_enabled or worker.state == STOPPING or (
                worker.pid is None and not life.due()):
            return None
        try:
            app = self.store.get_app(instance.app)
            queues = [self.store.get_queue(instance.app, q) for q in instance.queues]
            argv, env, spec = self._commands.get(instance, app, queues, worker.directory)
            # Commands to this worker go to its broker from now on.
            self.control.register(worker.node, env["CELERY_BROKER_URL"])
        except NotFound as e:
            if worker.pid is None:
                life.cannot_start(e.message)
            return None
        except Exception as e:
            # A record this branch's API would refuse (BadRequest), or one it
            # cannot read: its instance fails as a spawn does, nothing else.
            if worker.pid is None:
                life.spawn_failed(e)
            return None
        if worker.pid is None:
            return life, (argv, env, spec)
        if worker.spec is not None and worker.spec != spec:
            self.log.info("{instance} configuration changed: restarting",
                          instance=worker.name)
            life.stop("configuration changed").addCallback(self._reconcile_after)
        return None

    def _reconcile_after(self, _):
        self.reconcile()

    def _lifecycle(self, name):
        worker = Worker(name, node_name(name, self.hostname),
                        os.path.join(self.instances_dir, name))
        self.workers[name] = WorkerLifecycle(
            worker, self.reactor, self.launcher, self.processes, self.policy, self.reconcile,
            self._transition)
        return self.workers[name]

    def _background(self, slot, work):
        """Run C{work} unless its previous run is still going; log failures."""
        if self._checks.get(slot) is not None:
            self._rerun.add(slot)
            return
        d = defer.ensureDeferred(work())
        self._checks[slot] = d
        d.addErrback(self._check_failed, slot)
        d.addBoth(self._check_done, slot, work)

    def _check_done(self, _, slot, work):
        self._checks[slot] = None
        if slot in self._rerun and self.running:
            self._rerun.discard(slot)
            self._background(slot, work)

    def _check_failed(self, failure, what):
        if not failure.check(defer.CancelledError):
            self.log.failure("supervisor {what} failed", failure, what=what)

    # Deleting

    def _retire_deleted(self, desired):
        """Stop the workers of deleted instances, then remove their files."""
        for life in list(self.workers.values()):
            worker = life.worker
            if worker.name in desired or worker.retired:
                continue
            life.retire()
            if worker.pid is None:
                self._remove(life)
                continue
            # Stop taking new tasks before the warm shutdown.
            for queue in (worker.live or {}).get("queues", ()):
                self.control.cancel_consumer([worker.node], queue, 1.0).addErrback(_ignore)
            life.stop("deleted").addCallback(lambda _, life=life: self._remove(life))

    def _remove(self, life):
        worker = life.worker
        if self.workers.get(worker.name) is life:
            del self.workers[worker.name]
            if not any(l.worker.node == worker.node for l in self.workers.values()):
                self.control.unregister(worker.node)
        self._commands.forget(worker.name)
        shutil.rmtree(worker.directory, ignore_errors=True)
        self.log.info("{instance} removed", instance=worker.name)
        self.reconcile()

    # Adoption

    def _adopt(self):
        """
        Take over the workers a previous run left: one whose pid file names
        a live process with its node name is adopted (a ping confirms it);
        one whose instance is gone is stopped and its directory removed.
        """
        desired = {i.name: i for i in self.store.instances()}
        for name, pid in worker_directories(self.instances_dir):
            try:
                self._adopt_one(name, pid, desired.get(name))
            except Exception:  # a bad record is skipped, not the start
                self.log.failure("{instance}: cannot adopt its worker", instance=name)
        self._retire_deleted(desired)

    def _adopt_one(self, name, pid, instance):
        life = self._lifecycle(name)
        if pid is not None and self.processes.is_worker(pid, life.worker.node):
            life.adopt(pid)
        if instance is not None and life.worker.pid is not None:
            try:
                app = self.store.get_app(instance.app)
            except NotFound:
                return
            broker = instance.broker or app.broker
            check_hostname(broker.hostname, "broker hostname")
            self.control.register(life.worker.node, broker.as_url())

    def _orphaned(self, pid):
        """Worker C{pid} is nobody's child here any more: watch it by pid."""
        for life in self.workers.values():
            if life.worker.pid == pid:
                life.orphaned()

    # Liveness

    def _broker_changed(self, connected, url):
        if not connected:
            self._lost.add(url)
            self.log.warn("broker {broker} connection lost: not judging its workers "
                          "meanwhile", broker=safe_url(url))
            return
        if url in self._lost:
            # A revival (the first connection cut nothing off): its
            # workers get time to reconnect before they are judged.
            wait = self.policy.wait_after_broker_revived
            self._judge_after[url] = self.reactor.seconds() + wait
            self.log.info("broker {broker} revived: judging its workers again in "
                          "{seconds:g} s", broker=safe_url(url), seconds=wait)
            for life in self.workers.values():
                if self.control.broker(life.worker.node) == url:
                    life.verified(None)
        self.reconcile()
        # Starting (and adopted) workers need no grace period: a pong is a pong.
        self._startup.poll()

    def _can_judge(self, node):
        return self.control.reachable(node) and (
            self.reactor.seconds() >= self._judge_after.get(self.control.broker(node), 0.0)
        )

    def _pong(self, life):
        if life.pong() and self.running:
            self._background("verifying", self._verify)

    async def _ping_round(self):
        # Pongs are taken from every reachable broker; only judging the
        # silent waits for the grace period after a revival.
        watched = {
            life.worker.node: life for life in self.workers.values()
            if life.worker.pid is not None and life.worker.state in LIVE
            and self.control.reachable(life.worker.node)
        }
        if not watched:
            return
        # The retries of a round fit well within one tick.
        cap = max(0.1, min(1.6, self.policy.interval / 2))
        began = self.reactor.seconds()
        answered = await ping_rounds(
            self.control, watched, ping_delays(0.1, cap), self._pong, self.log,
            clock=self.reactor, round_trip=self._metrics.ping_seconds.observe,
        )
        now = self.reactor.seconds()
        for node, life in watched.items():
            worker = life.worker
            if (node in answered or worker.pid is None or worker.state == STOPPING
                    or not self._can_judge(node)):
                continue
            if worker.last_pong is not None and worker.last_pong >= began:
                # It answered another ping meanwhile (the start-up poll's):
                # it came up after this round's last ping was sent.
                continue
            if (worker.state == STARTING
                    and now - worker.started_at < self.policy.start_timeout):
                continue
            missed = life.ping_missed()
            if missed >= self.policy.max_missed:
                life.stop("unresponsive", "did not answer ping" if missed == 1
                          else f"did not answer ping in {missed} rounds")

    def _starting(self):
        return {
            life.worker.node: life for life in self.workers.values()
            if life.worker.state == STARTING and life.worker.pid is not None
            and self.control.reachable(life.worker.node)
        }

    def _pong_current(self, life):
        # A worker deleted and created again meanwhile is another one.
        if self.workers.get(life.worker.name) is life:
            self._pong(life)

    # Queues and autoscale

    async def _verify(self):
        """
        Make running workers consume the right queues at the right bounds:
        on a tick every one of them, else those not verified as their
        instance is now (L{cyme.supervision.consuming.check}).
        """
        everyone, self._everyone = self._everyone, False
        await check(self.control, self.store, self.log, self.reactor,
                    list(self.workers.values()), everyone)
