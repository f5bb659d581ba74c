"""Membership: failure detection at a cost that does not grow with the cluster (SWIM).

Each protocol period (1 s), a branch probes one other, in a shuffled
round over the live ones: a C{ping} that the other answers with an
C{ack}.  Without an ack within the probe timeout, it asks C{indirect}
others to probe it for it (C{ping-req}); still nothing at the end of the
period, and it suspects it: the suspicion is broadcast once, and every
branch that holds it declares the suspect dead once the suspicion
timeout passed (4 periods x log10 of the cluster's size, at least 4 s),
unless the suspect refuted it meanwhile by raising its incarnation.  So
a branch receives about two messages a period at idle whatever the
cluster's size, and a dead one is offline everywhere within a few
periods plus the suspicion timeout.

What changes travels twice: broadcast once when it happens (a branch's
own record when its instances change, a suspicion), and piggybacked on
the next probes (C{gossip}: each change a few times log10 of the size),
so that a branch that missed the broadcast learns it all the same.
Every probe and answer carries the sender's replica digest (replication
pulls when it differs) and what the sender holds of the receiver
(C{you}), so that a branch thought dead or suspected learns it and
refutes.  A branch that joins says hello; a few branches, the same for
every branch (rendezvous hashing), answer with their whole table
(C{members}).  A dead branch is pinged again once a period (one of
them), so that two sides of a partition find each other when it heals.
"""

import hashlib
import itertools
import math
import random

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import __version__, logs

from .presence import ALIVE, DEAD, SUSPECT


