"""One API on every branch: each operation routed to where its record lives.

Apps and queue declarations are replicated: every branch keeps them all in
its store, with a version per record (last writer wins, ties by branch id).
A write is applied here, then sent to every live branch before it is
answered; a branch that was away catches up from a peer whose heartbeat
shows a different replica digest (it pulls, and the peer pulls from it).

An instance belongs to exactly one branch.  A new one goes to the least
loaded live branch (fewest instances, ties at random) or to
C{?branch=<id>}; every operation on it by name runs on its owner, found
from the heartbeats and confirmed by the owner (or by asking everyone).
Whether a name is new is decided by one branch, the same for every
branch that asks (L{ClusterOperations._coordinator}), one request at a
time: a name sent to several branches at once still makes one instance.
Listings ask every live branch and add what offline branches last
announced; a branch that did not answer is named in the answer.
"""

import hashlib
import random
import uuid

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cyme import logs
from cyme.cluster.bus import RemoteError
from cyme.errors import Conflict, GatewayTimeout, NotFound, Unavailable
from cyme.operations.interfaces import IOperations
from cyme.state.models import check_name
from cyme.state.store import app_key, queue_key


class Rounds:
    """
    Concurrent requests for the same listing share one broadcast.

    A request joins the next round, never one already under way, so its
    answer still reflects every change made before it arrived; under load
    one broadcast per round trip serves every client waiting meanwhile.
    """

    def __init__(self, run):
        self._run = run
        self._running = set()
        self._next = {}

    def request(self, key):
        d = defer.Deferred()
        if key in self._running:
            self._next.setdefault(key, []).append(d)
        else:
            self._start(key, [d])
        return d

    def _start(self, key, waiters):
        self._running.add(key)
        round_ = defer.ensureDeferred(self._run(key))

        def done(result):
            self._running.discard(key)
            following = self._next.pop(key, None)
            if following:
                self._start(key, following)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        round_.addBoth(done)


