"""The transition table of a worker's lifecycle.

L{TRANSITIONS} maps C{(state, event)} to C{(next state, actions)}: the
only way a worker's state changes (L{cyme.supervision.lifecycle}).  A
process that ends is C{EXITED} after a stop that was asked, else
C{CRASHED} within the restart budget (restart after the backoff) or
C{FLAPPED} beyond it (quarantine).  A live worker that writes that it
cannot reach its broker is C{FAILED} until it answers a ping; one whose
process could not be made at all (or whose pid file could not be
written: stopped first) is C{START_FAILED} (shown as C{failed}) until its
backoff ends and a start succeeds.
"""

from cyme.supervision.workerstate import (
    ADOPTED, BACKOFF_ELAPSED, CANNOT_CONNECT, CRASHED, EXITED, FAILED, FLAPPED,
    KILL_TIMEOUT, LIVE, ORPHANED, PING_MISSED, PONG, QUARANTINE_ELAPSED, QUARANTINED,
    RESTART_ASKED, RUNNING, SPAWN_FAILED, SPAWNED, START_FAILED, STARTING, STOP_ASKED,
    STOPPED, STOPPING, UNRESPONSIVE, WATCH,
)


def _table():
    rows = {
        # Not running: started, adopted, or a start that failed.
        (STOPPED, SPAWNED): (STARTING, ("_started",)),
        (STOPPED, ADOPTED): (STARTING, ("_adopted",)),
        (STOPPED, FLAPPED): (QUARANTINED, ("_quarantine",)),
        (STOPPED, STOP_ASKED): (STOPPED, ()),
        (STOPPED, RESTART_ASKED): (STOPPED, ("_forgive",)),
        (STOPPED, BACKOFF_ELAPSED): (STOPPED, ("_reconcile",)),
        (STOPPED, PONG): (STOPPED, ("_ponged",)),
        # A create waiting for its worker hears at once that it failed.
        (STOPPED, SPAWN_FAILED): (START_FAILED, ("_back_off", "_release_ready")),
        # Its process could not be made: tried again after the backoff.
        (START_FAILED, SPAWNED): (STARTING, ("_started",)),
        (START_FAILED, SPAWN_FAILED): (START_FAILED, ("_back_off", "_release_ready")),
        (START_FAILED, FLAPPED): (QUARANTINED, ("_quarantine",)),
        (START_FAILED, STOP_ASKED): (STOPPED, ()),
        (START_FAILED, RESTART_ASKED): (STOPPED, ("_forgive",)),
        (START_FAILED, BACKOFF_ELAPSED): (START_FAILED, ("_reconcile",)),
        (START_FAILED, PONG): (START_FAILED, ("_ponged",)),
        (QUARANTINED, STOP_ASKED): (QUARANTINED, ()),
        (QUARANTINED, RESTART_ASKED): (STOPPED, ("_forgive",)),
        (QUARANTINED, QUARANTINE_ELAPSED): (STOPPED, ("_leave_quarantine", "_reconcile")),
        (QUARANTINED, PONG): (QUARANTINED, ("_ponged",)),
        # Up: answering or not.
        (STARTING, PONG): (RUNNING, ("_ponged", "_came_up")),
        (UNRESPONSIVE, PONG): (RUNNING, ("_ponged",)),
        (RUNNING, PONG): (RUNNING, ("_ponged",)),
        # It could not reach its broker, and now answers: it did reach it.
        (FAILED, PONG): (RUNNING, ("_ponged", "_came_up")),
        # Stopping: TERM sent, KILL to follow.
        (STOPPING, PONG): (STOPPING, ("_ponged",)),
        (STOPPING, STOP_ASKED): (STOPPING, ()),
        (STOPPING, RESTART_ASKED): (STOPPING, ("_forgive",)),
        (STOPPING, KILL_TIMEOUT): (STOPPING, ("_kill",)),
        (STOPPING, WATCH): (STOPPING, ("_look",)),
        (STOPPING, ORPHANED): (STOPPING, ("_orphaned", "_look")),
        (STOPPING, EXITED): (STOPPED, ("_stopped",)),
        (STOPPING, CRASHED): (STOPPED, ("_stopped", "_back_off", "_reconcile")),
        (STOPPING, FLAPPED): (QUARANTINED, ("_stopped", "_quarantine")),
        # Spawned but its pid file could not be written, now gone.
        (STOPPING, SPAWN_FAILED): (START_FAILED, ("_stopped", "_back_off", "_release_ready")),
    }
    for state in LIVE:
        rows.update({
            (state, PING_MISSED): (UNRESPONSIVE, ("_missed",)),
            (state, STOP_ASKED): (STOPPING, ("_terminate", "_look")),
            (state, RESTART_ASKED): (STOPPING, ("_forgive", "_terminate", "_look")),
            (state, CRASHED): (STOPPED, ("_died", "_back_off", "_reconcile")),
            (state, FLAPPED): (QUARANTINED, ("_died", "_quarantine")),
            (state, ORPHANED): (state, ("_orphaned",)),
            (state, CANNOT_CONNECT): (FAILED, ("_cannot_connect",)),
        })
    # Silent because its broker is out of its reach: the reason stays, and
    # it is replaced (with backoff) after as many rounds as any other.
    rows[(FAILED, PING_MISSED)] = (FAILED, ("_missed",))
    return rows


#: C{(state, event) -> (next state, names of the actions run after it)}.
TRANSITIONS = _table()
