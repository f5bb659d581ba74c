"""A simulated cluster: the cluster's own code for N branches in one process.

Each branch is what L{build_cluster} makes of it (bus, presence,
replication, placement, listings), over a L{MemoryStore} and
L{LocalOperations} without a supervisor; all of them share one
L{MemoryBusNetwork} whose L{Faults} delay, lose or partition messages, and
one L{VirtualClock}: time moves only when told to, nothing sleeps, and a
run is the same for the same seed.

The measures are what C{bench/cluster_scale.py} prints and draws and
C{tests/operations/test_scale.py} asserts: bus messages each branch
receives per second at idle (L{SimulatedCluster.idle_rate}); messages and
virtual time one listing costs (L{SimulatedCluster.listing}); the time
until every live branch sees a killed one offline
(L{SimulatedCluster.detection}); the time until apps, queues and tokens
written on both sides of a partition are everywhere once it heals
(L{SimulatedCluster.convergence}).
"""

import json
import random

from twisted.internet import defer
from twisted.logger import LogLevel

from cyme import logs

from cyme.cluster.faults import Faults
from cyme.cluster.memory import MemoryBusNetwork
from cyme.cluster.seal import OpenSeal
from cyme.cluster.virtualtime import VirtualClock
from cyme.state.models import App, Instance
from cyme.state.store import MemoryStore

from .cluster import build_cluster
from .local import LocalOperations

#: The app every simulated branch holds, and whose instances are listed.
APP = "sim"


class SimulatedBranch:
    """One branch of a L{SimulatedCluster}: its store, operations and bus."""

    def __init__(self, branch_id, network, clock, bus_options):
        self.id = branch_id
        self.store = MemoryStore()
        self.local = LocalOperations(self.store, branch_id=branch_id,
                                     url=f"http://{branch_id}.sim:8000/", clock=clock)
        self.cluster, self.bus = build_cluster(
            self.local, network.transport(branch_id), clock,
            ready_timeout=self.local.ready_timeout, seal=OpenSeal(), **bus_options)


