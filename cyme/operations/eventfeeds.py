"""Where a branch's events come from: its workers' transitions, its store's
changes and its peers' comings and goings.

L{EventFeeds} is three listeners on one L{cyme.operations.events.EventLog}:
L{EventFeeds.transition}, which each worker's lifecycle calls after every
change of its state (L{cyme.supervision.lifecycle}); L{EventFeeds.store_changed},
a listener of the store (instances created, deleted, consuming or changed,
found by comparing each instance with what it was; apps and queues changed
through this branch, not those a replica brought: their own branch tells
of them); and L{EventFeeds.peer_changed}, a listener of the bus's presence
(branches online and offline, as this branch sees them).  No event carries
a secret: an app's changed fields are named, never shown.
"""

import attrs

from cyme import __version__
from cyme.errors import NotFound
from cyme.supervision.workerstate import (
    ADOPTED, CRASHED, FAILED, LIVE, QUARANTINED, RUNNING, SPAWNED, START_FAILED, STOP_ASKED,
    STOPPED, STOPPING, UNRESPONSIVE,
)

#: What an instance asks that is told as its own event (the rest is "changed").
_CONSUMING = "queues"
_SETTINGS = ("max_concurrency", "min_concurrency", "is_enabled")


def _instances(store):
    return {i.name: attrs.asdict(i, recurse=False) for i in store.instances()}


