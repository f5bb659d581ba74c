"""One API on every branch: each operation routed to where its record lives.

Apps and queue declarations are replicated (L{cyme.cluster.replication}):
they are read here, and a write is applied here then sent to every live
branch before it is answered.

An instance belongs to exactly one branch.  A new one goes where
L{cyme.cluster.placement} says (the least loaded live branch, or
C{?branch=<id>}); every operation on it by name runs on its owner, found
from the branches' records and confirmed by the owner (or by asking
everyone).  Whether a name is new is decided by one branch, the same for
every branch that asks (its coordinator), one request at a time.  Listings
read every branch's record, offline ones' included (no message); with
C{fresh}, they ask each owner and name one that did not answer.

The parts are wired once, in L{build_cluster} (makeService and the tests).
"""

import contextlib
import uuid

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cyme import logs
from cyme.cluster.bus import Bus
from cyme.cluster.placement import Placement
from cyme.cluster.presence import BeatContents
from cyme.cluster.replication import Replication
from cyme.cluster.rounds import Rounds
from cyme.errors import Conflict, GatewayTimeout, NotFound, Unavailable
from cyme.state import params
from cyme.state.models import check_name
from cyme.state.store import app_key, queue_key
from cyme.waits import WaitCap

from . import calls, drift
from .eventhub import EventHub
from .clustertasks import ClusterTasks
from .interfaces import IOperations
from .restarts import RestartOperations
from .rolling import RollingRestarts
from .tokens import ClusterTokens


