"""What the supervisor knows of one worker, and the figures it works by.

A L{Worker} record per instance (state, pid, restarts, last error, ...),
the states it goes through and the events that move it, and the L{Policy}
of supervision (timeouts, restart budget, backoff).  Only the worker's
L{cyme.supervision.lifecycle.WorkerLifecycle} assigns its state.
"""

import collections
import random

import attrs

from cyme.backoff import backoff_delay

STARTING = "starting"
RUNNING = "running"
UNRESPONSIVE = "unresponsive"
STOPPING = "stopping"
STOPPED = "stopped"
QUARANTINED = "quarantined"
#: Up, but it says it cannot reach its broker (its log or its exit).
FAILED = "failed"
#: Not up: its process could not be made (a command, a fork); shown as
#: C{FAILED} (with no pid) and started again after the backoff.
START_FAILED = "start failed"

#: The states in which a worker process is up and watched by pings.
LIVE = (STARTING, RUNNING, UNRESPONSIVE, FAILED)
STATES = (*LIVE, STOPPING, STOPPED, START_FAILED, QUARANTINED)
#: The states users see (L{Worker.shown_state}).
SHOWN_STATES = tuple(s for s in STATES if s != START_FAILED)

# The events that move a worker from state to state (see
# L{cyme.supervision.lifecycle.TRANSITIONS}).
SPAWNED = "spawned"
ADOPTED = "adopted"
PONG = "pong"
PING_MISSED = "ping missed"
STOP_ASKED = "stop asked"
RESTART_ASKED = "restart asked"
EXITED = "exited"
#: The process ended without being asked to (counted against the budget).
CRASHED = "crashed"
FLAPPED = "flapped"
KILL_TIMEOUT = "kill timeout"
BACKOFF_ELAPSED = "backoff elapsed"
QUARANTINE_ELAPSED = "quarantine elapsed"
ORPHANED = "orphaned"
WATCH = "watch"
#: The worker wrote that it cannot connect to its broker.
CANNOT_CONNECT = "cannot connect"
#: Its process could not be made (within the restart budget).
SPAWN_FAILED = "spawn failed"

EVENTS = (
    SPAWNED, ADOPTED, PONG, PING_MISSED, STOP_ASKED, RESTART_ASKED, EXITED,
    CRASHED, FLAPPED, KILL_TIMEOUT, BACKOFF_ELAPSED, QUARANTINE_ELAPSED,
    ORPHANED, WATCH, CANNOT_CONNECT, SPAWN_FAILED,
)


def restart_backoff(jitter=random.random):
    """
    Seconds to wait before restart number C{attempt} of a failing worker.

    The first restart is immediate (a worker killed once should be back at
    once); then 0.5 s doubling to 60 s, each drawn from the upper half of
    its interval (C{jitter()} 1 is the top) so that workers that failed
    together do not restart in lockstep.
    """

    def delay(attempt):
        return backoff_delay(
            attempt, initial=0.5, cap=60.0, jitter=0.5, rand=lambda: 1.0 - jitter()
        )

    return delay


@attrs.frozen
class Policy:
    """How the supervisor judges and treats its workers (seconds, counts)."""

    #: Seconds between two supervisor ticks.
    interval: float = 5.0
    #: Seconds a worker gets to finish its tasks after TERM before KILL.
    kill_timeout: float = 10.0
    #: Seconds a new worker gets to answer its first ping.
    start_timeout: float = 30.0
    #: Ping rounds a worker may miss in a row before it is replaced.
    max_missed: int = 1
    #: More than C{max_restarts} failures within C{restart_window} seconds
    #: quarantine the instance for C{quarantine} seconds.
    restart_window: float = 60.0
    max_restarts: int = 5
    quarantine: float = 300.0
    #: A worker up this long has its backoff reset when it fails.
    stable_after: float = 30.0
    #: Seconds workers get to reconnect after the broker came back.
    wait_after_broker_revived: float = 30.0
    #: Stop the workers when the branch stops (else the next run adopts them).
    stop_workers_on_exit: bool = False
    #: C{attempt -> seconds} before a failed worker is started again.
    backoff: object = attrs.field(factory=restart_backoff)


