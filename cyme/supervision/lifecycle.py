"""One worker's lifecycle: an explicit state machine with its own timers.

The supervisor decides what should run; a L{WorkerLifecycle} does it for
one instance's worker.  Every state change goes through L{TRANSITIONS},
a table of C{(state, event) -> (next state, actions)}: the record's
C{state} is assigned in one place, L{WorkerLifecycle._fire}, and an event
a state has no row for changes nothing.  The lifecycle owns the timers of
its worker: the KILL that follows an unheeded TERM, the restart backoff,
the end of a quarantine and the watch over an adopted worker that stops;
its clock, launcher and process table are injected (the shape of
Twisted's C{ClientService} machine).

Events come from the supervisor, the process and the timers (the table
and its events: L{cyme.supervision.transitions}); each transition is told
to the C{transition} listener it was given.  What the worker writes is
relayed as it comes (L{WorkerLifecycle.tail}, L{cyme.supervision.relay}); a
line saying it cannot reach its broker makes it C{FAILED} (C{last_error}).
"""

import os
import signal

from twisted.internet import defer
from twisted.logger import Logger

from cyme import logs
from cyme.supervision.relay import WorkerOutput
from cyme.supervision.transitions import TRANSITIONS
from cyme.supervision.workers import (
    LogTail, WorkerProtocol, broker_failure, cannot_start, exit_description, failed_exit,
    make_directory, read_spec, record_spawn, remove_pidfile, still_failing, cancel_call,
    where_raised,
)
from cyme.supervision.workerstate import (
    ADOPTED, BACKOFF_ELAPSED, CANNOT_CONNECT, CRASHED, EXITED, FAILED, FLAPPED,
    KILL_TIMEOUT, LIVE, ORPHANED, PING_MISSED, PONG, QUARANTINE_ELAPSED, RESTART_ASKED,
    RUNNING, SPAWN_FAILED, SPAWNED, START_FAILED, STARTING, STOP_ASKED, STOPPED, STOPPING,
    UNRESPONSIVE, WATCH,
)


