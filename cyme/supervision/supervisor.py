"""The supervisor: keeps this branch's worker processes as the store wants them.

The supervisor decides; each worker's L{WorkerLifecycle} does.  Every tick
(a LoopingCall, and at once after each change of the store, whose change
events call L{Supervisor.reconcile}) it converges the desired state (the
store) with the workers: it starts new or dead workers, stops removed and
disabled ones, restarts those whose command line changed; in the
background it pings the workers and makes the live ones consume the right
queues at the right autoscale bounds through Celery's remote control
(L{cyme.supervision.consuming}).

Liveness is one ping message per round for all of the branch's workers,
retried within the round with backoff (0.1 s doubling to a cap of 1.6 s,
or half the tick interval if that is shorter) for those that did not
answer; a worker that answered none of C{max_missed} rounds in a row is
replaced.  While the broker is down nothing is judged; after it returns,
workers get C{wait_after_broker_revived} seconds to reconnect first.
After a restart of the branch, the workers it left running are adopted,
not restarted.
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
from cyme.supervision.consuming import fix, wanted
from cyme.supervision.launcher import ExecLauncher
from cyme.supervision.lifecycle import WorkerLifecycle
from cyme.supervision.workers import ProcessTable, node_name, read_pidfile, worker_command
from cyme.supervision.workerstate import (
    LIVE,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    Policy,
    Worker,
    ping_delays,
)


def _cancel(call):
    if call is not None and call.active():
        call.cancel()


class Supervisor(service.Service):
    """
    The branch's workers: one L{WorkerLifecycle} per instance in C{workers}.

    C{launcher} starts the workers (exec'd by default, or forked by the
    fork server); C{processes} sees those that are not our children;
    C{policy} holds the figures (L{Policy}).
    """

    log = Logger(observer=logs.observer)

    name = "supervisor"

    def __init__(
        self, store, control, reactor, instances_dir, hostname=None,
        python=sys.executable, processes=None, launcher=None, policy=None,
        worker_loglevel="info",
    ):
        self.store = store
        self.control = control
        self.reactor = reactor
        self.instances_dir = instances_dir
        self.hostname = hostname or socket.gethostname()
        self.python = python
        self.processes = processes if processes is not None else ProcessTable()
        self.launcher = launcher if launcher is not None else ExecLauncher(reactor)
        self.policy = policy if policy is not None else Policy()
        self.worker_loglevel = worker_loglevel
        #: Instance name -> L{WorkerLifecycle}.
        self.workers = {}
        self._loop = None
        self._soon = None
        self._checks = {}
        self._rerun = set()
        self._judge_after = 0.0
        self._starting_poll = None
        self._poll_pings = set()
        self._broker_seen = bool(control.connected)
        self._ticks = 0
        control.add_connection_listener(self._broker_changed)
        self.launcher.add_orphan_listener(self._orphaned)

    # Service

    def startService(self):
        super().startService()
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
        _cancel(self._soon)
        self._rerun.clear()
        for check in (*self._checks.values(), *self._poll_pings):
            if check is not None:
                check.cancel()
        pending = []
        for life in self.workers.values():
            if self.policy.stop_workers_on_exit and life.worker.pid is not None:
                pending.append(life.stop("branch stopping"))
            elif life.worker.state == STOPPING:
                pending.append(life.wait_stopped())
        return defer.DeferredList(pending, consumeErrors=True).addCallback(self._stopped)

    def _stopped(self, _):
        _cancel(self._starting_poll)
        self._starting_poll = None
        for life in self.workers.values():
            life.cancel_timers()

    # Public operations, used by the operations layer

    def reconcile(self):
        """Converge as soon as possible (several requests make one round)."""
        if self.running and (self._soon is None or not self._soon.active()):
            self._soon = self.reactor.callLater(0, self.converge)

    def status(self, name):
        life = self.workers.get(name)
        if life is None:
            return {"state": STOPPED, "pid": None, "restarts": 0, "last_error": None}
        return life.worker.to_json()

    def wait_ready(self, name, timeout):
        """
        Fire with the instance's state once its worker answered a ping, or
        after C{timeout} seconds with whatever state it is in then.
        """
        # Created a moment ago, the tick that starts it may not have run.
        life = self.workers.get(name) or self._lifecycle(name)
        return life.wait_ready(timeout)

    def restart(self, name):
        """
        Restart an instance's worker now, clearing quarantine and backoff.

        Fires once the old worker is gone; the new one starts at once.
        """
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
        """Counters for C{/metrics}: ticks, workers by state, restarts."""
        states = {}
        for life in self.workers.values():
            states[life.worker.state] = states.get(life.worker.state, 0) + 1
        return {
            "ticks": self._ticks,
            "states": states,
            "restarts": sum(life.worker.restarts for life in self.workers.values()),
            "messages": getattr(self.control, "published", 0),
        }

    def node(self, name):
        life = self.workers.get(name)
        if life is None:
            raise NotFound("instance", name)
        return life.worker.node

    # The tick and converging

    def tick(self):
        """
        One supervision round: converge processes now, then check liveness
        and queues in the background.

        Converging never waits on the network, so a slow ping round (a
        worker not answering) never delays starting or stopping others.
        """
        self._ticks += 1
        try:
            self.converge(verify=False)
            self._background("pinging", self._ping_round)
            self._background("verifying", self._verify)
            for life in self.workers.values():
                life.tail()
        except Exception:
            # The LoopingCall would stop for good on an exception.
            self.log.failure("supervisor tick failed")

    def converge(self, verify=True):
        """
        Make the workers what the store wants now: start the missing, stop
        the deleted and disabled, restart those whose command changed; then
        (unless C{verify} is false) check the live ones' queues.
        """
        started = False
        try:
            desired = {i.name: i for i in self.store.instances()}
            self._retire_deleted(desired)
            for instance in desired.values():
                life = self.workers.get(instance.name) or self._lifecycle(instance.name)
                worker = life.worker
                if worker.retired:
                    continue  # the old one is still stopping; start after it
                if not instance.is_enabled:
                    life.stop("disabled")
                    continue
                if worker.state == STOPPING or (worker.pid is None and not life.due()):
                    continue
                try:
                    app = self.store.get_app(instance.app)
                    queues = [self.store.get_queue(instance.app, q) for q in instance.queues]
                except NotFound as e:
                    if worker.pid is None:
                        life.cannot_start(e.message)
                    continue
                # Commands to this worker go to its broker from now on.
                self.control.register(worker.node, (instance.broker or app.broker).as_url())
                argv, env, spec = worker_command(
                    instance, app, queues, worker.directory, self.hostname,
                    self.python, self.worker_loglevel,
                )
                if worker.pid is None:
                    started = life.start(argv, env, spec) or started
                elif worker.spec is not None and worker.spec != spec:
                    self.log.info(
                        "{instance} configuration changed: restarting", instance=worker.name
                    )
                    life.stop("configuration changed").addCallback(self._reconcile_after)
            for life in list(self.workers.values()):
                if life.worker.adopted and life.worker.state != STOPPING:
                    life.check()
        except Exception:
            self.log.failure("supervisor tick failed")
        if started:
            self._poll_starting()
        if verify:
            self._background("verifying", self._verify)

    def _reconcile_after(self, _):
        self.reconcile()

    def _lifecycle(self, name):
        worker = Worker(
            name=name,
            node=node_name(name, self.hostname),
            directory=os.path.join(self.instances_dir, name),
        )
        life = self.workers[name] = WorkerLifecycle(
            worker, self.reactor, self.launcher, self.processes, self.policy, self.reconcile
        )
        return life

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
            for queue in (worker.verified or ((), 0, 0))[0]:
                self.control.cancel_consumer([worker.node], queue, 1.0).addErrback(
                    lambda f: None
                )
            life.stop("deleted").addCallback(lambda _, life=life: self._remove(life))

    def _remove(self, life):
        worker = life.worker
        if self.workers.get(worker.name) is life:
            del self.workers[worker.name]
        shutil.rmtree(worker.directory, ignore_errors=True)
        self.log.info("{instance} removed", instance=worker.name)
        self.reconcile()

    # Adoption

    def _adopt(self):
        """
        Take over workers a previous run of the branch left running.

        A worker whose pid file names a live process with its node name is
        adopted (and confirmed by the first ping); a worker whose instance
        no longer exists is stopped and its directory removed.
        """
        try:
            names = sorted(os.listdir(self.instances_dir))
        except FileNotFoundError:
            return
        desired = {i.name: i for i in self.store.instances()}
        for name in names:
            directory = os.path.join(self.instances_dir, name)
            if not os.path.isdir(directory):
                continue
            life = self._lifecycle(name)
            pid = read_pidfile(os.path.join(directory, "worker.pid"))
            if pid is not None and self.processes.is_worker(pid, life.worker.node):
                life.adopt(pid)
            instance = desired.get(name)
            if instance is not None and life.worker.pid is not None:
                try:
                    app = self.store.get_app(instance.app)
                except NotFound:
                    continue
                self.control.register(
                    life.worker.node, (instance.broker or app.broker).as_url()
                )
        self._retire_deleted(desired)

    def _orphaned(self, pid):
        """Worker C{pid} is nobody's child here any more: watch it by pid."""
        for life in self.workers.values():
            if life.worker.pid == pid:
                life.orphaned()

    # Liveness

    def _broker_changed(self, connected):
        if connected and not self._broker_seen:
            # The first connection is no revival: nothing was cut off.
            self._broker_seen = True
            self.reconcile()
            self._poll_starting()  # adopted workers wait for a first ping
        elif connected:
            self._judge_after = (
                self.reactor.seconds() + self.policy.wait_after_broker_revived
            )
            self.log.info(
                "broker revived: judging workers again in {seconds:g} s",
                seconds=self.policy.wait_after_broker_revived,
            )
            for life in self.workers.values():
                life.worker.verified = None
            self.reconcile()
            # Starting workers need no grace period: a pong is a pong.
            self._poll_starting()
        else:
            self._broker_seen = True
            self.log.warn("broker connection lost: not judging workers meanwhile")

    def _can_judge(self):
        return self.control.connected and self.reactor.seconds() >= self._judge_after

    async def _ping(self, lives, delays):
        """Ping C{lives} in rounds with growing timeouts; the answered nodes."""
        answered = set()
        waiting = {life.worker.node: life for life in lives}
        for timeout in delays:
            if not waiting or not self.control.connected:
                break
            try:
                replies = await self.control.ping(sorted(waiting), timeout)
            except defer.CancelledError:
                raise
            except Exception:
                self.log.failure("ping failed")
                break
            for node in replies:
                if node in waiting:
                    answered.add(node)
                    self._pong(waiting.pop(node))
        return answered

    def _pong(self, life):
        if life.pong() and self.running:
            self._background("verifying", self._verify)

    async def _ping_round(self):
        # Pongs are taken whenever the broker is up; only judging the
        # silent waits for the grace period after a revival.
        if not self.control.connected:
            return
        watched = [
            life for life in self.workers.values()
            if life.worker.pid is not None and life.worker.state in LIVE
        ]
        if not watched:
            return
        # The retries of a round fit well within one tick.
        cap = max(0.1, min(1.6, self.policy.interval / 2))
        began = self.reactor.seconds()
        answered = await self._ping(watched, ping_delays(0.1, cap))
        if not self._can_judge():
            return
        now = self.reactor.seconds()
        for life in watched:
            worker = life.worker
            if worker.node in answered or worker.pid is None or worker.state == STOPPING:
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

    def _poll_starting(self, delay=0.02):
        """
        While workers start, ping them every 20 ms, not once a tick.

        The pings overlap: one sent before a worker listens is lost, and the
        next must not wait for its timeout.  After a worker's first two
        seconds (a loaded machine), every 200 ms with longer timeouts.
        """
        if self._starting_poll is not None and self._starting_poll.active():
            return
        if self.running:
            self._starting_poll = self.reactor.callLater(delay, self._poll_starting_once)

    def _poll_starting_once(self):
        self._starting_poll = None
        starting = {
            life.worker.node: life for life in self.workers.values()
            if life.worker.state == STARTING and life.worker.pid is not None
        }
        if not starting or not self.running or not self.control.connected:
            return
        now = self.reactor.seconds()
        young = min(now - (life.worker.started_at or now)
                    for life in starting.values()) < 2.0
        d = self.control.ping(sorted(starting), 0.2 if young else 0.5)
        self._poll_pings.add(d)
        d.addCallback(self._starting_pongs, starting)
        d.addErrback(self._check_failed, "start-up ping")
        d.addBoth(lambda _: self._poll_pings.discard(d))
        self._poll_starting(0.02 if young else 0.2)

    def _starting_pongs(self, replies, starting):
        for node in replies:
            life = starting.get(node)
            if life is not None and self.workers.get(life.worker.name) is life:
                self._pong(life)

    # Queues and autoscale

    async def _verify(self):
        """
        Make running workers consume the right queues at the right bounds.

        Only workers not verified since their last change are asked (one
        active_queues and one stats message for all of them); each fix is
        verified on the next tick.  Every twelfth tick all are re-checked.
        """
        if not self.control.connected:
            return
        desired = {i.name: i for i in self.store.instances()}
        full = self._ticks % 12 == 0
        todo = []
        for life in self.workers.values():
            worker = life.worker
            instance = desired.get(worker.name)
            if worker.state != RUNNING or instance is None:
                continue
            if full or worker.verified != wanted(self.store, instance):
                todo.append((worker, instance))
        if not todo:
            return
        nodes = [w.node for w, _ in todo]
        try:
            queues = await self.control.active_queues(nodes, 1.0)
            stats = {}
            if any(i.pool == "prefork" for _, i in todo):
                stats = await self.control.stats(
                    [w.node for w, i in todo if i.pool == "prefork"], 1.0
                )
        except defer.CancelledError:
            raise
        except Exception:
            self.log.failure("cannot read the workers' queues")
            return
        for worker, instance in todo:
            if worker.node not in queues:
                continue
            try:
                changed = await fix(self.control, self.store, self.log, worker, instance,
                                    queues[worker.node], stats.get(worker.node))
            except defer.CancelledError:
                raise  # the branch is stopping
            except Exception:
                self.log.failure("{instance}: cannot fix queues", instance=worker.name)
                continue
            if not changed:
                worker.verified = wanted(self.store, instance)
