"""Rolling restarts: an app's workers replaced a few at a time, across the cluster.

``POST /<app>/restart/`` (L{RollingRestarts.start}) plans the restart and
answers at once: the app's enabled instances on live branches, those not
answering first (restarting them costs no capacity), then by name.  The
branch that took the request coordinates it, in the background:

1. every branch that runs one of the instances replaces its fork server
   (bus method C{launcher.renew}, L{ILauncher.renew}), so that every
   replacement imports the code on disk now; if one cannot, the restart
   fails before any worker is touched;
2. the instances are restarted on their owners through
   L{IOperations.restart} (a warm stop: TERM lets running tasks finish,
   KILL after the owner's C{--kill-timeout}; then a new worker), at most
   C{parallel} at a time: the next is stopped only once a replacement
   answers ping (state C{running} with a new pid);
3. before an instance that answers is stopped, at least (instances -
   parallel) others must answer: an instance down for another reason
   holds the rollout (up to the step timeout) rather than letting
   capacity drop below that.

A new worker of the same instance cannot start before the old one is gone
(one node name per instance on the broker, one pid file), so the bound is
kept by stopping at most C{parallel} at a time, not by starting extra
workers.  A replacement that does not answer within the step timeout
stops the restart: nothing more is stopped, and the instances not reached
keep their running workers.  Every remote call has a timeout: the bus
calls their own, and each step as a whole the step timeout.

The progress is kept in memory on the coordinating branch: its last
C{keep} restarts, lost when it restarts (an interrupted restart stops
there; the step under way finishes on its owner).  A restart's id names
its coordinator (C{<12 hex>@<branch>}), so any branch answers
C{GET /restarts/<id>/} by asking it (bus method C{restart.get}).  Each
step is logged and given to the C{listener} (the event stream) as a dict:
C{{"type", "time", "restart", "app", "branch", "instance", "state",
"pid", "reason"}}, C{type} one of C{restart.started}, C{restart.renewed},
C{restart.instance} and C{restart.finished}.
"""

import re
import uuid
from collections import OrderedDict

import attrs
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cyme import logs
from cyme.cluster.messages import fields, obj, text
from cyme.errors import Conflict, CymeError, GatewayTimeout, NotFound, Unavailable
from cyme.listeners import Listeners
from cyme.operations.restarts import Restart, Step
from cyme.state.fields import check_int

RUNNING = "running"
#: The most instances one restart replaces at once.
MAX_PARALLEL = 100
_ID = re.compile(r"[0-9a-f]{12}@([A-Za-z0-9._-]{1,64})\Z")


class Halt(Exception):
    """The restart stops here, for the reason given: nothing more is stopped."""


def _gone(error):
    """Whether C{error} (raised here or by another branch) says the instance is no more."""
    return isinstance(error, CymeError) and error.status == 404


def _reason(error):
    if isinstance(error, CymeError):
        return error.message
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