class WorkerLifecycle:
    """The worker of one instance: its process, its state, its timers."""

    log = Logger(observer=logs.observer)

    def __init__(self, worker, clock, launcher, processes, policy, reconcile, transition=None):
        #: The L{cyme.supervision.workerstate.Worker} record.
        self.worker = worker
        self._clock = clock
        self._launcher = launcher
        self._processes = processes
        self._policy = policy
        #: Asks the supervisor for a converge round (a restart is due).
        self._reconcile_soon = reconcile
        #: Told C{(worker, state before, event, detail)} of each transition, as
        #: its state is assigned (before its actions).
        self._transition = transition or (lambda *_: None)
        self._kill_call = self._restart_call = self._quarantine_call = self._watch_call = None
        self._closed = False
        self._output = WorkerOutput(worker.name, clock)

    # The machine

    def _fire(self, event, detail=None):
        row = TRANSITIONS.get((self.worker.state, event))
        if row is None:
            return
        before, (self.worker.state, actions) = self.worker.state, row
        self._transition(self.worker, before, event, detail)
        for action in actions:
            getattr(self, action)(detail)

    # Inputs from the supervisor

    def due(self):
        """Whether the worker should be started now (not up, no backoff)."""
        w = self.worker
        return w.state in (STOPPED, START_FAILED) and self._clock.seconds() >= w.next_start

    def start(self, argv, env, spec):
        """Spawn the worker with C{argv} and C{env}; whether it was spawned."""
        w = self.worker
        if (w.state, SPAWNED) not in TRANSITIONS:
            return False
        try:
            make_directory(w.directory)
            if w.log_tail is None:
                w.log_tail = LogTail(os.path.join(w.directory, "worker.log"))
            # What an earlier run wrote is not this one's reason to fail.
            self.tail()
            w.last_line = None
            process = self._launcher.spawn(
                WorkerProtocol(self.ended), argv, env, w.directory, w.log_tail.path)
        except Exception as e:
            self.spawn_failed(e)
            return False
        # Ours from now on: its end, its signals, no second one beside it.
        self._fire(SPAWNED, (process, spec))
        try:
            # Written at once: a branch stopped while the worker starts must
            # find it on its next start, not start a second one beside it.
            record_spawn(w.directory, process.pid, spec)
        except Exception as e:
            # Unrecorded, it would be that second one: stopped now (TERM, then
            # KILL) while this run still knows it, and its end is a start that
            # failed.  (Recording first cannot be: the pid comes from the spawn.)
            w.unrecorded = True
            self.stop("its pid file cannot be written", cannot_start(e))
            return False
        return True

    def spawn_failed(self, error):
        """Its directory, command or process could not be made (C{error}): a
        failure (backoff, then quarantine)."""
        reason = cannot_start(error)
        self.log.warn("{instance} {reason}{where}", instance=self.worker.name, reason=reason,
                      where=where_raised(error))
        self._fire(self._count_failure(reason, SPAWN_FAILED))

    def cannot_start(self, reason):
        """The worker cannot be started for C{reason} (its app is gone)."""
        self.worker.last_error = reason

    def verified(self, wanted):
        """It consumes C{wanted} (None: ask again); what was sent is confirmed or moot."""
        self.worker.verified = wanted
        self.worker.sent = self.worker.sent_at = None

    def sent(self, wanted):
        """
        Fixes towards C{wanted} were sent: nothing is verified until the
        worker is asked again (a change back to what was verified before
        must not look done).
        """
        w = self.worker
        w.verified = None
        if w.sent != wanted:  # sent_at: when the first fix towards it went
            w.sent, w.sent_at = wanted, self._clock.seconds()

    def observed(self, queues, max_concurrency, min_concurrency):
        """What the worker said it consumes and its bounds, just now."""
        self.worker.live = {
            "queues": sorted(queues), "max": max_concurrency, "min": min_concurrency,
            "seen_at": self._clock.seconds(),
        }

    def adopt(self, pid):
        """Take over worker C{pid} that a previous run of the branch left."""
        self._fire(ADOPTED, pid)
        reason = still_failing(os.path.join(self.worker.directory, "worker.log"))
        if reason is not None:
            self._fire(CANNOT_CONNECT, reason)

    def pong(self):
        """The worker answered a ping; whether it is up only now."""
        before = self.worker.state
        self._fire(PONG)
        return before != RUNNING and self.worker.state == RUNNING

    def ping_missed(self):
        """The worker answered none of a round's pings; the rounds in a row."""
        self._fire(PING_MISSED)
        return self.worker.missed

    def stop(self, why, failure=None):
        """
        TERM (and CONT), then KILL after the kill timeout; fires once the
        process is gone.  A C{failure} (why the worker is replaced) is
        counted against the restart budget once it is.
        """
        d = self.wait_stopped()
        self._fire(STOP_ASKED, (why, failure))
        return d

    def wait_stopped(self):
        """Fires once the process is gone."""
        if self.worker.pid is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self.worker.stop_waiters.append(d)
        return d

    def restart(self):
        """Clear quarantine and backoff, stop the worker; fires once gone."""
        d = self.wait_stopped()
        self._fire(RESTART_ASKED, ("restart requested", None))
        return d

    def retire(self):
        """The instance was deleted: nobody waits for it to be ready."""
        self.worker.retired = True
        self._release_ready()

    def wait_ready(self, timeout):
        """Its status once it answered a ping, or whatever it is after C{timeout} s."""
        w = self.worker
        if w.state not in (STARTING, UNRESPONSIVE, STOPPED):
            return defer.succeed(w.to_json())
        d = defer.Deferred(self._forget_ready)
        w.ready_waiters.append(d)
        return d.addTimeout(timeout, self._clock, onTimeoutCancel=self._status_now)

    def check(self):
        """An adopted worker is nobody's child here: see whether it is gone."""
        self._look()

    def cancel_timers(self):
        """The supervisor stopped: no timer is to come (not even after a late
        exit), and who waits for the worker to be ready is answered now."""
        self._closed = True
        for call in (self._restart_call, self._quarantine_call, self._watch_call,
                     self._kill_call):
            cancel_call(call)
        self._restart_call = self._quarantine_call = self._watch_call = self._kill_call = None
        self._release_ready()

    def _later(self, delay, event):
        """C{event} after C{delay} seconds; nothing once the supervisor stopped."""
        return None if self._closed else self._clock.callLater(delay, self._fire, event)

    def tail(self):
        """Relay what the worker wrote since the last look; act on a refusal."""
        w = self.worker
        lines = [] if w.log_tail is None else w.log_tail.lines()
        self._output.relay(lines)
        for line in lines:  # none is blank
            w.last_line = line.strip()
            reason = broker_failure(w.last_line)
            if reason is not None:
                self._fire(CANNOT_CONNECT, reason)

    # Inputs from the process

    def ended(self, reason):
        """The worker process is gone (ours, or an adopted one seen dead)."""
        w = self.worker
        if w.state not in (*LIVE, STOPPING):
            return
        self.tail()
        how = exit_description(reason)
        if w.state == FAILED and failed_exit(reason):
            # Its broker out of reach, Celery gave up: the reason it gave
            # says more than a traceback's last line.
            how = f"{how}: {w.last_error}"
        elif w.last_line and failed_exit(reason):
            # Celery's last words (an exception's message, most often)
            # say more than the exit status.
            how = f"{how}: {w.last_line[:300]}"
        pid, w.process, w.pid = w.pid, None, None
        if pid is not None:
            remove_pidfile(os.path.join(w.directory, "worker.pid"), pid)
        cancel_call(self._kill_call)
        cancel_call(self._watch_call)
        self._kill_call = self._watch_call = None
        if w.state == STOPPING and (w.failure is None or w.retired):
            self._fire(EXITED, (pid, how))
        else:
            why = w.failure if w.state == STOPPING else how
            within = SPAWN_FAILED if w.state == STOPPING and w.unrecorded else CRASHED
            self._fire(self._count_failure(why, within), (pid, how))

    def orphaned(self):
        """The worker's parent (the fork server) is gone: watch it by pid."""
        if self.worker.process is not None:
            self._fire(ORPHANED)

    # Guards and helpers

    def _count_failure(self, why, within=CRASHED):
        """Record a failure; L{FLAPPED} if it exceeds the budget, else C{within}."""
        w, policy = self.worker, self._policy
        now = self._clock.seconds()
        w.last_error = why
        w.failure = None
        if w.started_at is not None and now - w.started_at >= policy.stable_after:
            w.attempt = 0
        w.restart_times = [
            t for t in w.restart_times if now - t < policy.restart_window
        ] + [now]
        return FLAPPED if len(w.restart_times) > policy.max_restarts else within

    def _forget_ready(self, d):
        if d in self.worker.ready_waiters:
            self.worker.ready_waiters.remove(d)

    def _status_now(self, result, timeout):
        return self.worker.to_json()

    def _release_ready(self, detail=None):
        waiters, self.worker.ready_waiters = self.worker.ready_waiters, []
        for d in waiters:
            d.callback(self.worker.to_json())

    def _signal(self, signum):
        w = self.worker
        if w.process is not None:
            try:
                w.process.signalProcess(signum)
            except Exception:
                pass  # already gone: processEnded is on its way
        elif w.pid is not None:
            self._processes.signal(w.pid, signum)

    # Actions (each takes the event's detail)

    def _started(self, detail):
        w = self.worker
        w.process, w.spec = detail
        w.pid = w.process.pid
        w.started_at = self._clock.seconds()
        w.missed, w.unrecorded = 0, False
        w.verified = w.sent = w.sent_at = w.live = None
        self.log.info("{instance} started as pid {pid} ({node})",
                      instance=w.name, pid=w.pid, node=w.node)

    def _adopted(self, pid):
        w = self.worker
        w.pid = pid
        w.started_at = self._clock.seconds()
        w.log_tail = LogTail(os.path.join(w.directory, "worker.log"))
        w.spec = read_spec(w.directory)
        w.verified = w.sent = w.sent_at = w.live = None
        self.log.info("{instance} adopted (pid {pid})", instance=w.name, pid=pid)

    def _ponged(self, detail):
        self.worker.last_pong = self._clock.seconds()
        self.worker.missed = 0
        self._release_ready()

    def _came_up(self, detail):
        w = self.worker
        now = self._clock.seconds()
        self.log.info("{instance} is up (pid {pid}) after {seconds:.2f} s",
                      instance=w.name, pid=w.pid, seconds=now - (w.started_at or now))

    def _missed(self, detail):
        w = self.worker
        w.missed += 1
        self.log.warn("{instance} (pid {pid}) did not answer ping ({missed} in a row)",
                      instance=w.name, pid=w.pid, missed=w.missed)

    def _cannot_connect(self, reason):
        w = self.worker
        if w.last_error != reason:
            w.last_error = reason
            self.log.warn("{instance} (pid {pid}) {reason}", instance=w.name,
                          pid=w.pid, reason=reason)
        # Whoever waits for it to come up is told now, not at the timeout.
        self._release_ready()

    def _terminate(self, detail):
        why, failure = detail
        w = self.worker
        if failure is not None:
            w.last_error = w.failure = failure
        self.log.info(
            "{instance} stopping (pid {pid}): {why}", instance=w.name, pid=w.pid, why=why,
        )
        self._release_ready()
        self._kill_call = self._later(self._policy.kill_timeout, KILL_TIMEOUT)
        self._signal(signal.SIGTERM)
        # A stopped worker (SIGSTOP, a debugger let go) acts on the TERM
        # only once continued: a warm shutdown now, not a KILL later.
        self._signal(signal.SIGCONT)

    def _kill(self, detail):
        w = self.worker
        self._kill_call = None
        if w.pid is not None:
            self.log.warn(
                "{instance} (pid {pid}) did not stop in {seconds:g} s: KILL",
                instance=w.name, pid=w.pid, seconds=self._policy.kill_timeout,
            )
            self._signal(signal.SIGKILL)

    def _look(self, detail=None):
        # An adopted worker is not our child: no processEnded comes, so
        # look for its end (while it stops, every 100 ms).
        w = self.worker
        self._watch_call = None
        if not w.adopted:
            return
        if not self._processes.alive(w.pid):
            self.ended(None)
        elif w.state == STOPPING:
            self._watch_call = self._later(0.1, WATCH)

    def _orphaned(self, detail):
        self.worker.process = None

    def _stopped(self, detail):
        pid, how = detail
        w = self.worker
        self.log.info("{instance} stopped ({how})", instance=w.name, how=how)
        waiters, w.stop_waiters = w.stop_waiters, []
        for d in waiters:
            d.callback(None)

    def _died(self, detail):
        pid, how = detail
        self.log.warn("{instance} (pid {pid}) died: {how}", instance=self.worker.name,
                      pid=pid, how=how)

    def _back_off(self, detail):
        w = self.worker
        now = self._clock.seconds()
        w.restarts += 1
        w.next_start = now + self._policy.backoff(w.attempt)
        w.attempt += 1
        if w.next_start > now:
            cancel_call(self._restart_call)
            self._restart_call = self._later(w.next_start - now, BACKOFF_ELAPSED)

    def _quarantine(self, detail):
        w, policy = self.worker, self._policy
        w.quarantined_until = self._clock.seconds() + policy.quarantine
        w.quarantines += 1
        w.last_error = (
            f"quarantined: failed {len(w.restart_times)} times within "
            f"{policy.restart_window:g} s (last: {w.last_error})"
        )
        self.log.error(
            "{instance} {reason}; retrying in {seconds:g} s",
            instance=w.name, reason=w.last_error, seconds=policy.quarantine,
        )
        self._release_ready()
        cancel_call(self._quarantine_call)
        self._quarantine_call = self._later(policy.quarantine, QUARANTINE_ELAPSED)

    def _leave_quarantine(self, detail):
        w = self.worker
        self._quarantine_call = None
        self.log.info("{instance} leaves quarantine", instance=w.name)
        w.quarantined_until = None
        w.attempt = 0
        w.restart_times.clear()

    def _forgive(self, detail):
        w = self.worker
        w.quarantined_until = None
        w.attempt = 0
        w.next_start = 0.0
        w.restart_times.clear()
        cancel_call(self._quarantine_call)
        cancel_call(self._restart_call)
        self._quarantine_call = self._restart_call = None

    def _reconcile(self, detail):
        self._reconcile_soon()
