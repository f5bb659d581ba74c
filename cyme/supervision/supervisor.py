"""The supervisor: keeps this branch's worker processes as the store wants them.

Every tick (a LoopingCall, and at once after each change through the API)
it reconciles the desired state (the store) with the actual one (one
L{Worker} record per instance): it starts new or dead workers, stops
removed and disabled ones, restarts the unresponsive, and makes the live
ones consume the right queues at the right autoscale bounds through
Celery's remote control (L{cyme.supervision.consuming}).

Liveness is one ping message per round for all of the branch's workers,
retried within the round with backoff (0.1 s doubling to a cap of 1.6 s,
or half the tick interval if that is shorter) for those that did not
answer; a worker that answered none of a round's pings is replaced.
Restarts back off exponentially with jitter, and an instance that keeps
dying is quarantined for a while with the reason.
While the broker is down nothing is judged; after it returns, workers get
C{wait_after_broker_revived} seconds to reconnect first.
"""

import os
import random
import shutil
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import logs
from cyme.supervision.consuming import fix, wanted
from cyme.errors import NotFound
from cyme.supervision.launcher import ExecLauncher
from cyme.supervision.workerstate import (
    QUARANTINED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    UNRESPONSIVE,
    Worker,
    ping_delays,
    restart_delay,
)
from cyme.supervision.workers import (
    LogTail,
    ProcessTable,
    WorkerProtocol,
    exit_description,
    failed_exit,
    node_name,
    read_pidfile,
    remove_pidfile,
    worker_command,
    write_file,
)

def _cancel(call):
    if call is not None and call.active():
        call.cancel()