@attrs.define(eq=False)
class RollingRestarts:
    """The rolling restarts this branch coordinates (see the module's docstring)."""

    clock: object
    branch_id: str
    #: The cluster's bus (None: a branch alone).
    bus: object = None
    #: This branch's L{ILauncher} (None: nothing to renew here).
    launcher: object = None
    #: Called with each step's event (a dict): the event stream's hook.
    listener: object = None
    #: Seconds one instance may take: its warm stop and its replacement's first pong.
    step_timeout: float = 60.0
    call_timeout: float = 5.0
    #: Seconds a new fork server gets to have its standby ready.
    renew_timeout: float = 20.0
    poll_interval: float = 0.5
    #: Finished restarts kept for C{GET /restarts/<id>/}.
    keep: int = 50
    _restarts: OrderedDict = attrs.field(init=False, factory=OrderedDict)
    #: App -> the id of its restart under way here.
    _running: dict = attrs.field(init=False, factory=dict)
    _listeners: Listeners = attrs.field(init=False, factory=lambda: Listeners("rolling restart"))

    log = Logger(observer=logs.observer)

    def __attrs_post_init__(self):
        if self.listener is not None:
            self._listeners.add(self.listener)

    def handlers(self):
        """The bus methods other branches call on this one."""
        return {"launcher.renew": self._renew_asked, "restart.get": self._get_asked}

    # Starting and reading

    async def start(self, ops, app, values):
        """
        Plan a rolling restart of C{app}'s instances over C{ops} (an
        L{IOperations}) and run it in the background; its JSON.
        """
        parallel = values.get("parallel")
        parallel = 1 if parallel in (None, "") else check_int(
            parallel, "parallel", 1, MAX_PARALLEL)
        await ops.get_app(app)
        if app in self._running:
            raise Conflict(f"a rolling restart of {app} is under way: {self._running[app]}",
                           app=app, restart=self._running[app])
        restart_id = f"{uuid.uuid4().hex[:12]}@{self.branch_id}"
        self._running[app] = restart_id
        try:
            restart = await self._plan(ops, restart_id, app, parallel)
        except BaseException:
            del self._running[app]
            raise
        self._remember(restart)
        self.log.info(
            "rolling restart {restart} of {app}: {count} instances, {parallel} at a time",
            restart=restart.id, app=app, count=len(restart.steps), parallel=parallel)
        self._tell("restart.started", restart, state=restart.state)
        d = defer.ensureDeferred(self._run(ops, restart))
        d.addErrback(lambda f: self.log.failure("rolling restart {restart} failed", f,
                                                restart=restart.id))
        return restart.to_json()

    async def get(self, restart_id):
        """A restart's JSON, from the branch that coordinates it."""
        found = _ID.match(restart_id) if isinstance(restart_id, str) else None
        if found is None:
            raise NotFound("restart", restart_id)
        branch = found.group(1)
        if branch == self.branch_id or self.bus is None:
            return self._get_here(restart_id)
        peer = self.bus.peer(branch)
        if peer is None:
            raise NotFound("restart", restart_id)
        if not peer.online:
            raise Unavailable(f"restart {restart_id} is kept by branch {branch}, which is "
                              "offline", restart=restart_id, branch=branch)
        answer = await self.bus.call(branch, "restart.get", {"id": restart_id},
                                     self.call_timeout)
        return obj(answer, "restart")

    def _get_here(self, restart_id):
        restart = self._restarts.get(restart_id)
        if restart is None:
            raise NotFound("restart", restart_id)
        return restart.to_json()

    def _get_asked(self, args, sender):
        return self._get_here(fields(args, {"id": text})["id"])

    def _remember(self, restart):
        self._restarts[restart.id] = restart
        finished = [r for r in self._restarts.values() if r.state != "running"]
        for old in finished[:max(0, len(self._restarts) - self.keep)]:
            del self._restarts[old.id]

    # Planning

    async def _plan(self, ops, restart_id, app, parallel):
        # As they are now, asked of their branches: a branch that does not
        # answer is named, its instances skipped.
        names, missing = await ops.list_instances(app, fresh=True)
        found = await self._each(ops, app, names)
        steps, skipped = [], []
        for name in names:
            shown = found[name]
            if not isinstance(shown, dict):
                skipped.append({"name": name, "reason": _reason(shown)})
            elif not shown.get("is_enabled", True):
                skipped.append({"name": name, "reason": "disabled"})
            elif shown.get("state") == "offline":
                skipped.append({"name": name,
                                "reason": f"its branch {shown.get('branch')} is offline"})
            else:
                steps.append(Step(name, shown.get("branch") or self.branch_id,
                                  shown.get("pid"), shown.get("state") == RUNNING))
        steps.sort(key=lambda s: (s.answering, s.name))
        return Restart(restart_id, app, self.branch_id, parallel, self.clock.seconds(),
                       steps, skipped, list(missing))

    async def _each(self, ops, app, names):
        """Name -> its JSON, or the error asking for it raised; asked all at once."""
        results = await defer.DeferredList(
            [defer.ensureDeferred(ops.get_instance(app, n)) for n in names],
            consumeErrors=True)
        found = {}
        for name, (ok, value) in zip(names, results):
            if not ok:
                value = value.value
            elif not isinstance(value, dict):
                value = Unavailable(f"instance {name}: its branch answered no instance")
            found[name] = value
        return found

    # Running

    async def _run(self, ops, restart):
        try:
            await self._renew(restart)
            await self._roll(ops, restart)
        except Halt as e:
            restart.reason = restart.reason or str(e)
        except Exception:
            self.log.failure("rolling restart {restart} of {app} broke off",
                             restart=restart.id, app=restart.app)
            restart.reason = "internal error (the coordinating branch's log says more)"
        restart.finish(self.clock.seconds())
        del self._running[restart.app]
        self._remember(restart)
        seconds = restart.finished - restart.started
        if restart.reason is None:
            self.log.info("rolling restart {restart} of {app} done in {seconds:.2f} s",
                          restart=restart.id, app=restart.app, seconds=seconds)
        else:
            self.log.warn("rolling restart {restart} of {app} failed after {seconds:.2f} s: "
                          "{reason}", restart=restart.id, app=restart.app, seconds=seconds,
                          reason=restart.reason)
        self._tell("restart.finished", restart, state=restart.state, reason=restart.reason)

    async def _renew(self, restart):
        """Replace the fork server of every branch concerned, or halt."""
        branches = sorted({s.branch for s in restart.steps})
        results = await defer.DeferredList(
            [defer.ensureDeferred(self._renew_on(b)) for b in branches], consumeErrors=True)
        failed = []
        for branch, (ok, value) in zip(branches, results):
            if ok:
                restart.fork_servers[branch] = value
                self.log.info("rolling restart {restart}: branch {branch} fork server "
                              "{outcome}", restart=restart.id, branch=branch, outcome=value)
                self._tell("restart.renewed", restart, branch=branch, state=value)
            else:
                failed.append(f"branch {branch}: {_reason(value.value)}")
        if failed:
            raise Halt("the fork servers were not all replaced, so nothing was restarted ("
                       + "; ".join(failed) + ")")

    async def _renew_on(self, branch):
        if branch == self.branch_id:
            return await self._renew_here()
        if self.bus is None:
            raise Unavailable(f"branch {branch} cannot be reached")
        outcome = await self.bus.call(branch, "launcher.renew", {},
                                      self.renew_timeout + self.call_timeout)
        return text(outcome, "outcome", 64)

    async def _renew_here(self):
        if self.launcher is None:
            return "none"
        try:
            renewed = await self.launcher.renew().addTimeout(self.renew_timeout, self.clock)
        except defer.TimeoutError:
            # Workers are exec'd until it is: from the code on disk as well.
            self.log.warn("the new fork server has no standby after {seconds:g} s: workers "
                          "are started as new processes meanwhile", seconds=self.renew_timeout)
            return "replaced, not ready"
        return "replaced" if renewed else "none"

    async def _renew_asked(self, args, sender):
        fields(args, {})
        return await self._renew_here()

    async def _roll(self, ops, restart):
        """Restart the steps, C{parallel} at a time, keeping the others answering."""
        slots = defer.DeferredSemaphore(restart.parallel)
        under_way = []
        for step in restart.steps:
            await slots.acquire()
            if restart.reason is None:
                try:
                    await self._make_room(ops, restart, step)
                except Halt as e:
                    restart.reason = str(e)
                except Exception:
                    self.log.failure("rolling restart {restart}: {instance} broke off",
                                     restart=restart.id, instance=step.name)
                    restart.reason = f"{step.name}: internal error"
            if restart.reason is not None:
                slots.release()
                break
            d = defer.ensureDeferred(self._step(ops, restart, step))
            d.addBoth(lambda _: slots.release())
            under_way.append(d)
        await defer.DeferredList(under_way, consumeErrors=True)

    async def _make_room(self, ops, restart, step):
        """
        Return once stopping C{step} leaves at least (instances - parallel)
        others answering (at once when it does not answer itself); halt
        after the step timeout.
        """
        deadline = self.clock.seconds() + self.step_timeout
        while True:
            found = await self._each(ops, restart.app, [s.name for s in restart.steps])
            states = {}
            for name, shown in found.items():
                if isinstance(shown, dict):
                    states[name] = shown.get("state", "unknown")
                elif not _gone(shown):  # a deleted one no longer counts
                    states[name] = "unknown"
            if states.get(step.name) != RUNNING:
                return
            others = [n for n, s in states.items() if n != step.name and s == RUNNING
                      and restart.step(n).state != "restarting"]
            needed = max(0, len(states) - restart.parallel)
            if len(others) >= needed:
                return
            if self.clock.seconds() >= deadline:
                down = ", ".join(f"{n} {s}" for n, s in sorted(states.items())
                                 if n != step.name and n not in others)
                raise Halt(f"{step.name} was not stopped: {len(others)} other instances "
                           f"answer ({down}), and at least {needed} must")
            await self._sleep()

    async def _step(self, ops, restart, step):
        step.state, step.began = "restarting", self.clock.seconds()
        self.log.info("rolling restart {restart}: restarting {instance} on {branch} "
                      "(pid {pid})", restart=restart.id, instance=step.name,
                      branch=step.branch, pid=step.old_pid)
        self._tell("restart.instance", restart, instance=step.name, branch=step.branch,
                   state=step.state, pid=step.old_pid)
        deadline = step.began + self.step_timeout
        try:
            try:
                shown = await defer.ensureDeferred(
                    ops.restart(restart.app, step.name)
                ).addTimeout(self.step_timeout, self.clock)
            except (GatewayTimeout, defer.TimeoutError):
                shown = None  # its owner goes on: watch it
            if not self._replaced(step, shown):
                shown = await self._watch(ops, restart, step, deadline)
        except (Halt, CymeError) as e:
            if _gone(e):
                step.state, step.reason = "skipped", "deleted meanwhile"
            else:
                step.state, step.reason = "failed", _reason(e)
        except Exception:
            self.log.failure("rolling restart {restart}: {instance} broke off",
                             restart=restart.id, instance=step.name)
            step.state, step.reason = "failed", "internal error"
        else:
            step.state, step.pid = "done", shown.get("pid")
            step.seconds = self.clock.seconds() - step.began
            self.log.info("rolling restart {restart}: {instance} on {branch} is up (pid "
                          "{pid}) after {seconds:.2f} s", restart=restart.id,
                          instance=step.name, branch=step.branch, pid=step.pid,
                          seconds=step.seconds)
        if step.state == "failed":
            restart.reason = restart.reason or f"{step.name}: {step.reason}"
            self.log.warn("rolling restart {restart}: {instance} on {branch} failed: "
                          "{reason}", restart=restart.id, instance=step.name,
                          branch=step.branch, reason=step.reason)
        self._tell("restart.instance", restart, instance=step.name, branch=step.branch,
                   state=step.state, pid=step.pid, reason=step.reason)

    def _replaced(self, step, shown):
        """Whether C{shown} (an instance's JSON) is a new worker answering ping."""
        return (isinstance(shown, dict) and shown.get("state") == RUNNING
                and (step.old_pid is None or shown.get("pid") != step.old_pid))

    async def _watch(self, ops, restart, step, deadline):
        """The instance's JSON once its new worker answers; halt at C{deadline}."""
        last = None
        while True:
            try:
                last = await ops.get_instance(restart.app, step.name)
            except CymeError as e:
                if _gone(e):
                    raise
                last = None  # its branch is slow: ask again
            if self._replaced(step, last):
                return last
            if self.clock.seconds() >= deadline:
                break
            await self._sleep()
        state = last.get("state", "unknown") if isinstance(last, dict) else "unknown"
        error = last.get("last_error") if isinstance(last, dict) else None
        raise Halt(f"its new worker did not answer ping within {self.step_timeout:g} s "
                   f"(state {state}{': ' + error if error else ''})")

    def _sleep(self):
        return deferLater(self.clock, self.poll_interval, lambda: None)

    def _tell(self, kind, restart, **fields):
        event = {"type": kind, "time": self.clock.seconds(), "restart": restart.id,
                 "app": restart.app, "branch": restart.branch, "instance": None,
                 "state": None, "pid": None, "reason": None}
        event.update(fields)
        self._listeners.notify(event)
