"""A rolling restart's plan and progress, and the operations that start and read one.

L{Restart} is what C{GET /restarts/<id>/} shows (one L{Step} per
instance); L{RestartOperations} is the part of the L{IOperations} of a
branch that hands C{POST /<app>/restart/} and C{GET /restarts/<id>/} to
its coordinator, L{cyme.operations.rolling.RollingRestarts}.
"""

import attrs

from cyme.errors import Unavailable


@attrs.define
class Step:
    """One instance of a rolling restart."""

    name: str
    branch: str
    old_pid: int | None
    #: Whether it answered when the restart was planned.
    answering: bool
    #: C{pending}, C{restarting}, C{done}, C{failed} or C{skipped}.
    state: str = "pending"
    pid: int | None = None
    began: float | None = None
    seconds: float | None = None
    reason: str | None = None

    def to_json(self):
        return {"name": self.name, "branch": self.branch, "state": self.state,
                "old_pid": self.old_pid, "pid": self.pid, "seconds": self.seconds,
                "reason": self.reason}


@attrs.define
class Restart:
    """A rolling restart's plan and progress, as C{GET /restarts/<id>/} shows it."""

    id: str
    app: str
    branch: str
    parallel: int
    started: float
    steps: list
    #: C{{"name", "reason"}} of the instances left out (disabled, offline).
    skipped: list
    #: The branches that did not answer the listing: their instances are unknown.
    missing: list
    #: C{running}, C{done} or C{failed}.
    state: str = "running"
    finished: float | None = None
    reason: str | None = None
    #: Branch -> what became of its fork server (C{replaced}, C{none}, ...).
    fork_servers: dict = attrs.field(factory=dict)

    def step(self, name):
        return next(s for s in self.steps if s.name == name)

    def finish(self, now):
        for step in self.steps:
            if step.state == "pending":
                step.state, step.reason = "skipped", "not restarted: the restart stopped"
        self.state = "failed" if self.reason is not None else "done"
        self.finished = now

    def to_json(self):
        return {
            "id": self.id, "app": self.app, "branch": self.branch, "state": self.state,
            "parallel": self.parallel,
            # The fewest instances answering throughout.
            "keep_answering": max(0, len(self.steps) - self.parallel),
            "started": self.started, "finished": self.finished, "reason": self.reason,
            "fork_servers": dict(self.fork_servers),
            "instances": [s.to_json() for s in self.steps],
            "skipped": list(self.skipped), "missing_branches": list(self.missing),
        }


class RestartOperations:
    """
    Mixed into L{cyme.operations.local.LocalOperations} and
    L{cyme.operations.cluster.ClusterOperations}: the rolling restarts of
    their C{restarts} (a L{RollingRestarts}; None: this branch coordinates
    none), run over the operations themselves.
    """

    async def restart_app(self, app, values):
        return await self._coordinator().start(self, app, values)

    async def get_restart(self, restart_id):
        return await self._coordinator().get(restart_id)

    def _coordinator(self):
        if self.restarts is None:
            raise Unavailable("this branch coordinates no rolling restarts")
        return self.restarts