class Membership:
    """
    The failure detector of branch C{branch_id} over C{presence}.

    C{describe()} is this branch's own record's contents
    (L{cyme.cluster.presence.BeatContents}), C{digest()} its replica
    digest; C{send(kind, to, **fields)} posts a message to branch C{to},
    or to every branch if C{to} is None; C{connected()} says whether the
    bus is up (no probe while it is not: its silence is not the others').
    """

    log = Logger(observer=logs.observer)

    def __init__(self, branch_id, clock, presence, describe, digest, send, connected, *,
                 rng=None, interval=1.0, timeout=0.5, indirect=3, suspicion=4.0,
                 piggyback=8, retransmit=3, fanout=3, sync=30.0):
        self.branch_id = branch_id
        self.clock = clock
        self.presence = presence
        self.describe = describe
        self.digest = digest
        self.send = send
        self.connected = connected
        self.rng = rng if rng is not None else random.Random()
        self.interval = interval
        self.timeout = timeout
        self.indirect = indirect
        self.suspicion = suspicion
        self.piggyback = piggyback
        self.retransmit = retransmit
        self.fanout = fanout
        self.sync = sync
        self.incarnation = 0
        self.hello_incarnation = 0
        self.started = None
        self._said = None
        self._round = []
        self._seq = itertools.count(1)
        self._waiting = {}  # our seq -> [target, acked]
        self._relays = {}  # our seq -> (asker, its seq)
        self._suspicions = {}  # peer id -> DelayedCall of its death
        self._queue = {}  # peer id -> [record, times sent]
        self._accused = {}  # peer id -> the incarnation this branch suspected
        self._timers = set()
        self._loop = None
        self._next_sync = None

    # Running

    def start(self, started):
        self.started = started
        # A restarted branch says a newer incarnation than its last run's.
        self.incarnation = int(started * 1000)
        self.hello_incarnation = self.incarnation
        self._next_sync = self.clock.seconds() + self._sync_delay()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in [*self._suspicions.values(), *self._timers]:
            if call.active():
                call.cancel()
        self._suspicions.clear()
        self._timers.clear()

    def size(self):
        """The branches thought alive, this one included."""
        return self.presence.count() + 1

    def suspicion_timeout(self):
        return self.suspicion * max(1.0, math.log10(self.size())) * self.interval

    def _later(self, delay, f, *args):
        call = None

        def run():
            self._timers.discard(call)
            try:
                f(*args)
            except Exception:
                # A probe's timer must not end in Twisted's unhandled errors
                # (a send racing a reconnect): the next period tries again.
                self.log.failure("membership timer failed")

        call = self.clock.callLater(delay, run)
        self._timers.add(call)

    # What this branch says of itself

    def own(self):
        """This branch's record (L{cyme.cluster.messages.record})."""
        info = self.describe()
        return {"id": self.branch_id, "inc": self.incarnation, "status": ALIVE,
                "url": info.get("url"), "instances": info.get("instances", []),
                "load": info.get("load", {}), "limits": info.get("limits", {}),
                "version": __version__, "started": self.started}

    def beat(self, hello=False):
        """The fields of a C{beat}: this branch's record, said by itself."""
        record = self.own()
        self._said = _contents(record)
        del record["id"], record["status"]
        return {**record, "hello": hello, "digest": self.digest()}

    def hello(self):
        """The bus (re)connected: say so, newer than anything said of us meanwhile."""
        self.incarnation += 1
        # What a request to this branch must be addressed to from now on, at
        # least (cyme.cluster.address): all it says from now on says as much.
        self.hello_incarnation = self.incarnation
        self.send("beat", None, **self.beat(hello=True))

    def announce(self):
        """Broadcast this branch's record if what others need of it changed."""
        record = self.own()
        if self._said is None or _contents(record) == self._said:
            return  # not said hello yet (it will say it all), or nothing new
        self.incarnation += 1
        self.send("beat", None, **self.beat())
        self._enqueue(self.own())

    # Learning

    def learn(self, record, sender=None, spread=True):
        """
        A record (checked), from C{sender}; whether it changed what this
        branch knows.  Unless C{spread} is false (it came in a broadcast,
        or in a table: every branch has it, or it is old news), it is
        passed on in the next probes.
        """
        if record["id"] == self.branch_id:
            self._about_me(record, sender)
            return False
        if not self.presence.apply(record, direct=record["id"] == sender):
            return False
        if spread:
            self._enqueue(record)
        peer = self.presence.get(record["id"])
        pending = self._suspicions.pop(peer.id, None)
        if pending is not None and pending.active():
            pending.cancel()
        if peer.status == SUSPECT:
            self._suspicions[peer.id] = self.clock.callLater(
                self.suspicion_timeout(), self._dead, peer.id, peer.incarnation)
        return True

    def _about_me(self, record, sender):
        """What another branch holds of this one: refute a suspicion or a death."""
        if record["status"] == ALIVE:
            if record["inc"] > self.incarnation:
                # Others hold a newer record of this branch than it says
                # (a run before a clock stepped back): only a higher
                # incarnation makes them take what it says now.
                self.incarnation = record["inc"] + 1
                self.send("beat", None, **self.beat())
            return
        if record["inc"] < self.incarnation:
            return
        self.incarnation = record["inc"] + 1
        self.log.info("refuting that this branch is {status} (said by {sender})",
                      status=record["status"], sender=sender or "a broadcast")
        self._enqueue(self.own())
        if record["status"] == SUSPECT:
            # Every branch is counting down: tell them all at once.
            self.send("beat", None, **self.beat())
        elif sender is not None:
            # A death only the sender still holds (the two were apart):
            # tell it; the others learn it from the gossip.
            self.send("members", sender, members=[self.own()])

    def _dead(self, peer_id, inc):
        self._suspicions.pop(peer_id, None)
        # Every branch that holds the suspicion counts down alike: only
        # the one that raised it passes the death on.
        accused = self._accused.pop(peer_id, None) == inc
        self.learn({"id": peer_id, "inc": inc, "status": DEAD}, spread=accused)

    def _suspect(self, peer):
        record = {"id": peer.id, "inc": peer.incarnation, "status": SUSPECT}
        if self.learn(record):
            self._accused[peer.id] = peer.incarnation
            # Broadcast once: every branch starts its countdown now.
            self.send("gossip", None, gossip=[record])

    def heard(self, sender, fields):
        """The fields of a C{ping}, C{ack} or C{ping-req} C{sender} sent itself."""
        if self.presence.heard(sender, fields.get("digest")) is None:
            # A stranger: it says who it is, with its table.
            self.send("members", sender, members=[self.own()], want=True)
        for record in fields["gossip"]:
            self.learn(record, sender)
        if fields.get("you") is not None:
            self.learn(fields["you"], sender)

    def table(self):
        return [self.own()] + [p.record() for p in self.presence.known()]

    def answers_hello(self, newcomer):
        """
        Whether this branch is one of the few (C{fanout} of them, on
        average) that send a newcomer the table: each branch decides
        alone, by a hash of both ids, at no cost that grows with the cluster.
        """
        if self.clock.seconds() - self.started < 2 * self.interval:
            return False  # started with it, as likely as not: it knows no more
        score = hashlib.sha256(f"{newcomer}\0{self.branch_id}".encode("utf-8")).digest()
        return int.from_bytes(score[:8], "big") < min(1.0, self.fanout / self.size()) * 2**64

    # Probing

    def _tick(self):
        try:
            if not self.connected():
                return
            target = self._next()
            if target is not None:
                self._probe(target)
            if self.clock.seconds() >= self._next_sync:
                self._push_pull()
            dead = self.presence.dead()
            if dead:
                # Maybe not dead but apart: a healed partition shows here.
                self._ping(self.rng.choice(sorted(dead)), next(self._seq))
        except Exception:
            self.log.failure("membership tick failed")

    def _sync_delay(self):
        return self.sync * max(1.0, math.log10(self.size())) * self.rng.uniform(0.5, 1.5)

    def _push_pull(self):
        """
        Trade whole tables with one live branch (it answers with its own):
        a record whose broadcast a branch missed, and that its few
        piggybacks did not bring, reaches it by the next trade at the
        latest.  One trade every C{sync} x log10(size) seconds on average
        costs two messages then, whatever the cluster's size.
        """
        self._next_sync = self.clock.seconds() + self._sync_delay()
        live = sorted(p.id for p in self.presence.live())
        if live:
            self.send("members", self.rng.choice(live), members=self.table(), want=True)

    def _next(self):
        """The next branch to probe: a shuffled round over the live ones."""
        while self._round:
            candidate = self.presence.get(self._round.pop())
            if candidate is not None and candidate.online and candidate.compatible:
                return candidate.id
        live = [p.id for p in self.presence.live()]
        if not live:
            return None
        self._round = sorted(live)
        self.rng.shuffle(self._round)
        return self._round.pop()

    def _probe(self, target):
        seq = next(self._seq)
        self._waiting[seq] = [target, False]
        self._ping(target, seq)
        self._later(self.timeout, self._indirect, seq)
        self._later(2 * self.timeout, self._missed, seq)

    def _fields(self, to, seq):
        peer = self.presence.get(to)
        # What this branch holds of the receiver, if it has something to refute.
        you = peer.record() if peer is not None and peer.status != ALIVE else None
        return {"seq": seq, "digest": self.digest(), "gossip": self._gossip(), "you": you}

    def _ping(self, target, seq):
        self.send("ping", target, **self._fields(target, seq))

    def _indirect(self, seq):
        waiting = self._waiting.get(seq)
        if waiting is None or waiting[1]:
            return
        target = waiting[0]
        helpers = sorted(p.id for p in self.presence.live() if p.id != target)
        for helper in self.rng.sample(helpers, min(self.indirect, len(helpers))):
            self.send("ping-req", helper, **self._fields(helper, seq), target=target)

    def _missed(self, seq):
        target, acked = self._waiting.pop(seq, (None, True))
        if acked:
            return
        peer = self.presence.get(target)
        if peer is not None and peer.status == ALIVE:
            self._suspect(peer)

    def pinged(self, sender, fields):
        """A C{ping} from C{sender}: answer it."""
        self.heard(sender, fields)
        self.send("ack", sender, **self._fields(sender, fields["seq"]))

    def acked(self, sender, fields):
        """An C{ack} from C{sender}: of our probe, or of one we relay."""
        self.heard(sender, fields)
        seq = fields["seq"]
        if seq in self._waiting:
            self._waiting[seq][1] = True
        elif seq in self._relays:
            asker, its_seq = self._relays.pop(seq)
            self.send("ack", asker, **self._fields(asker, its_seq))

    def asked(self, sender, fields):
        """A C{ping-req} from C{sender}: probe its target for it."""
        self.heard(sender, fields)
        target = fields.get("target")
        if target is None or target == self.branch_id:
            return
        seq = next(self._seq)
        self._relays[seq] = (sender, fields["seq"])
        self._ping(target, seq)
        self._later(2 * self.timeout, self._relays.pop, seq, None)

    # Gossip

    def _enqueue(self, record):
        self._queue[record["id"]] = [record, 0]

    def _gossip(self):
        """The records to piggyback on the next message (the least sent first)."""
        if not self._queue:
            return []
        limit = self.retransmit * math.ceil(math.log10(self.size() + 1))
        chosen = sorted(self._queue.values(), key=lambda e: e[1])[: self.piggyback]
        for entry in chosen:
            entry[1] += 1
            if entry[1] >= limit:
                self._queue.pop(entry[0]["id"], None)
        return [entry[0] for entry in chosen]


def _contents(record):
    """What others need of a branch's record: a change of it is announced."""
    return (record["url"], [list(i) for i in record["instances"]], dict(record["limits"]))


__all__ = ["Membership"]