@implementer(IOperations)
@attrs.define
class ClusterOperations:
    local: object  # LocalOperations of this branch
    bus: object
    store: object
    call_timeout: float = 5.0
    write_timeout: float = 5.0
    rng: object = random.random
    log = Logger(observer=logs.observer)
    _pulling: set = attrs.field(factory=set)
    _creating: dict = attrs.field(factory=dict)  # instance name -> DeferredLock
    _listings: object = attrs.field(init=False, default=None)

    def __attrs_post_init__(self):
        self._listings = Rounds(self._list_everywhere)
        handlers = {
            "replica.merge": self._merge,
            "replica.dump": lambda args, sender: self.store.replica(),
            "instances.list": self._list_local,
            "instance.lookup": self._lookup_local,
            "instance.op": self._instance_op,
            "instance.put": self._put_named_remote,
            "task.get": self._task_local,
            "task.wait": self._task_wait_local,
        }
        self.bus.handlers.update(handlers)
        self.bus.peer_listeners.append(self._peer_seen)
        # Others see our instances change at once, not at the next beat.
        self.store.subscribe(lambda change: self.bus.announce_soon())

    @property
    def supervisor(self):
        return self.local.supervisor

    @property
    def branch_id(self):
        return self.bus.branch_id

    def metrics(self):
        return self.local.metrics()

    async def local_instances(self):
        return await self.local.local_instances()

    # What this branch announces in its heartbeats

    def describe(self):
        """This branch's heartbeat: URL, instances, load, replica digest."""
        return {
            "url": self.local.url,
            "instances": [[i.app, i.name] for i in self.store.instances()],
            "load": self.local.load(),
            "digest": self.store.digest(),
        }

    # Replication

    async def _merge(self, args, sender):
        before = self.store.digest()
        removed = self.store.merge(args.get("replica") or {})
        if self.store.digest() != before:
            # Not for what this branch knew already (its own writes come
            # back to it too): nothing to log or reconcile.
            self.log.info("replica.merge sender={sender} removed={removed}",
                          sender=sender, removed=[i.name for i in removed])
        return {"ok": True, "digest": self.store.digest()}

    def _peer_seen(self, peer):
        if not peer.online or peer.digest is None or peer.digest == self.store.digest():
            return
        if peer.id in self._pulling:
            return
        self._pulling.add(peer.id)
        d = defer.ensureDeferred(self._pull(peer.id))
        d.addErrback(lambda f: self.log.warn(
            "cannot pull the replica of {peer}: {error}", peer=peer.id,
            error=f.getErrorMessage()))
        d.addBoth(lambda _: self._pulling.discard(peer.id))

    async def _pull(self, peer_id):
        replica = await self.bus.call(peer_id, "replica.dump", {}, self.call_timeout)
        before = self.store.digest()
        removed = self.store.merge(replica)
        if self.store.digest() != before:
            self.log.info("caught up with {peer}", peer=peer_id)
            self.log.info("replica.pull peer={peer} removed={removed}",
                          peer=peer_id, removed=[i.name for i in removed])
            self.bus.announce()

    async def _replicate(self, *keys):
        """Send the records under C{keys} (or their tombstones) to every branch."""
        full = self.store.replica()
        part = {"apps": {}, "queues": {}, "versions": {}}
        for key in keys:
            version = full["versions"].get(key)
            if version is None:
                continue
            part["versions"][key] = version
            kind, _, rest = key.partition("/")
            if kind == "app" and rest in full["apps"]:
                part["apps"][rest] = full["apps"][rest]
            elif kind == "queue":
                app, _, name = rest.partition("/")
                record = full["queues"].get(app, {}).get(name)
                if record is not None:
                    part["queues"].setdefault(app, {})[name] = record
        results, errors, missing = await self.bus.broadcast(
            "replica.merge", {"replica": part}, self.write_timeout
        )
        return sorted(set(missing) | set(errors) - {self.branch_id})

    # Apps and queues: read here, written everywhere

    async def list_apps(self):
        return await self.local.list_apps()

    async def get_app(self, name):
        return await self.local.get_app(name)

    async def put_app(self, name, values):
        record, created, _ = await self.local.put_app(name, values)
        return record, created, await self._replicate(app_key(name))

    async def delete_app(self, name):
        queues = [q.name for q in self.store.queues(check_name(name, "app"))]
        await self.local.delete_app(name)
        return await self._replicate(app_key(name), *(queue_key(name, q) for q in queues))

    async def list_queues(self, app):
        return await self.local.list_queues(app)

    async def get_queue(self, app, name):
        return await self.local.get_queue(app, name)

    async def put_queue(self, app, name, values):
        record, created, _ = await self.local.put_queue(app, name, values)
        return record, created, await self._replicate(queue_key(app, name))

    async def delete_queue(self, app, name):
        await self.local.delete_queue(app, name)
        return await self._replicate(queue_key(app, name))

    # Branches

    async def list_branches(self):
        return self.bus.live_ids()

    async def get_branch(self, branch_id):
        now = self.bus.clock.seconds()
        if branch_id == self.branch_id:
            return self.local.branch_info(now)
        peer = self.bus.peers.get(branch_id)
        if peer is None:
            raise NotFound("branch", branch_id)
        return peer.to_json(now)

    # Instances

    def _list_local(self, args, sender):
        app = args.get("app")
        return [i.name for i in self.store.instances() if app is None or i.app == app]

    async def list_instances(self, app):
        await self.local.get_app(app)
        return await self._listings.request(app)

    async def _list_everywhere(self, app):
        results, errors, missing = await self.bus.broadcast(
            "instances.list", {"app": app}, self.call_timeout
        )
        names = set()
        for listed in results.values():
            names.update(listed)
        # Offline branches' instances are not lost: list what they last said.
        answered = set(results)
        for peer in self.bus.peers.values():
            if peer.id not in answered:
                names.update(n for a, n in peer.instances if a == app)
        return sorted(names), sorted(set(missing) | set(errors))

    def _lookup_local(self, args, sender):
        try:
            instance = self.store.get_instance(args["name"])
        except NotFound:
            return None
        return {"app": instance.app}

    async def _owner(self, name):
        """The id of the branch that owns instance C{name}, and its peer."""
        check_name(name, "instance")
        try:
            self.store.get_instance(name)
            return self.branch_id, None
        except NotFound:
            pass
        hinted = [
            p for p in self.bus.peers.values() if any(n == name for _, n in p.instances)
        ]
        for peer in hinted:
            if not peer.online:
                return peer.id, peer
        results, errors, missing = await self.bus.broadcast(
            "instance.lookup", {"name": name}, self.call_timeout
        )
        for branch, found in results.items():
            if found is not None:
                return branch, self.bus.peers.get(branch)
        if missing:
            raise GatewayTimeout(
                f"instance {name} not found; branches {', '.join(missing)} did not answer",
                name=name, missing=missing,
            )
        return None, None

    async def _instance_op(self, args, sender):
        op = args.get("op")
        method = getattr(self.local, op, None)
        if op not in _INSTANCE_OPS or method is None:
            raise NotFound("operation", str(op))
        return await method(*args.get("args", []), **args.get("kwargs", {}))

    async def _route(self, op, app, name, *args, **kwargs):
        owner, peer = await self._owner(name)
        if owner is None:
            await self.local.get_app(app)
            raise NotFound("instance", name)
        if owner == self.branch_id:
            return await getattr(self.local, op)(app, name, *args, **kwargs)
        if peer is not None and not peer.online:
            if op == "get_instance":
                return _offline(app, name, peer)
            raise Unavailable(
                f"instance {name} is on branch {peer.id}, which is offline",
                name=name, branch=peer.id,
            )
        timeout = self.call_timeout + (self.local.ready_timeout
                                       if op in _WAITING_OPS else 0)
        return await self.bus.call(
            owner, "instance.op",
            {"op": op, "args": [app, name, *args], "kwargs": kwargs}, timeout,
        )

    async def app_of_instance(self, name):
        owner, peer = await self._owner(name)
        if owner is None:
            raise NotFound("instance", name)
        if owner == self.branch_id:
            return await self.local.app_of_instance(name)
        known = [a for a, n in (peer.instances if peer is not None else []) if n == name]
        if known:
            return known[0]
        return (await self.bus.call(owner, "instance.lookup", {"name": name},
                                    self.call_timeout))["app"]

    async def get_instance(self, app, name):
        return await self._route("get_instance", app, name)

    async def put_instance(self, app, name, values, wait=True, branch=None):
        await self.local.get_app(app)
        if name is None:
            # A fresh UUID is nobody's yet: no one else can be creating it.
            return await self._create(app, str(uuid.uuid4()), values, wait, branch)
        check_name(name, "instance")
        coordinator = self._coordinator(name)
        if coordinator == self.branch_id:
            return await self._put_named(app, name, values, wait, branch)
        timeout = 2 * self.call_timeout + self.local.ready_timeout
        return await self.bus.call(
            coordinator, "instance.put",
            {"app": app, "name": name, "values": values, "wait": wait, "branch": branch},
            timeout,
        )

    def _coordinator(self, name):
        """
        The live branch that decides where a new instance C{name} goes.

        Every branch picks the same one from the same live set (the highest
        hash of the name and a branch id), so that creates of one name sent
        to several branches at once are decided in one place, in turn.
        """
        return max(
            self.bus.live_ids(),
            key=lambda b: hashlib.sha256(f"{name}\0{b}".encode("utf-8")).digest(),
        )

    async def _put_named_remote(self, args, sender):
        # The asking branch checked the app in its replica; this one's may
        # not have it yet (or any more).
        await self.local.get_app(args["app"])
        return await self._put_named(
            args["app"], args["name"], args.get("values") or {},
            args.get("wait", True), args.get("branch"),
        )

    async def _put_named(self, app, name, values, wait, branch):
        lock = self._creating.setdefault(name, defer.DeferredLock())
        await lock.acquire()
        try:
            owner, _ = await self._owner(name)
            if owner is None:
                return await self._create(app, name, values, wait, branch)
            if branch not in (None, "", owner):
                raise Conflict(
                    f"instance {name} already exists on branch {owner}",
                    name=name, branch=owner,
                )
            return await self._route("put_instance", app, name, values, wait=wait)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._creating.pop(name, None)

    async def _create(self, app, name, values, wait, branch):
        target = self._place(branch)
        if target == self.branch_id:
            result = await self.local.put_instance(app, name, values, wait=wait)
        else:
            # Counted from now on, not once created (its worker may take a
            # while) nor at the target's next beat: placements made
            # meanwhile see it.
            peer = self.bus.peers.get(target)
            entry = [app, name]
            counted = peer is not None and entry not in peer.instances
            if counted:
                peer.instances.append(entry)
            timeout = self.call_timeout + self.local.ready_timeout
            try:
                result = await self.bus.call(
                    target, "instance.op",
                    {"op": "put_instance", "args": [app, name, values],
                     "kwargs": {"wait": wait}}, timeout,
                )
            except Exception:
                if counted and entry in peer.instances:
                    peer.instances.remove(entry)
                raise
        return result

    def _place(self, branch):
        live = {p.id: len(p.instances) for p in self.bus.live_peers()}
        live[self.branch_id] = len(self.store.instances())
        if branch not in (None, ""):
            if branch not in live:
                raise NotFound("branch", branch)
            return branch
        fewest = min(live.values())
        candidates = sorted(b for b, n in live.items() if n == fewest)
        return candidates[int(self.rng() * len(candidates)) % len(candidates)]

    async def delete_instance(self, app, name):
        return await self._route("delete_instance", app, name)

    async def add_consumer(self, app, name, queue):
        return await self._route("add_consumer", app, name, queue)

    async def cancel_consumer(self, app, name, queue):
        return await self._route("cancel_consumer", app, name, queue)

    async def instance_queues(self, app, name):
        return await self._route("instance_queues", app, name)

    async def get_autoscale(self, app, name):
        return await self._route("get_autoscale", app, name)

    async def set_autoscale(self, app, name, values):
        return await self._route("set_autoscale", app, name, values)

    async def restart(self, app, name):
        return await self._route("restart", app, name)

    async def set_enabled(self, app, name, enabled):
        return await self._route("set_enabled", app, name, enabled)

    async def stats(self, app, name):
        return await self._route("stats", app, name)


    # Queued URLs: published here, answered by the branch that published

    async def queue_task(self, *args):
        return await self.local.queue_task(*args)

    def _task_local(self, args, sender):
        record = self.local.task_record(args["app"], args["uuid"])
        return None if record is None else {"state": record.state}

    async def _task_wait_local(self, args, sender):
        return await self.local.wait_task(args["app"], args["uuid"], float(args["timeout"]))

    async def _task_owner(self, app, task_id):
        if self.local.task_record(app, task_id) is not None:
            return self.branch_id
        results, errors, missing = await self.bus.broadcast(
            "task.get", {"app": app, "uuid": task_id}, self.call_timeout
        )
        for branch, found in sorted(results.items()):
            if found:
                return branch
        return None

    async def task(self, app, task_id):
        await self.local.get_app(app)
        owner = await self._task_owner(app, task_id)
        if owner is None or owner == self.branch_id:
            return await self.local.task(app, task_id)
        return await self.bus.call(
            owner, "instance.op", {"op": "task", "args": [app, task_id]}, self.call_timeout
        )

    async def wait_task(self, app, task_id, timeout):
        await self.local.get_app(app)
        owner = await self._task_owner(app, task_id)
        if owner is None or owner == self.branch_id:
            return await self.local.wait_task(app, task_id, timeout)
        return await self.bus.call(
            owner, "task.wait", {"app": app, "uuid": task_id, "timeout": timeout},
            timeout + self.call_timeout,
        )


# The instance operations another branch may ask this one to run.
_INSTANCE_OPS = frozenset([
    "get_instance", "put_instance", "delete_instance", "add_consumer",
    "cancel_consumer", "instance_queues", "get_autoscale", "set_autoscale",
    "restart", "set_enabled", "stats", "task",
])
_WAITING_OPS = frozenset(["put_instance", "restart", "set_enabled"])


def _offline(app, name, peer):
    return {"name": name, "app": app, "branch": peer.id, "state": "offline",
            "last_heartbeat": peer.last_seen}


__all__ = ["ClusterOperations", "RemoteError"]
