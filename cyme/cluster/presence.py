"""Presence: which branches are there, from their heartbeats.

Every branch broadcasts a heartbeat every few seconds (L{BeatContents}
says what goes in it: URL, instances, load, limits, replica digest); a branch not
heard from for a few beats is offline, one that says goodbye has left.
L{Presence} keeps what the beats said of every other branch and tells its
subscribers whenever one of them changed.
"""

import os

import attrs
from twisted.logger import Logger

from cyme import __version__, logs
from cyme.listeners import Listeners

#: The bus protocol of this cyme: what every envelope it sends says.  Two
#: branches of different protocols know of each other and do nothing else.
PROTOCOL_VERSION = 2


def load_figures(instances):
    """What a heartbeat says of this machine's load."""
    figures = {"instances": instances}
    try:
        figures["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    figures["mem_available"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return figures


def full(limits, count, max_concurrency=1):
    """
    The name of the limit of C{limits} (a branch's C{max_instances} and
    C{max_concurrency}) that keeps a branch with C{count} instances from
    taking another one of C{max_concurrency}, or None if none does; a
    branch that did not say its limits is taken to have none.
    """
    limit = limits.get("max_instances")
    if isinstance(limit, int) and count >= limit:
        return "max_instances"
    cap = limits.get("max_concurrency")
    if isinstance(cap, int) and max_concurrency > cap:
        return "max_concurrency"
    return None


@attrs.define
class BeatContents:
    """
    What this branch says of itself in each heartbeat.

    Needs no bus: the store (instances, replica digest), the URL others
    reach this branch's API at, C{load_figures(instance_count)}, the
    load of this machine as a dict, and C{limits}, what placement needs to
    know of this branch's own (C{max_instances}, C{max_concurrency}).
    """

    store: object
    url: str | None
    load_figures: object = load_figures
    limits: dict = attrs.field(factory=dict)

    def __call__(self):
        instances = self.store.instances()
        return {
            "url": self.url,
            "instances": [[i.app, i.name] for i in instances],
            "load": self.load_figures(len(instances)),
            "limits": dict(self.limits),
            "digest": self.store.digest(),
        }


@attrs.define
class Peer:
    """What this branch knows of another one, from its heartbeats."""

    id: str
    url: str | None = None
    instances: list = attrs.field(factory=list)  # [[app, name], ...]
    load: dict = attrs.field(factory=dict)
    version: str | None = None
    started: float | None = None
    last_seen: float = 0.0
    digest: str | None = None
    online: bool = True
    #: Its C{max_instances} and C{max_concurrency}, as its beats said.
    limits: dict = attrs.field(factory=dict)
    #: The bus protocol its envelopes say: another than this branch's
    #: makes it a stranger to the cluster (never live, never called).
    protocol: int = PROTOCOL_VERSION

    @property
    def compatible(self):
        return self.protocol == PROTOCOL_VERSION

    def room(self, max_concurrency=1):
        """The limit that keeps it from taking another instance, or None."""
        return full(self.limits, len(self.instances), max_concurrency)

    def to_json(self, now):
        return {
            "id": self.id,
            "url": self.url,
            "instances": [name for _, name in self.instances],
            "load": self.load,
            "limits": self.limits,
            "version": self.version,
            "uptime": None if self.started is None else max(0.0, now - self.started),
            "last_heartbeat": self.last_seen,
            "online": self.online,
            "protocol": self.protocol,
        }


class Presence:
    """
    The other branches by id, online or not.

    A peer is offline once C{expiry} seconds passed without a beat from it
    (checked on every look at the live ones, and by the bus at each beat).
    A branch whose beats say another bus protocol is kept apart: known by
    its id and version (L{others}), never among the live or known peers.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, clock, expiry):
        self.clock = clock
        self.expiry = expiry
        self._peers = {}
        self._others = {}
        self._versions_said = set()
        self._listeners = Listeners("peer")

    def subscribe(self, listener):
        """Call C{listener(peer)} whenever a peer was seen, expired or left."""
        self._listeners.add(listener)

    def get(self, branch_id):
        """The L{Peer} of C{branch_id} (of any protocol), or None if never heard of."""
        other = self._others.get(branch_id)
        if other is not None and other.online:
            return other
        return self._peers.get(branch_id) or other

    def known(self):
        """Every peer of this protocol ever heard of, online or not."""
        return list(self._peers.values())

    def live(self):
        """The peers heard from recently."""
        self.expire()
        return [p for p in self._peers.values() if p.online]

    def others(self):
        """The branches heard of that speak another bus protocol."""
        self.expire()
        return list(self._others.values())

    def by_state(self):
        """
        How many other branches are C{online}, C{offline}, or
        C{incompatible}: online but speaking another bus protocol.
        """
        self.expire()
        states = {p.id: "online" if p.online else "offline" for p in self._peers.values()}
        for peer in self._others.values():
            if peer.online:
                states[peer.id] = "incompatible"
            else:
                states.setdefault(peer.id, "offline")
        counts = dict.fromkeys(("online", "offline", "incompatible"), 0)
        for state in states.values():
            counts[state] += 1
        return counts

    def seen(self, sender, beat):
        """A heartbeat arrived from C{sender}: C{beat}, its checked fields."""
        self._others.pop(sender, None)
        peer = self._peers.get(sender)
        was_online = peer is not None and peer.online
        if peer is None:
            peer = self._peers[sender] = Peer(sender)
        peer.url = beat["url"]
        peer.instances = [list(i) for i in beat["instances"]]
        peer.load = beat["load"]
        peer.version = beat["version"]
        peer.started = beat["started"]
        peer.digest = beat["digest"]
        peer.limits = beat["limits"]
        peer.last_seen = self.clock.seconds()
        peer.online = True
        if not was_online:
            self.log.info("branch {peer} is online ({url})", peer=sender, url=peer.url)
        self._say_version(peer)
        self._listeners.notify(peer)

    def other(self, sender, protocol, version):
        """
        A heartbeat of bus protocol C{protocol} (another than this
        branch's) came from C{sender}, running cyme C{version}.
        """
        # Upgraded (or downgraded) in place: gone from the cluster, and
        # what it last announced stays listed, offline.
        self.left(sender)
        peer = self._others.get(sender)
        if peer is None:
            peer = self._others[sender] = Peer(sender, protocol=protocol)
        peer.protocol, peer.version = protocol, version
        peer.last_seen = self.clock.seconds()
        peer.online = True
        self._say_version(peer)

    def _say_version(self, peer):
        """Log once that C{peer} runs another cyme than this one."""
        said = (peer.id, peer.version, peer.protocol)
        if (peer.version == __version__ and peer.compatible) or said in self._versions_said:
            return
        self._versions_said.add(said)
        if peer.compatible:
            self.log.warn("branch {peer} runs cyme {version}, this one {ours}: upgrade "
                          "every branch to one version (README: Upgrading a cluster)",
                          peer=peer.id, version=peer.version, ours=__version__)
        else:
            self.log.warn(
                "branch {peer} speaks bus protocol {protocol} (cyme {version}), this one "
                "{our_protocol} (cyme {ours}): they ignore each other until both run one "
                "version (README: Upgrading a cluster)", peer=peer.id,
                protocol=peer.protocol, version=peer.version,
                our_protocol=PROTOCOL_VERSION, ours=__version__,
            )

    def left(self, sender):
        """C{sender} said goodbye."""
        peer = self._peers.get(sender)
        if peer is not None and peer.online:
            peer.online = False
            self.log.info("branch {peer} left", peer=sender)
            self._listeners.notify(peer)

    def expire(self):
        """Mark offline the peers silent for longer than the expiry."""
        now = self.clock.seconds()
        for peer in self._peers.values():
            if peer.online and now - peer.last_seen > self.expiry:
                peer.online = False
                self.log.warn(
                    "branch {peer} is offline (no heartbeat for {seconds:.1f} s)",
                    peer=peer.id, seconds=now - peer.last_seen,
                )
                self._listeners.notify(peer)
        for peer in self._others.values():
            if peer.online and now - peer.last_seen > self.expiry:
                peer.online = False
