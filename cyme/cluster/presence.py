"""Presence: which branches are there, from their heartbeats.

Every branch broadcasts a heartbeat every few seconds (L{BeatContents}
says what goes in it: URL, instances, load, replica digest); a branch not
heard from for a few beats is offline, one that says goodbye has left.
L{Presence} keeps what the beats said of every other branch and tells its
subscribers whenever one of them changed.
"""

import os

import attrs
from twisted.logger import Logger

from cyme import logs
from cyme.listeners import Listeners


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


@attrs.define
class BeatContents:
    """
    What this branch says of itself in each heartbeat.

    Needs no bus: the store (instances, replica digest), the URL others
    reach this branch's API at, and C{load_figures(instance_count)}, the
    load of this machine as a dict.
    """

    store: object
    url: str | None
    load_figures: object = load_figures

    def __call__(self):
        instances = self.store.instances()
        return {
            "url": self.url,
            "instances": [[i.app, i.name] for i in instances],
            "load": self.load_figures(len(instances)),
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

    def to_json(self, now):
        return {
            "id": self.id,
            "url": self.url,
            "instances": [name for _, name in self.instances],
            "load": self.load,
            "version": self.version,
            "uptime": None if self.started is None else max(0.0, now - self.started),
            "last_heartbeat": self.last_seen,
            "online": self.online,
        }


class Presence:
    """
    The other branches by id, online or not.

    A peer is offline once C{expiry} seconds passed without a beat from it
    (checked on every look at the live ones, and by the bus at each beat).
    """

    log = Logger(observer=logs.observer)

    def __init__(self, clock, expiry):
        self.clock = clock
        self.expiry = expiry
        self._peers = {}
        self._listeners = Listeners("peer")

    def subscribe(self, listener):
        """Call C{listener(peer)} whenever a peer was seen, expired or left."""
        self._listeners.add(listener)

    def get(self, branch_id):
        """The L{Peer} of C{branch_id}, or None if it was never heard of."""
        return self._peers.get(branch_id)

    def known(self):
        """Every peer ever heard of, online or not."""
        return list(self._peers.values())

    def live(self):
        """The peers heard from recently."""
        self.expire()
        return [p for p in self._peers.values() if p.online]

    def seen(self, sender, beat):
        """A heartbeat C{beat} (its envelope) arrived from C{sender}."""
        peer = self._peers.get(sender)
        was_online = peer is not None and peer.online
        if peer is None:
            peer = self._peers[sender] = Peer(sender)
        peer.url = beat.get("url")
        peer.instances = [list(i) for i in beat.get("instances") or []]
        peer.load = beat.get("load") or {}
        peer.version = beat.get("version")
        peer.started = beat.get("started")
        peer.digest = beat.get("digest")
        peer.last_seen = self.clock.seconds()
        peer.online = True
        if not was_online:
            self.log.info("branch {peer} is online ({url})", peer=sender, url=peer.url)
        self._listeners.notify(peer)

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
