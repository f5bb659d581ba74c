"""Presence: which branches are there, and what each said of itself.

Every branch describes itself in a record (L{BeatContents}: URL,
instances, load, limits) under an incarnation number it alone raises
(when its record changes, or to refute a suspicion of its death).  What
others say of it travels as records too: C{alive}, C{suspect}, C{dead}
or C{left}, each at an incarnation.  L{Presence} keeps the newest record
of every other branch by the rules of SWIM (a newer incarnation wins; at
the same one, suspect beats alive and dead beats both; the failure
detector is L{cyme.cluster.membership}) and tells its subscribers
whenever a peer changed.
"""

import os

import attrs
from twisted.logger import Logger, LogLevel

from cyme import __version__, logs
from cyme.listeners import Listeners

#: The bus protocol of this cyme: what every envelope it sends says.  Two
#: branches of different protocols know of each other and do nothing else.
PROTOCOL_VERSION = 3

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATUSES = (ALIVE, SUSPECT, DEAD, LEFT)
#: What a record of a branch that is alive says of it (its beat's contents).
CONTENTS = ("url", "instances", "load", "limits", "version", "started")


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
    """What this branch knows of another one, from its records."""

    id: str
    url: str | None = None
    instances: list = attrs.field(factory=list)  # [[app, name], ...]
    load: dict = attrs.field(factory=dict)
    version: str | None = None
    started: float | None = None
    #: When this branch last heard from it directly (or of a change of it).
    last_seen: float = 0.0
    digest: str | None = None
    #: C{alive}, C{suspect} (online still, a probe of it failed), C{dead} or C{left}.
    status: str = ALIVE
    incarnation: int = 0
    #: Since when it has its status.
    since: float = 0.0
    #: Its C{max_instances} and C{max_concurrency}, as its records said.
    limits: dict = attrs.field(factory=dict)
    #: The bus protocol its envelopes say: another than this branch's
    #: makes it a stranger to the cluster (never live, never called).
    protocol: int = PROTOCOL_VERSION

    @property
    def online(self):
        return self.status in (ALIVE, SUSPECT)

    @property
    def compatible(self):
        return self.protocol == PROTOCOL_VERSION

    def room(self, max_concurrency=1):
        """The limit that keeps it from taking another instance, or None."""
        return full(self.limits, len(self.instances), max_concurrency)

    def record(self):
        """What this branch passes on of it (L{cyme.cluster.messages.record})."""
        said = {"id": self.id, "inc": self.incarnation, "status": self.status}
        if self.status == ALIVE:
            said.update(url=self.url, instances=self.instances, load=self.load,
                        limits=self.limits, version=self.version, started=self.started)
        return said

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
            "status": self.status,
            "protocol": self.protocol,
        }


def supersedes(status, inc, peer, now, grace):
    """
    Whether a record saying C{status} at incarnation C{inc} replaces what
    C{peer} holds (SWIM's order, and a death older than C{grace} seconds
    that an alive record of the same incarnation may undo: the record
    comes from a side of a partition that healed).
    """
    if status == ALIVE:
        return inc > peer.incarnation or (
            inc == peer.incarnation and peer.status == DEAD and now - peer.since >= grace)
    if status == SUSPECT:
        return inc > peer.incarnation or (inc == peer.incarnation and peer.status == ALIVE)
    if peer.status in (DEAD, LEFT):
        return inc > peer.incarnation or (status == LEFT and peer.status == DEAD
                                         and inc == peer.incarnation)
    return inc >= peer.incarnation


