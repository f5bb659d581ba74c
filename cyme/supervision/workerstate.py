"""What the supervisor knows of one worker, and its timing arithmetic.

A L{Worker} record per instance (state, pid, restarts, last error, ...),
the states it goes through, and the pure functions of time the supervisor
applies: the restart backoff and the timeouts of a ping round.
"""

import random

import attrs

STARTING = "starting"
RUNNING = "running"
UNRESPONSIVE = "unresponsive"
STOPPING = "stopping"
STOPPED = "stopped"
QUARANTINED = "quarantined"


def restart_delay(attempt, base=0.5, cap=60.0, jitter=random.random):
    """
    Seconds to wait before restart number C{attempt} of a failing worker.

    The first restart is immediate (a worker killed once should be back at
    once); then C{base} doubling to C{cap}, each drawn from the upper half
    of its interval so that workers that failed together do not restart in
    lockstep.
    """
    if attempt <= 0:
        return 0.0
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (0.5 + 0.5 * jitter())


def ping_delays(first=0.1, cap=1.6):
    """The ping timeouts of one liveness round: 0.1, 0.2, … up to C{cap}."""
    delay = first
    while delay <= cap:
        yield delay
        delay *= 2


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
    restart_times: list = attrs.field(factory=list)
    next_start: float = 0.0
    quarantined_until: float | None = None
    last_error: str | None = None
    verified: object = None
    retired: bool = False
    kill_call: object = None
    restart_call: object = None
    stop_waiters: list = attrs.field(factory=list)
    ready_waiters: list = attrs.field(factory=list)
    log_tail: object = None
    #: The last line the worker wrote since it was started: the reason it
    #: gives when it exits with an error.
    last_line: str | None = None

    @property
    def adopted(self):
        return self.pid is not None and self.process is None

    def to_json(self):
        return {
            "state": self.state,
            "pid": self.pid,
            "node": self.node,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "quarantined_until": self.quarantined_until,
        }