class EventFeeds:
    """Turns what the supervisor, the store and the bus say into events of C{log}."""

    def __init__(self, log, store):
        self.log = log
        self.store = store
        self._instances = _instances(store)
        self._apps = {a.name: a for a in store.apps()}
        self._queues = {(a.name, q.name): q for a in store.apps() for q in store.queues(a.name)}
        #: Instance name -> its app, for the events of a worker whose
        #: instance was deleted while it stops.
        self._app_of = {name: i["app"] for name, i in self._instances.items()}
        #: The instances whose worker started since the branch did: the
        #: next start of one is a restart.
        self._started = set()
        self._online = {}
        log.record("online", reason=f"branch {log.branch_id} started (cyme {__version__})",
                   peer=log.branch_id)

    # The supervisor's workers

    def transition(self, worker, before, event, detail):
        """
        A worker's lifecycle changed state (its C{transition} listener,
        called as the new state is assigned, before the transition's
        actions: the pid of a new process is in C{detail}).
        """
        found = self._worker_event(worker, before, event, detail)
        if found is not None:
            kind, reason = found
            self.log.record(kind, self._app_of.get(worker.name), worker.name, reason)
            if kind == "stopped" and worker.name not in self._instances:
                self._app_of.pop(worker.name, None)  # deleted, and now gone
                self._started.discard(worker.name)

    def _worker_event(self, worker, before, event, detail):
        after, name = worker.state, worker.name
        if event == SPAWNED:
            again = name in self._started
            self._started.add(name)
            reason = f"pid {detail[0].pid}"
            if again and worker.last_error:
                reason += f" (last error: {worker.last_error})"
            return ("restarted" if again else "started"), reason
        if event == ADOPTED:
            self._started.add(name)
            return "started", f"adopted pid {detail}, left by the branch's last run"
        if after == before:
            return None
        if after == RUNNING:
            if before == UNRESPONSIVE:
                return "ready", f"pid {worker.pid} answers ping again"
            return "ready", f"pid {worker.pid} answered ping"
        if after == UNRESPONSIVE:
            return "unresponsive", f"pid {worker.pid} did not answer ping"
        if after in (FAILED, START_FAILED):
            return "failed", worker.last_error
        if after == STOPPING:
            why, failure = detail
            if event == STOP_ASKED and why == "disabled":
                self._started.discard(name)  # its next start is a start
            return "stopping", f"pid {worker.pid}: {why}" + (f": {failure}" if failure else "")
        if after == QUARANTINED:
            return "quarantined", f"failing too often (last: {worker.last_error})"
        if after == STOPPED and (before == STOPPING or before in LIVE):
            pid, how = detail
            if event == CRASHED and before in LIVE:
                return "stopped", f"pid {pid} died: {how}"
            return "stopped", f"pid {pid} {how}"
        return None

    # The store

    def store_changed(self, change):
        """What a write changed (a listener of the store)."""
        if change.kind in ("put_app", "delete_app"):
            self._app_changed(change.key.split("/", 1)[1])
        elif change.kind in ("put_queue", "delete_queue"):
            _, app, queue = change.key.split("/", 2)
            self._queue_changed(app, queue)
        elif change.kind == "merge":
            # Another branch's writes: its own events tell of them.
            self._apps = {a.name: a for a in self.store.apps()}
            self._queues = {(a.name, q.name): q for a in self.store.apps()
                            for q in self.store.queues(a.name)}
        self._instances_changed(change.kind)

    def _app_changed(self, name):
        old = self._apps.get(name)
        try:
            new = self._apps[name] = self.store.get_app(name)
        except NotFound:
            self._apps.pop(name, None)
            self.log.record("app", name, reason=f"app {name} deleted")
            return
        if old is None:
            self.log.record("app", name, reason=f"app {name} created")
            return
        before, after = attrs.asdict(old, recurse=False), attrs.asdict(new, recurse=False)
        changed = sorted(k for k in after if after[k] != before.get(k))
        if changed:
            self.log.record("app", name, reason=f"app {name} changed: {', '.join(changed)}")

    def _queue_changed(self, app, name):
        old = self._queues.get((app, name))
        try:
            new = self._queues[(app, name)] = self.store.get_queue(app, name)
        except NotFound:
            self._queues.pop((app, name), None)
            if old is not None:
                self.log.record("queue", app, reason=f"queue {name} deleted")
            return
        if old is None:
            self.log.record("queue", app, reason=f"queue {name} declared")
        elif old != new:
            self.log.record("queue", app, reason=f"queue {name} changed")

    def _instances_changed(self, kind):
        before, after = self._instances, _instances(self.store)
        self._instances = after
        for name in sorted(set(before) - set(after)):
            why = "" if kind == "delete_instance" else " with its app or queue"
            self.log.record("deleted", before[name]["app"], name, f"instance deleted{why}")
        for name in sorted(after):
            new, old = after[name], before.get(name)
            self._app_of[name] = new["app"]
            if old is None:
                queues = ", ".join(new["queues"]) or "no queue"
                self.log.record("created", new["app"], name,
                                f"consumes {queues}; autoscale max={new['max_concurrency']} "
                                f"min={new['min_concurrency']}")
                continue
            self._instance_changed(name, old, new)

    def _instance_changed(self, name, old, new):
        app = new["app"]
        for queue in new[_CONSUMING]:
            if queue not in old[_CONSUMING]:
                self.log.record("consumer", app, name, f"consumes {queue}")
        for queue in old[_CONSUMING]:
            if queue not in new[_CONSUMING]:
                self.log.record("consumer", app, name, f"no longer consumes {queue}")
        said = []
        if (old["max_concurrency"], old["min_concurrency"]) != (
                new["max_concurrency"], new["min_concurrency"]):
            said.append(f"autoscale max={new['max_concurrency']} min={new['min_concurrency']}")
        if old["is_enabled"] != new["is_enabled"]:
            said.append("enabled" if new["is_enabled"] else "disabled")
        others = sorted(k for k in new if k not in (_CONSUMING, *_SETTINGS)
                        and new[k] != old.get(k))
        if others:
            said.append(f"changed: {', '.join(others)}")
        if said:
            self.log.record("changed", app, name, "; ".join(said))

    # The bus

    def peer_changed(self, peer):
        """A peer was seen, went offline or left (a listener of the bus's presence)."""
        if self._online.get(peer.id) == peer.online:
            return
        self._online[peer.id] = peer.online
        if peer.online:
            self.log.record("online", reason=f"branch {peer.id} at {peer.url} "
                                             f"(cyme {peer.version})", peer=peer.id)
        else:
            ago = self.log.clock.seconds() - peer.last_seen
            self.log.record("offline", reason=f"branch {peer.id}: last heartbeat "
                                              f"{ago:.1f} s ago", peer=peer.id)

    # Rolling restarts

    def restart_step(self, step):
        """A step of a rolling restart this branch coordinates (its listener)."""
        what = step["type"].partition(".")[2]  # started, renewed, instance, finished
        detail = " ".join(f"{k} {step[k]}" for k in ("branch", "state", "pid", "reason")
                          if step.get(k) is not None)
        self.log.record("restart", app=step["app"], instance=step.get("instance"),
                        reason=f"{step['restart']} {what}" + (f": {detail}" if detail else ""))