@attrs.define(eq=False)
class Worker:
    """What the supervisor knows of one instance's worker process."""

    name: str
    node: str
    directory: str
    state: str = STOPPED
    pid: int | None = None
    process: object = None  # IProcessTransport when the worker is our child
    spec: str | None = None
    started_at: float | None = None
    last_pong: float | None = None
    missed: int = 0
    attempt: int = 0
    restarts: int = 0
    #: How often it was quarantined (C{/metrics}).
    quarantines: int = 0
    restart_times: list = attrs.field(factory=list)
    next_start: float = 0.0
    quarantined_until: float | None = None
    last_error: str | None = None
    #: Why the worker is being stopped, when the stop is a failure (it did
    #: not answer): counted against the restart budget once it is gone.
    failure: str | None = None
    #: Its pid file could not be written: the process is being stopped, and
    #: its end is a start that failed (C{START_FAILED}), not a crash.
    unrecorded: bool = False
    #: What the worker was last found consuming as its instance asks
    #: (L{cyme.supervision.consuming.wanted}); None: to be asked again.
    verified: object = None
    #: What the fixes sent last were to make it consume, and when: not
    #: known to be true until the worker is asked again.
    sent: object = None
    sent_at: float | None = None
    #: What the worker said it consumes, when last asked (the JSON's
    #: C{live}); None before its first answer.
    live: dict | None = None
    retired: bool = False
    stop_waiters: list = attrs.field(factory=list)
    ready_waiters: list = attrs.field(factory=list)
    log_tail: object = None
    #: The last line the worker wrote since it was started: the reason it
    #: gives when it exits with an error.
    last_line: str | None = None

    @property
    def adopted(self):
        return self.pid is not None and self.process is None

    @property
    def shown_state(self):
        """The state users see: a start that failed is C{failed}, with no pid."""
        return FAILED if self.state == START_FAILED else self.state

    def to_json(self, now=None):
        """
        What users see of the worker; with C{now} (the clock's seconds),
        its C{uptime} too (None while it has no process).
        """
        up = self.pid is not None and self.started_at is not None and now is not None
        return {
            "state": self.shown_state,
            "pid": self.pid,
            "node": self.node,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "quarantined_until": self.quarantined_until,
            "live": dict(self.live) if self.live is not None else None,
            "uptime": max(0.0, now - self.started_at) if up else None,
            "last_pong": self.last_pong,
        }


def worker_figures(workers, apps_of):
    """
    What C{/metrics} shows of each of C{workers} (L{Worker}s): C{{"app",
    "instance", "state", "restarts", "quarantines"}}.  C{apps_of} maps
    instance names to their apps; a deleted instance's worker, while it
    stops, has none (C{""}).
    """
    return [
        {"app": apps_of.get(w.name, ""), "instance": w.name, "state": w.shown_state,
         "restarts": w.restarts, "quarantines": w.quarantines}
        for w in workers
    ]


def workers_by_app(workers, apps_of, apps):
    """
    C{{(app, state): count}} of C{workers}, every shown state of every app
    of C{apps} there (0 for none), so that a graph shows a state emptied.
    """
    counts = dict.fromkeys(((app, state) for app in apps for state in SHOWN_STATES), 0)
    for w in workers:
        key = (apps_of.get(w.name, ""), w.shown_state)
        counts[key] = counts.get(key, 0) + 1
    return counts


def supervision_figures(workers, store):
    """The workers' figures for C{/metrics}: by state, by app and state, and each one's."""
    apps_of = {i.name: i.app for i in store.instances()}
    return {
        "states": dict(collections.Counter(w.shown_state for w in workers)),
        "by_app": workers_by_app(workers, apps_of, [a.name for a in store.apps()]),
        "workers": worker_figures(workers, apps_of),
    }