class Presence:
    """
    The other branches by id, online or not.

    C{grace}: how old a death must be before an alive record of the same
    incarnation undoes it (L{supersedes}).  A branch whose envelopes say
    another bus protocol is kept apart: known by its id and version
    (L{others}), never among the live or known peers, and forgotten as
    such once silent for C{expiry} seconds.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, clock, grace=20.0, expiry=30.0):
        self.clock = clock
        self.grace = grace
        self.expiry = expiry
        self._peers = {}
        self._online = {}  # the online peers by id (in the order they came online)
        self._dead = {}  # the peers found dead (not those that left), by id
        self._others = {}
        self._versions_said = set()
        self._listeners = Listeners("peer")

    def subscribe(self, listener):
        """Call C{listener(peer)} whenever a peer was seen, changed, went offline or left."""
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
        """The peers alive or suspected (not yet found dead)."""
        return list(self._online.values())

    def dead(self):
        """The ids of the peers found dead (not those that left)."""
        return list(self._dead)

    def count(self):
        """How many peers are alive or suspected."""
        return len(self._online)

    def _set(self, peer, status, now):
        """C{peer} has C{status} from C{now} on."""
        peer.status, peer.since = status, now
        if peer.online:
            self._online[peer.id] = peer
        else:
            self._online.pop(peer.id, None)
        if status == DEAD:
            self._dead[peer.id] = peer
        else:
            self._dead.pop(peer.id, None)

    def others(self):
        """The branches heard of that speak another bus protocol."""
        self._expire_others()
        return list(self._others.values())

    def by_state(self):
        """
        How many other branches are C{online}, C{offline}, or
        C{incompatible}: online but speaking another bus protocol.
        """
        self._expire_others()
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

    def apply(self, record, direct=False):
        """
        A record (checked: L{cyme.cluster.messages.record}) of another
        branch, from itself if C{direct}: whether it changed what this
        branch knows (and so is worth passing on).
        """
        now = self.clock.seconds()
        sender, status, inc = record["id"], record["status"], record["inc"]
        self._others.pop(sender, None)
        peer = self._peers.get(sender)
        if peer is None:
            peer = self._peers[sender] = Peer(sender, status=None, incarnation=inc)
            was = None
        elif supersedes(status, inc, peer, now, self.grace):
            was = peer.status
        else:
            return False
        peer.incarnation = inc
        if status == ALIVE:
            for field in CONTENTS:
                setattr(peer, field, record[field])
            peer.instances = [list(i) for i in record["instances"]]
            peer.last_seen = now
        if was != status:
            self._set(peer, status, now)
            # Its digest, as it last said it, may be long gone: replication
            # waits for the next message from it to compare.
            peer.digest = None
            self._said(peer, was)
        if direct and "digest" in record:
            # Said by itself, with its replica digest: as good as heard.
            peer.last_seen, peer.digest = now, record["digest"]
        if direct or status == ALIVE:
            self._say_version(peer)
        self._listeners.notify(peer)
        return True

    def heard(self, sender, digest):
        """
        A message came from C{sender} itself, its replica digest
        C{digest}: it lives (whatever was said of it meanwhile: the
        record that says so follows), and the replicas may differ.
        """
        peer = self._peers.get(sender)
        if peer is None:
            return None
        peer.last_seen = self.clock.seconds()
        peer.digest = digest
        if peer.status == DEAD:
            self._set(peer, ALIVE, peer.last_seen)
            self._said(peer, DEAD)
        self._listeners.notify(peer)
        return peer

    def _said(self, peer, was):
        if peer.status != DEAD and not logs.enabled(LogLevel.info):
            return  # a line per branch of hundreds, for nothing
        if peer.status == ALIVE and was != SUSPECT:
            self.log.info("branch {peer} is online ({url})", peer=peer.id, url=peer.url)
        elif peer.status == SUSPECT:
            self.log.info("branch {peer} is suspected: a probe of it failed", peer=peer.id)
        elif peer.status == DEAD and was is not None:
            self.log.warn("branch {peer} is offline (probes of it failed)", peer=peer.id)
        elif peer.status == LEFT and was is not None:
            self.log.info("branch {peer} left", peer=peer.id)

    def other(self, sender, protocol, version):
        """
        A message of bus protocol C{protocol} (another than this
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
        peer.status = ALIVE
        self._say_version(peer)

    def _say_version(self, peer):
        """Log once that C{peer} runs another cyme than this one."""
        said = (peer.id, peer.version, peer.protocol)
        ours = peer.version in (None, __version__) and peer.compatible
        if ours or said in self._versions_said:
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
            self._set(peer, LEFT, self.clock.seconds())
            self._said(peer, ALIVE)
            self._listeners.notify(peer)

    def _expire_others(self):
        now = self.clock.seconds()
        for peer in self._others.values():
            if peer.online and now - peer.last_seen > self.expiry:
                peer.status = DEAD