@implementer(IOperations)
@attrs.define
class ClusterOperations(ClusterTasks, ClusterTokens, RestartOperations):
    #: This branch's own operations: a L{cyme.operations.local.LocalOperations}
    #: (its IOperations, and what only this branch knows: C{task_record}).
    local: object
    bus: object
    store: object
    #: The L{cyme.cluster.replication.Replication} of this branch's store.
    replication: object
    #: How long a create (or restart) waits for its worker's first pong.
    ready_timeout: float
    call_timeout: float = 5.0
    #: The branch's cap on open waits (L{cyme.waits.WaitCap}), shared with
    #: its API: the waits other branches send here count against it.
    waits: object = attrs.field(factory=WaitCap)
    #: The cluster's events (an L{cyme.operations.eventhub.EventHub} over the bus).
    events: object = None
    #: The rolling restarts this branch coordinates (L{RollingRestarts}).
    restarts: object = None
    placement: object = attrs.field(
        default=attrs.Factory(lambda self: Placement(
            self.bus, self.store, limits=self.local.worker_policy.limits()), takes_self=True)
    )
    _deciding: dict = attrs.field(factory=dict)  # instance name -> DeferredLock
    _listings: object = attrs.field(init=False, default=None)

    log = Logger(observer=logs.observer)

    def __attrs_post_init__(self):
        self._listings = Rounds(self._list_everywhere)

    def handlers(self):
        """The bus methods other branches call on this one."""
        return {
            "instances.list": self._list_local,
            "instances.describe": self._describe_local,
            "instance.lookup": self._lookup_local,
            "instance.op": self._instance_op,
            "instance.put": self._put_remote,
            **self.task_handlers(),
            **self.token_handlers(),
        }

    # The branch and the cluster
    @property
    def branch_id(self):
        return self.bus.branch_id

    def metrics(self):
        return {
            **self.local.metrics(), "bus_dropped": self.bus.drops.figures(),
            "peers": self.bus.presence.by_state(), "merges": dict(self.replication.merges),
        }

    def health(self, apps=True):
        return self.local.health(apps)

    async def local_instances(self):
        return await self.local.local_instances()

    async def _describe_local(self, args, sender):
        args = calls.checked(args, calls.INSTANCES_DESCRIBE)
        return (await self.local.describe_instances(args["drift_only"]))[0]

    async def describe_instances(self, drift_only=False):
        results, errors, missing = await self.bus.broadcast(
            "instances.describe", {"drift_only": drift_only}, self.call_timeout)
        found = [i for listed in results.values() for i in calls.described(listed)]
        for peer in self.bus.known_peers():
            if not peer.online:
                found += [_offline(app, name, peer) for app, name in peer.instances]
        found.sort(key=lambda i: (i["app"], i.get("branch") or "", i["name"]))
        return found, sorted(set(missing) | set(errors))

    def watch_events(self, deliver, match=None, after=(), last=0):
        if self.events is None:
            return self.local.watch_events(deliver, match, after, last)
        return self.events.watch(deliver, match, after, last)

    async def list_branches(self):
        return self.bus.live_ids()

    async def get_branch(self, branch_id):
        if branch_id == self.bus.branch_id:
            return {**await self.local.get_branch(branch_id), "bus": self.bus.figures()}
        peer = self.bus.peer(branch_id)
        if peer is None:
            raise NotFound("branch", branch_id)
        return peer.to_json(self.bus.clock.seconds())

    # Apps and queues: read here, written everywhere
    async def list_apps(self):
        return await self.local.list_apps()

    async def get_app(self, name):
        return await self.local.get_app(name)

    async def _replicated(self, wait, *keys):
        """
        Send the records under C{keys} to every live branch: the ids of
        those that did not take them; without C{wait} (the C{!} routes),
        sent and not waited for (none named).
        """
        if wait:
            return await self.replication.replicate(*keys)
        sending = defer.ensureDeferred(self.replication.replicate(*keys))
        sending.addErrback(lambda f: self.log.failure("replicating {keys}", f, keys=keys))
        return []

    async def put_app(self, name, values, wait=True):
        record, created, _ = await self.local.put_app(name, values)
        return record, created, await self._replicated(wait, app_key(name))

    async def delete_app(self, name, wait=True):
        queues = [q.name for q in self.store.queues(check_name(name, "app"))]
        await self.local.delete_app(name)
        return await self._replicated(
            wait, app_key(name), *(queue_key(name, q) for q in queues)
        )

    async def list_queues(self, app):
        return await self.local.list_queues(app)

    async def get_queue(self, app, name):
        return await self.local.get_queue(app, name)

    async def put_queue(self, app, name, values, wait=True):
        record, created, _ = await self.local.put_queue(app, name, values)
        return record, created, await self._replicated(wait, queue_key(app, name))

    async def delete_queue(self, app, name, wait=True):
        await self.local.delete_queue(app, name)
        return await self._replicated(wait, queue_key(app, name))

    # Instances: listed everywhere
    def _list_local(self, args, sender):
        app = calls.checked(args, calls.INSTANCES_LIST)["app"]
        return [i.name for i in self.store.instances() if app is None or i.app == app]

    async def list_instances(self, app, fresh=False):
        """
        The names of C{app}'s instances, and the branches whose part may be
        stale: from every branch's record (no message; suspects named), or
        with C{fresh} asked of each live owner (one request each).
        """
        await self.local.get_app(app)
        if fresh:
            return await self._listings.request(app)
        names = {i.name for i in self.store.instances(app)}
        names.update(n for p in self.bus.known_peers() for a, n in p.instances if a == app)
        suspected = [p.id for p in self.bus.live_peers() if p.status != "alive"]
        return sorted(names), sorted(suspected)

    async def _list_everywhere(self, app):
        owners = [p.id for p in self.bus.live_peers()
                  if any(a == app for a, _ in p.instances)]
        results, errors, missing = await self.bus.ask(owners, "instances.list", {"app": app},
                                                      self.call_timeout)
        names = {i.name for i in self.store.instances(app)}
        for listed in results.values():
            names.update(calls.names(listed))
        # Offline branches' instances are not lost: list what they last said.
        for peer in self.bus.known_peers():
            if peer.id not in results:
                names.update(n for a, n in peer.instances if a == app)
        return sorted(names), sorted(set(missing) | set(errors))

    # Instances: found on their owner
    def _lookup_local(self, args, sender):
        try:
            instance = self.store.get_instance(calls.checked(args, calls.INSTANCE_LOOKUP)["name"])
        except NotFound:
            return None
        return {"app": instance.app}

    async def _owner(self, name):
        """The id of the branch that owns instance C{name} (or None), and its peer."""
        try:
            self.store.get_instance(name)
            return self.bus.branch_id, None
        except NotFound:
            pass
        said = [p for p in self.bus.known_peers() if any(n == name for _, n in p.instances)]
        for peer in sorted(said, key=lambda p: p.online):
            if not peer.online:
                return peer.id, peer
            # Its record says it owns it: confirmed by it alone, not by all.
            results, errors, missing = await self.bus.ask(
                [peer.id], "instance.lookup", {"name": name}, self.call_timeout)
            if results.get(peer.id) is not None:
                return peer.id, peer
            if missing:
                raise GatewayTimeout(f"instance {name} is on branch {peer.id}, which did not "
                                     "answer", name=name, missing=missing)
        results, errors, missing = await self.bus.broadcast(
            "instance.lookup", {"name": name}, self.call_timeout)
        for branch, found in results.items():
            if found is not None:
                return branch, self.bus.peer(branch)
        if missing:
            raise GatewayTimeout(
                f"instance {name} not found; branches {', '.join(missing)} did not answer",
                name=name, missing=missing,
            )
        return None, None

    async def _instance_op(self, args, sender):
        op, positional, keywords = calls.instance_op(args)
        return await getattr(self.local, op)(*positional, **keywords)

    async def _route(self, op, app, name, *args, **kwargs):
        """Run C{local.<op>(app, name, ...)} on the owner of instance C{name}."""
        owner, peer = await self._owner(check_name(name, "instance"))
        if owner is None:
            await self.local.get_app(app)
            raise NotFound("instance", name)
        return await self._on_owner(owner, peer, op, app, name, *args, **kwargs)

    async def _on_owner(self, owner, peer, op, app, name, *args, **kwargs):
        if owner == self.bus.branch_id:
            return await getattr(self.local, op)(app, name, *args, **kwargs)
        if peer is not None and not peer.online:
            if op == "get_instance":
                return _offline(app, name, peer)
            raise Unavailable(
                f"instance {name} is on branch {peer.id}, which is offline",
                name=name, branch=peer.id,
            )
        timeout = self.call_timeout + (self.ready_timeout if op in _WAITING_OPS else 0)
        return await self.bus.call(
            owner, "instance.op",
            {"op": op, "args": [app, name, *args], "kwargs": kwargs}, timeout,
        )

    async def app_of_instance(self, name):
        owner, peer = await self._owner(check_name(name, "instance"))
        if owner is None:
            raise NotFound("instance", name)
        if owner == self.bus.branch_id:
            return await self.local.app_of_instance(name)
        known = [a for a, n in (peer.instances if peer is not None else []) if n == name]
        if known:
            return known[0]
        return calls.app_of(await self.bus.call(owner, "instance.lookup", {"name": name},
                                                self.call_timeout))

    async def get_instance(self, app, name):
        return await self._route("get_instance", app, name)

    async def put_instance(self, app, name, values, wait=True, branch=None):
        branch = params.branch(branch)
        await self.local.get_app(app)
        if name is not None:
            coordinator = self.placement.coordinator(check_name(name, "instance"))
            if coordinator != self.bus.branch_id:
                return await self.bus.call(
                    coordinator, "instance.put",
                    {"app": app, "name": name, "values": values, "wait": wait,
                     "branch": branch},
                    2 * self.call_timeout + self.ready_timeout,
                )
        return await self._decide(app, name, values, wait, branch)

    async def _put_remote(self, args, sender):
        args = calls.checked(args, calls.INSTANCE_PUT)
        # The asking branch checked the app in its replica; this one's may
        # not have it yet (or any more).
        await self.local.get_app(args["app"])
        return await self._decide(
            args["app"], check_name(args["name"], "instance"), args["values"],
            args["wait"], params.branch(args["branch"]),
        )

    async def _decide(self, app, name, values, wait, branch):
        """
        Create or change instance C{name} as the branch that decides for
        it: one request at a time per name, so that of several creates of
        one name, the first creates and the others change what it made.
        """
        fresh = name is None
        if fresh:
            # A fresh UUID is nobody's yet: no one else can be creating it.
            name, lock = str(uuid.uuid4()), contextlib.nullcontext()
        else:
            lock = self._deciding.setdefault(name, defer.DeferredLock())
        try:
            async with lock:
                owner, peer = (None, None) if fresh else await self._owner(name)
                if owner is None:
                    target = self.placement.target(branch, values.get("max_concurrency"))
                elif branch in (None, "", owner):
                    target = owner
                else:
                    raise Conflict(
                        f"instance {name} already exists on branch {owner}",
                        name=name, branch=owner,
                    )
                if target == self.bus.branch_id:
                    return await self.local.put_instance(app, name, values, wait=wait)
                if owner is not None:
                    return await self._on_owner(
                        owner, peer, "put_instance", app, name, values, wait=wait
                    )
                release = self.placement.reserve(target, app, name)
                try:
                    return await self.bus.call(
                        target, "instance.op",
                        {"op": "put_instance", "args": [app, name, values],
                         "kwargs": {"wait": wait}},
                        self.call_timeout + self.ready_timeout,
                    )
                except Exception:
                    release()
                    raise
        finally:
            if not fresh and not (lock.locked or lock.waiting):
                self._deciding.pop(name, None)

    async def delete_instance(self, app, name):
        return await self._route("delete_instance", app, name)

    async def add_consumer(self, app, name, queue):
        return await self._route("add_consumer", app, name, queue)

    async def cancel_consumer(self, app, name, queue):
        return await self._route("cancel_consumer", app, name, queue)

    async def get_consumer(self, app, name, queue):
        return await self._route("get_consumer", app, name, queue)

    async def instance_queues(self, app, name):
        return await self._route("instance_queues", app, name)

    async def get_autoscale(self, app, name):
        return await self._route("get_autoscale", app, name)

    async def set_autoscale(self, app, name, values):
        return await self._route("set_autoscale", app, name, values)

    async def restart(self, app, name, wait=True):
        # wait is sent only when False: a branch of an older version takes none.
        return await self._route("restart", app, name, **_no_wait(wait))

    async def set_enabled(self, app, name, enabled, wait=True):
        return await self._route("set_enabled", app, name, enabled, **_no_wait(wait))

    async def stats(self, app, name):
        return await self._route("stats", app, name)