class Supervisor(service.Service):
    log = Logger(observer=logs.observer)

    name = "supervisor"

    def __init__(
        self,
        store,
        control,
        reactor,
        instances_dir,
        hostname=None,
        interval=5.0,
        kill_timeout=10.0,
        start_timeout=30.0,
        max_missed=1,
        restart_window=60.0,
        max_restarts=5,
        quarantine=300.0,
        stable_after=30.0,
        wait_after_broker_revived=30.0,
        stop_workers_on_exit=False,
        python=sys.executable,
        processes=None,
        worker_loglevel="info",
        jitter=random.random,
        owns=lambda instance: True,
        launcher=None,
    ):
        self.store = store
        self.control = control
        self.reactor = reactor
        self.instances_dir = instances_dir
        self.hostname = hostname or socket.gethostname()
        self.interval = interval
        self.kill_timeout = kill_timeout
        self.start_timeout = start_timeout
        self.max_missed = max_missed
        self.restart_window = restart_window
        self.max_restarts = max_restarts
        self.quarantine = quarantine
        self.stable_after = stable_after
        self.wait_after_broker_revived = wait_after_broker_revived
        self.stop_workers_on_exit = stop_workers_on_exit
        self.python = python
        self.processes = processes if processes is not None else ProcessTable()
        self.worker_loglevel = worker_loglevel
        self.jitter = jitter
        self.owns = owns
        # How workers are started: exec'd (default) or forked by the fork
        # server; either tells us when its workers end.
        self.launcher = launcher if launcher is not None else ExecLauncher(reactor)
        if hasattr(self.launcher, "orphaned"):
            self.launcher.orphaned = self._orphaned
        self.workers = {}
        self._loop = None
        self._pinging = None
        self._verifying = None
        self._rerun = set()
        self._soon = None
        self._judge_after = 0.0
        self._starting_poll = None
        self._poll_pings = set()
        self._broker_seen = bool(control.connected)
        self._ticks = 0
        control.add_connection_listener(self._broker_changed)

    # Service

    def startService(self):
        super().startService()
        self._adopt()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self):
        """
        Stop supervising; fires once the tick in progress and every stop
        under way have finished.  Workers keep running for the next start
        unless C{stop_workers_on_exit}.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        self._rerun.clear()
        pending = []
        for check in (self._pinging, self._verifying, *self._poll_pings):
            if check is not None:
                check.cancel()
        for worker in self.workers.values():
            if self.stop_workers_on_exit and worker.pid is not None:
                pending.append(self._stop(worker, "branch stopping"))
            elif worker.state == STOPPING:
                pending.append(self._wait_stopped(worker))
        return defer.DeferredList(pending, consumeErrors=True).addCallback(
            lambda _: self._stop_polls()
        )

    def _stop_polls(self):
        _cancel(self._starting_poll)
        self._starting_poll = None
        for worker in self.workers.values():
            _cancel(worker.restart_call)
            worker.restart_call = None

    # Public operations, used by the controller

    def reconcile(self):
        """Converge as soon as possible (several requests make one round)."""
        if self.running and (self._soon is None or not self._soon.active()):
            self._soon = self.reactor.callLater(0, self._converge_soon)

    def status(self, name):
        worker = self.workers.get(name)
        if worker is None:
            return {"state": STOPPED, "pid": None, "restarts": 0, "last_error": None}
        return worker.to_json()

    def wait_ready(self, name, timeout):
        """
        Fire with the instance's state once its worker answered a ping, or
        after C{timeout} seconds with whatever state it is in then.
        """
        worker = self.workers.get(name)
        if worker is None:
            # Created a moment ago: the tick that starts it has not run yet.
            worker = self._record(name)
        if worker.state not in (STARTING, UNRESPONSIVE, STOPPED):
            return defer.succeed(worker.to_json())
        d = defer.Deferred()
        worker.ready_waiters.append(d)
        call = self.reactor.callLater(timeout, self._ready_timeout, worker, d)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _ready_timeout(self, worker, d):
        if d in worker.ready_waiters:
            worker.ready_waiters.remove(d)
            d.callback(worker.to_json())

    def restart(self, name):
        """
        Restart an instance's worker now, clearing quarantine and backoff.

        Fires once the old worker is gone; the new one starts at once.
        """
        worker = self.workers.get(name)
        if worker is None:
            self.reconcile()
            return defer.succeed(None)
        worker.quarantined_until = None
        worker.attempt = 0
        worker.next_start = 0.0
        worker.restart_times.clear()
        if worker.state == QUARANTINED:
            worker.state = STOPPED
        d = self._stop(worker, "restart requested")
        d.addCallback(lambda _: self.reconcile())
        return d

    def wait_stopped(self, name):
        """Apply the desired state now; fire once C{name}'s worker is gone."""
        self._converge_all()
        worker = self.workers.get(name)
        if worker is None or worker.pid is None:
            return defer.succeed(self.status(name))
        return self._wait_stopped(worker).addCallback(lambda _: self.status(name))

    def metrics(self):
        """Counters for C{/metrics}: ticks, workers by state, restarts."""
        states = {}
        for worker in self.workers.values():
            states[worker.state] = states.get(worker.state, 0) + 1
        return {
            "ticks": self._ticks,
            "states": states,
            "restarts": sum(w.restarts for w in self.workers.values()),
            "messages": getattr(self.control, "published", 0),
        }

    def node(self, name):
        worker = self.workers.get(name)
        if worker is None:
            raise NotFound("instance", name)
        return worker.node

    # The tick

    def tick(self):
        """
        One supervision round: converge processes now, then check liveness
        and queues in the background.

        Converging never waits on the network, so a slow ping round (a
        worker not answering) never delays starting or stopping others.
        """
        self._ticks += 1
        self._converge_all()
        self._background("_pinging", self._ping_round)
        self._background("_verifying", self._verify)
        self._tail_logs()

    def _converge_soon(self):
        self._soon = None
        self._converge_all()
        self._background("_verifying", self._verify)

    def _background(self, slot, work):
        """Run C{work} unless its previous run is still going; log failures."""
        if getattr(self, slot) is not None:
            self._rerun.add(slot)
            return
        d = defer.ensureDeferred(work())
        setattr(self, slot, d)
        d.addErrback(self._background_failed, slot)

        def done(_):
            setattr(self, slot, None)
            if slot in self._rerun and self.running:
                self._rerun.discard(slot)
                self._background(slot, work)

        d.addBoth(done)

    def _background_failed(self, failure, slot):
        if not failure.check(defer.CancelledError):
            self.log.failure("supervisor {what} failed", failure, what=slot[1:])

    def _desired(self):
        return {i.name: i for i in self.store.instances() if self.owns(i)}

    def _converge_all(self):
        try:
            now = self.reactor.seconds()
            desired = self._desired()
            for worker in list(self.workers.values()):
                if worker.name not in desired and not worker.retired:
                    self._retire(worker)
            for instance in desired.values():
                worker = self.workers.get(instance.name)
                if worker is None:
                    worker = self._record(instance.name)
                elif worker.retired:
                    continue  # the old one is still stopping; start after it
                self._converge(worker, instance, now)
            self._check_adopted()
        except Exception:
            self.log.failure("supervisor tick failed")

    def _record(self, name):
        worker = Worker(
            name=name,
            node=node_name(name, self.hostname),
            directory=os.path.join(self.instances_dir, name),
        )
        self.workers[name] = worker
        return worker

    def _converge(self, worker, instance, now):
        if not instance.is_enabled:
            if worker.pid is not None and worker.state != STOPPING:
                self._stop(worker, "disabled")
            return
        if worker.state == QUARANTINED:
            if now < worker.quarantined_until:
                return
            self.log.info("{instance} leaves quarantine", instance=worker.name)
            worker.state = STOPPED
            worker.quarantined_until = None
            worker.attempt = 0
            worker.restart_times.clear()
        if worker.pid is None:
            if worker.state != STOPPING and now >= worker.next_start:
                self._start(worker, instance, now)
            return
        if worker.state == STOPPING:
            return
        try:
            _, _, spec = self._command(worker, instance)
        except NotFound:
            return
        if worker.spec is not None and worker.spec != spec:
            self.log.info(
                "{instance} configuration changed: restarting", instance=worker.name
            )
            self._stop(worker, "configuration changed").addCallback(
                lambda _: self.reconcile()
            )

    def _command(self, worker, instance):
        app = self.store.get_app(instance.app)
        queues = [self.store.get_queue(instance.app, q) for q in instance.queues]
        self.control.register(worker.node, (instance.broker or app.broker).as_url())
        return worker_command(
            instance, app, queues, worker.directory, self.hostname,
            self.python, self.worker_loglevel,
        )

    def _start(self, worker, instance, now):
        try:
            argv, env, spec = self._command(worker, instance)
        except NotFound as e:
            worker.last_error = e.message
            return
        os.makedirs(worker.directory, exist_ok=True)
        log_path = os.path.join(worker.directory, "worker.log")
        if worker.log_tail is None:
            worker.log_tail = LogTail(log_path)
        # What an earlier run wrote is not this one's reason to fail.
        self._tail(worker)
        worker.last_line = None
        try:
            process = self.launcher.spawn(
                WorkerProtocol(lambda reason: self._ended(worker, reason)),
                argv, env, worker.directory, log_path,
            )
        except Exception as e:
            worker.last_error = f"cannot start: {e}"
            self.log.failure("{instance} cannot start", instance=worker.name)
            self._failed(worker, now, worker.last_error)
            return
        # Written before anything else can happen: a branch stopped while
        # the worker starts must find it on its next start, not start a
        # second one beside it.
        write_file(os.path.join(worker.directory, "worker.pid"), f"{process.pid}\n")
        write_file(os.path.join(worker.directory, "worker.spec"), spec)
        worker.process = process
        worker.pid = process.pid
        worker.spec = spec
        worker.state = STARTING
        worker.started_at = now
        worker.missed = 0
        worker.verified = None
        self.log.info(
            "{instance} started as pid {pid} ({node})",
            instance=worker.name, pid=worker.pid, node=worker.node,
        )
        self._poll_starting()

    def _ended(self, worker, reason):
        """The worker process is gone (ours, or an adopted one seen dead)."""
        now = self.reactor.seconds()
        self._tail(worker)
        how = exit_description(reason)
        if worker.last_line and failed_exit(reason):
            # Celery's last words (an exception's message, most often)
            # say more than the exit status.
            how = f"{how}: {worker.last_line[:300]}"
        pid = worker.pid
        worker.process = None
        worker.pid = None
        if pid is not None:
            remove_pidfile(os.path.join(worker.directory, "worker.pid"), pid)
        if worker.kill_call is not None and worker.kill_call.active():
            worker.kill_call.cancel()
        worker.kill_call = None
        if worker.state == STOPPING:
            worker.state = STOPPED
            self.log.info("{instance} stopped ({how})", instance=worker.name, how=how)
            waiters, worker.stop_waiters = worker.stop_waiters, []
            for d in waiters:
                d.callback(None)
            if worker.retired:
                self._remove(worker)
            return
        self.log.warn(
            "{instance} (pid {pid}) died: {how}", instance=worker.name,
            pid=pid, how=how,
        )
        self._failed(worker, now, how)
        self.reconcile()

    def _failed(self, worker, now, why):
        worker.last_error = why
        worker.state = STOPPED
        if worker.started_at is not None and now - worker.started_at >= self.stable_after:
            worker.attempt = 0
        worker.restart_times = [
            t for t in worker.restart_times if now - t < self.restart_window
        ] + [now]
        if len(worker.restart_times) > self.max_restarts:
            worker.state = QUARANTINED
            worker.quarantined_until = now + self.quarantine
            worker.last_error = (
                f"quarantined: failed {len(worker.restart_times)} times within "
                f"{self.restart_window:g} s (last: {why})"
            )
            self.log.error(
                "{instance} {reason}; retrying in {seconds:g} s",
                instance=worker.name, reason=worker.last_error, seconds=self.quarantine,
            )
            self._release_ready(worker)
            return
        worker.restarts += 1
        worker.next_start = now + restart_delay(worker.attempt, jitter=self.jitter)
        worker.attempt += 1
        if worker.next_start > now:
            _cancel(worker.restart_call)
            worker.restart_call = self.reactor.callLater(
                worker.next_start - now, self.reconcile
            )

    # Stopping

    def _stop(self, worker, why):
        """TERM, then KILL after C{kill_timeout}; fires when the process is gone."""
        if worker.pid is None:
            return defer.succeed(None)
        d = self._wait_stopped(worker)
        if worker.state == STOPPING:
            return d
        self.log.info(
            "{instance} stopping (pid {pid}): {why}",
            instance=worker.name, pid=worker.pid, why=why,
        )
        worker.state = STOPPING
        self._release_ready(worker)
        adopted = worker.adopted
        worker.kill_call = self.reactor.callLater(self.kill_timeout, self._kill, worker)
        self._signal(worker, signal.SIGTERM)
        # A stopped worker (SIGSTOP, a debugger let go) acts on the TERM
        # only once continued: a warm shutdown now, not a KILL later.
        self._signal(worker, signal.SIGCONT)
        if adopted:
            self._watch_adopted(worker)
        return d

    def _wait_stopped(self, worker):
        d = defer.Deferred()
        worker.stop_waiters.append(d)
        return d

    def _kill(self, worker):
        worker.kill_call = None
        if worker.pid is not None:
            self.log.warn(
                "{instance} (pid {pid}) did not stop in {seconds:g} s: KILL",
                instance=worker.name, pid=worker.pid, seconds=self.kill_timeout,
            )
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker, signum):
        if worker.process is not None:
            try:
                worker.process.signalProcess(signum)
            except Exception:
                pass  # already gone: processEnded is on its way
        elif worker.pid is not None:
            self.processes.signal(worker.pid, signum)

    def _watch_adopted(self, worker):
        # An adopted worker is not our child: no processEnded comes, so
        # look for its end while it stops.
        if worker.pid is None:
            return
        if not self.processes.alive(worker.pid):
            self._ended(worker, None)
        else:
            self.reactor.callLater(0.1, self._watch_adopted, worker)

    def _retire(self, worker):
        """The instance was deleted: stop its worker, then remove its files."""
        worker.retired = True
        self._release_ready(worker)
        if worker.pid is None:
            self._remove(worker)
            return
        node = [worker.node]
        try:
            queues = [q for q in self._live_queue_names(worker)]
        except Exception:
            queues = []
        for queue in queues:
            # Stop taking new tasks before the warm shutdown.
            self.control.cancel_consumer(node, queue, 1.0).addErrback(lambda f: None)
        self._stop(worker, "deleted")

    def _live_queue_names(self, worker):
        return [q for q in (worker.verified or ((), 0, 0))[0]]

    def _remove(self, worker):
        if self.workers.get(worker.name) is worker:
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
        desired = {i.name for i in self.store.instances() if self.owns(i)}
        now = self.reactor.seconds()
        for name in names:
            directory = os.path.join(self.instances_dir, name)
            if not os.path.isdir(directory):
                continue
            worker = self._record(name)
            pid = read_pidfile(os.path.join(directory, "worker.pid"))
            if pid is not None and self.processes.is_worker(pid, worker.node):
                worker.pid = pid
                worker.state = STARTING
                worker.started_at = now
                worker.log_tail = LogTail(os.path.join(directory, "worker.log"))
                try:
                    with open(os.path.join(directory, "worker.spec")) as f:
                        worker.spec = f.read().strip() or None
                except OSError:
                    worker.spec = None
                self.log.info(
                    "{instance} adopted (pid {pid})", instance=name, pid=pid
                )
            if name not in desired:
                self._retire(worker)
            elif worker.pid is not None:
                try:
                    self._command(worker, self.store.get_instance(name))
                except NotFound:
                    pass

    def _orphaned(self, pid):
        """Worker C{pid} is nobody's child here any more: watch it by pid."""
        for worker in self.workers.values():
            if worker.pid == pid and worker.process is not None:
                worker.process = None
                if worker.state == STOPPING:
                    self._watch_adopted(worker)

    def _check_adopted(self):
        for worker in list(self.workers.values()):
            if worker.adopted and worker.state != STOPPING:
                if not self.processes.alive(worker.pid):
                    self._ended(worker, None)

    # Liveness

    def _broker_changed(self, connected):
        if connected and not self._broker_seen:
            # The first connection is no revival: nothing was cut off.
            self._broker_seen = True
            self.reconcile()
            self._poll_starting()  # adopted workers wait for a first ping
        elif connected:
            self._judge_after = self.reactor.seconds() + self.wait_after_broker_revived
            self.log.info(
                "broker revived: judging workers again in {seconds:g} s",
                seconds=self.wait_after_broker_revived,
            )
            for worker in self.workers.values():
                worker.verified = None
            self.reconcile()
            # Starting workers need no grace period: a pong is a pong.
            self._poll_starting()
        else:
            self._broker_seen = True
            self.log.warn("broker connection lost: not judging workers meanwhile")

    def _can_judge(self):
        return self.control.connected and self.reactor.seconds() >= self._judge_after

    async def _ping(self, workers, delays):
        """Ping C{workers} in rounds with growing timeouts; the answered set."""
        answered = set()
        waiting = {w.node: w for w in workers}
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

    def _pong(self, worker):
        now = self.reactor.seconds()
        worker.last_pong = now
        worker.missed = 0
        if worker.state in (STARTING, UNRESPONSIVE):
            if worker.state == STARTING:
                self.log.info(
                    "{instance} is up (pid {pid}) after {seconds:.2f} s",
                    instance=worker.name, pid=worker.pid,
                    seconds=now - (worker.started_at or now),
                )
            worker.state = RUNNING
            if self.running:
                self._background("_verifying", self._verify)
        self._release_ready(worker)

    def _release_ready(self, worker):
        waiters, worker.ready_waiters = worker.ready_waiters, []
        for d in waiters:
            d.callback(worker.to_json())

    async def _ping_round(self):
        # Pongs are taken whenever the broker is up; only judging the
        # silent waits for the grace period after a revival.
        if not self.control.connected:
            return
        watched = [
            w for w in self.workers.values()
            if w.pid is not None and w.state in (STARTING, RUNNING, UNRESPONSIVE)
        ]
        if not watched:
            return
        # The retries of a round fit well within one tick.
        cap = max(0.1, min(1.6, self.interval / 2))
        began = self.reactor.seconds()
        answered = await self._ping(watched, ping_delays(0.1, cap))
        if not self._can_judge():
            return
        now = self.reactor.seconds()
        for worker in watched:
            if worker.node in answered or worker.pid is None or worker.state == STOPPING:
                continue
            if worker.last_pong is not None and worker.last_pong >= began:
                # It answered another ping meanwhile (the start-up poll's):
                # it came up after this round's last ping was sent.
                continue
            if worker.state == STARTING and now - worker.started_at < self.start_timeout:
                continue
            worker.missed += 1
            worker.state = UNRESPONSIVE
            self.log.warn(
                "{instance} (pid {pid}) did not answer ping ({missed} in a row)",
                instance=worker.name, pid=worker.pid, missed=worker.missed,
            )
            if worker.missed >= self.max_missed:
                worker.last_error = (
                    "did not answer ping" if worker.missed == 1
                    else f"did not answer ping in {worker.missed} rounds"
                )
                self._stop(worker, "unresponsive").addCallback(
                    lambda _, w=worker: self._after_unresponsive(w)
                )

    def _after_unresponsive(self, worker):
        if not worker.retired:
            self._failed(worker, self.reactor.seconds(), worker.last_error)
            self.reconcile()

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
            w.node: w for w in self.workers.values() if w.state == STARTING and w.pid is not None
        }
        if not starting or not self.running or not self.control.connected:
            return
        now = self.reactor.seconds()
        young = min(now - (w.started_at or now) for w in starting.values()) < 2.0
        d = self.control.ping(sorted(starting), 0.2 if young else 0.5)
        self._poll_pings.add(d)
        d.addCallback(self._starting_pongs, starting)
        d.addErrback(self._background_failed, "_start-up ping")
        d.addBoth(lambda _: self._poll_pings.discard(d))
        self._poll_starting(0.02 if young else 0.2)

    def _starting_pongs(self, replies, starting):
        for node in replies:
            worker = starting.get(node)
            if worker is not None and self.workers.get(worker.name) is worker:
                self._pong(worker)

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
        desired = self._desired()
        full = self._ticks % 12 == 0
        todo = []
        for worker in self.workers.values():
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

    # Logs

    def _tail_logs(self):
        for worker in self.workers.values():
            self._tail(worker)

    def _tail(self, worker):
        if worker.log_tail is None:
            return
        for line in worker.log_tail.lines():
            self.log.info("{instance} | {line}", instance=worker.name, line=line)
            if line.strip():
                worker.last_line = line.strip()