class SimulatedCluster:
    """
    C{size} branches, each holding C{instances} instances of L{APP}.

    C{bus_options(index, rng)} gives each branch's keyword arguments for its
    L{cyme.cluster.bus.Bus} (by default its random numbers, C{rng}, from
    the seed); C{latency},
    C{jitter} and C{drop} are the network's (L{Faults}).
    """

    def __init__(self, size, seed=0, *, instances=2, bus_options=None,
                 latency=0.001, jitter=0.001, drop=0.0):
        self.rng = random.Random(seed)
        self.clock = VirtualClock()
        self.faults = Faults(random.Random(self.rng.random()), latency=latency,
                             jitter=jitter, drop=drop)
        self.network = MemoryBusNetwork(self.clock, faults=self.faults, record=False)
        self.ids = [f"b{i:03d}" for i in range(size)]
        self.branches = {}
        for index, branch_id in enumerate(self.ids):
            rng = random.Random(self.rng.random())
            options = {"rng": rng} if bus_options is None else bus_options(index, rng)
            branch = self.branches[branch_id] = SimulatedBranch(
                branch_id, self.network, self.clock, options)
            # The same app everywhere from the start: one replica digest.
            branch.store.put_app(App(APP), (1, "setup"))
            for k in range(instances):
                branch.store.put_instance(Instance(name=f"{branch_id}-w{k}", app=APP))
        self.dead = set()
        self.errors = []
        self._offline_seen = {}
        for branch in self.branches.values():
            branch.bus.subscribe(self._watcher(branch.id))

    def _watcher(self, branch_id):
        def seen(peer):
            if not peer.online:
                self._offline_seen.setdefault((branch_id, peer.id), self.clock.seconds())
        return seen

    def start(self, settle=10.0):
        """Start every bus, then let C{settle} seconds pass (everyone met)."""
        for branch in self.branches.values():
            branch.bus.startService()
        self.run(settle)

    def stop(self):
        """Stop every bus (a killed branch's goodbye reaches nobody)."""
        for branch in self.branches.values():
            branch.bus.stopService()
        self.clock.advance(1.0)

    def run(self, seconds):
        self.clock.advance(seconds)

    def live(self):
        return [b for b in self.ids if b not in self.dead]

    def received(self):
        return sum(self.network.received.values())

    def kill(self, branch_id):
        """The branch dies without a word: nothing it sends or is sent arrives."""
        self.dead.add(branch_id)
        self.network.partition(branch_id)

    # The measures

    def idle_rate(self, window):
        """Bus messages each live branch received per second over C{window} s."""
        before = self.received()
        self.run(window)
        return (self.received() - before) / len(self.live()) / window

    def listing(self, via=None, fresh=False, step=0.001, limit=30.0):
        """
        One listing of L{APP}'s instances through branch C{via}: C{(names,
        missing, requests, seconds)}, the requests and replies it took on
        the bus and its virtual time.
        """
        branch = self.branches[via or self.live()[0]]
        calls = []
        self.network.observer = lambda target, body: calls.append(body)
        started = self.clock.seconds()
        d = defer.ensureDeferred(branch.cluster.list_instances(APP, fresh=fresh))
        outcome = []
        d.addBoth(outcome.append)
        try:
            while not outcome and self.clock.seconds() - started < limit:
                self.clock.advance(step)
        finally:
            self.network.observer = None
        if not outcome:
            raise RuntimeError(f"the listing did not end within {limit:g} s")
        names, missing = outcome[0]
        return names, missing, _calls(calls), self.clock.seconds() - started

    def detection(self, victim, step=0.25, limit=300.0):
        """
        Kill C{victim}: the time until every live branch sees it offline,
        and the other branches any of them saw offline meanwhile (false
        alarms); None for the time if some did not within C{limit} s.
        """
        started = self.clock.seconds()
        self.kill(victim)
        watchers = self.live()
        while self.clock.seconds() - started < limit:
            self.clock.advance(step)
            if all((w, victim) in self._offline_seen for w in watchers):
                break
        seen = [self._offline_seen.get((w, victim)) for w in watchers]
        false = sorted({p for (w, p), t in self._offline_seen.items()
                        if t >= started and p != victim and not {w, p} & self.dead})
        took = None if None in seen else max(seen) - started
        return took, false

    def _start(self, coroutine):
        """Start C{coroutine}; an error it ends with is kept in C{errors}."""
        defer.ensureDeferred(coroutine).addErrback(self.errors.append)

    def digests(self):
        return {self.branches[b].store.digest() for b in self.live()}

    def convergence(self, apart=30.0, step=0.25, limit=300.0):
        """
        Split the live branches in two halves for C{apart} s, write an app,
        a queue and a token on each side once each side sees the other
        offline (a token's name is decided by one branch, maybe across),
        heal: the time until every live branch holds the same apps, queues
        and tokens.
        """
        live = self.live()
        left, right = live[: len(live) // 2], live[len(live) // 2:]
        self.faults.split(left, right)
        self.run(apart * 0.75)
        for side, branch_id in (("left", left[0]), ("right", right[-1])):
            cluster = self.branches[branch_id].cluster
            self._start(cluster.put_app(f"app-{side}", {}, wait=False))
            self._start(cluster.put_queue(APP, f"queue-{side}", {}, wait=False))
            self._start(cluster.create_token({"name": f"token-{side}", "scope": "read"},
                                                wait=False))
        self.run(apart * 0.25)
        healed = self.clock.seconds()
        self.faults.heal()
        while len(self.digests()) > 1 and self.clock.seconds() - healed < limit:
            self.clock.advance(step)
        if self.errors:
            self.errors[0].raiseException()
        if len(self.digests()) > 1:
            return None
        store = self.branches[live[0]].store
        for side in ("left", "right"):
            store.get_app(f"app-{side}")
            store.get_queue(APP, f"queue-{side}")
        if {t.name for t in store.tokens()} < {"token-left", "token-right"}:
            raise RuntimeError("the digests agree, yet a token is missing")
        return self.clock.seconds() - healed


def _calls(bodies):
    """How many of C{bodies} are requests or replies (not presence)."""
    count = 0
    for body in bodies:
        try:
            kind = json.loads(body).get("type")
        except (ValueError, AttributeError):
            continue
        count += kind in ("request", "reply")
    return count


def measure(size, seed=0, *, settle=10.0, window=10.0, detect=True, converge=True,
            **options):
    """
    The figures of a cluster of C{size} branches (L{SimulatedCluster}
    C{options}): idle messages received per branch per second over
    C{window} s once settled; one listing's bus messages and seconds, and
    one asking live figures (C{fresh}); if C{detect}, the seconds until a
    killed branch is offline everywhere (and the false alarms); if
    C{converge}, until a partition's writes are everywhere.
    """
    level = logs.level()
    # Each branch says so of every other that comes online, ... : the
    # lines of hundreds of branches would cost more than their messages.
    logs.set_level(LogLevel.warn)
    try:
        return _measure(size, seed, settle, window, detect, converge, options)
    finally:
        logs.set_level(level)


def _measure(size, seed, settle, window, detect, converge, options):
    sim = SimulatedCluster(size, seed, **options)
    sim.start(settle)
    figures = {"size": size, "idle": sim.idle_rate(window)}
    names, missing, calls, seconds = sim.listing()
    figures.update(listed=len(names), listing_missing=len(missing),
                   listing_messages=calls, listing_seconds=seconds)
    names, missing, calls, seconds = sim.listing(fresh=True)
    figures.update(fresh_messages=calls, fresh_seconds=seconds)
    if detect:
        took, false = sim.detection(sim.ids[len(sim.ids) // 3])
        figures.update(detection=took, false_alarms=len(false))
    if converge:
        figures["convergence"] = sim.convergence()
    sim.stop()
    return figures


__all__ = ["APP", "SimulatedBranch", "SimulatedCluster", "measure"]