_WAITING_OPS = frozenset(["put_instance", "restart", "set_enabled"])


def _no_wait(wait):
    return {} if wait else {"wait": False}


def build_cluster(local, transport, clock, *, ready_timeout, seal, waits=None,
                  launcher=None, restart_listener=None, kill_timeout=10.0, **bus_options):
    """
    This branch in the cluster: C{(ClusterOperations, Bus)} over C{local}
    (L{cyme.operations.local.LocalOperations}) and the bus C{transport},
    its envelopes sealed by C{seal} (L{cyme.cluster.seal.ISeal}).  Its
    rolling restarts renew C{launcher} (an L{ILauncher}) and tell
    C{restart_listener} each step; one instance's step (its warm stop and
    its replacement's first pong) may take C{kill_timeout} +
    C{ready_timeout} + 30 s.

    The one place the cluster's parts are put together (makeService and
    the tests build a branch alike); the bus is a service for the caller
    to start.
    """
    store = local.store
    beat = BeatContents(store, local.url, limits=local.worker_policy.limits())
    bus = Bus(transport, local.branch_id, clock, beat, seal=seal, digest=store.digest,
              **bus_options)
    replication = Replication(store, bus)
    # The cluster's events: this branch's log, and its peers' while watched.
    events = None if local.events is None else EventHub(local.events.log, clock, bus)
    if events is not None:
        bus.register(events.handlers())
    restarts = RollingRestarts(clock, local.branch_id, bus, launcher, restart_listener,
                               step_timeout=kill_timeout + ready_timeout + 30.0)
    cluster = ClusterOperations(local, bus, store, replication, ready_timeout=ready_timeout,
                                waits=waits if waits is not None else WaitCap(),
                                events=events, restarts=restarts)
    bus.register(replication.handlers())
    bus.register(cluster.handlers())
    bus.register(restarts.handlers())
    bus.subscribe(replication.peer_seen)
    # Other branches see this one's instances change at once, not at its
    # next heartbeat.
    store.subscribe(bus.announce_soon)
    return cluster, bus


def _offline(app, name, peer):
    return {"name": name, "app": app, "branch": peer.id, "state": "offline",
            "last_heartbeat": peer.last_seen, "drift": drift.offline(peer)}


__all__ = ["ClusterOperations", "build_cluster"]
