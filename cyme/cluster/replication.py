"""Apps, queue declarations and API tokens on every branch: replicate,
merge, catch up.

Every branch keeps every app, queue declaration and token in its store, with a
version per record (last writer wins, ties by branch id: see
L{cyme.state.store.MemoryStore.merge}).  A write is applied on the branch
that took it, then sent to every live branch (L{Replication.replicate})
before it is answered.  A branch that was away catches up from a peer whose
heartbeat shows a different replica digest: it pulls the peer's replica,
and the peer, seeing this branch's new digest, pulls from it.

Every replica that comes over the bus is checked record by record first
(L{cyme.state.replica.Replica}): a record that is not valid, or is stored
under another name, is refused and logged, never stored.  A peer whose
replica still differs after a pull (it holds records this branch refuses,
or the other way round) is not pulled from again until either digest
changes: branches of different versions do not pull each other's
replicas at every heartbeat.

A merge that changed the store is logged here; what follows from the
change (the supervisor's reconcile, a heartbeat) follows from the store's
own change event.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger

from cyme import logs
from cyme.errors import BadRequest
from cyme.state.replica import Replica

from .messages import BadMessage


class Replication:
    """The replica of this branch's C{store}, kept in step over C{bus}."""

    log = Logger(observer=logs.observer)

    def __init__(self, store, bus, call_timeout=5.0, write_timeout=5.0):
        self.store = store
        self.bus = bus
        self.call_timeout = call_timeout
        self.write_timeout = write_timeout
        self._pulling = set()
        #: Peer id -> (its digest, ours) when we last pulled from it.
        self._pulled = {}
        #: Replicas merged since the start, by C{(source, outcome)}: a
        #: peer's C{"write"} or this branch's C{"catch_up"}, which
        #: C{"changed"} the store or not (C{"unchanged"}).
        self.merges = collections.Counter()

    def handlers(self):
        """The bus methods other branches call on this one."""
        return {"replica.merge": self._merge, "replica.dump": self._dump}

    def _dump(self, args, sender):
        return self.store.replica()

    def _checked(self, data, sender, how):
        """The L{Replica} in C{data}; what it refused is logged, never stored."""
        try:
            replica = Replica.from_json(data)
        except BadRequest as e:
            raise BadMessage("replica", e.message) from None
        for key, why in replica.refused:
            self.log.warn("{how} from {peer}: record {key} refused: {why}",
                          how=how, peer=sender, key=key, why=why)
        return replica

    def _merge(self, args, sender):
        replica = self._checked(args.get("replica"), sender, "replica.merge")
        before = self.store.digest()
        removed = self.store.merge(replica)
        changed = self._merged("write", before)
        # Not for what this branch knew already (its own writes come back
        # to it too): nothing to log.
        if changed:
            self.log.info(
                "replica.merge sender={sender} removed={removed}",
                sender=sender, removed=[i.name for i in removed],
            )
        return {"ok": True, "digest": self.store.digest()}

    def _merged(self, source, before):
        """Count a merge from C{source}; whether it changed the store (digest C{before})."""
        changed = self.store.digest() != before
        self.merges[source, "changed" if changed else "unchanged"] += 1
        return changed

    def peer_seen(self, peer):
        """A bus peer event: catch up with a live peer whose replica differs."""
        if not peer.online or not peer.compatible or peer.digest is None:
            return
        digests = (peer.digest, self.store.digest())
        if digests[0] == digests[1] or self._pulled.get(peer.id) == digests:
            return
        if peer.id in self._pulling:
            return
        self._pulling.add(peer.id)
        d = defer.ensureDeferred(self._pull(peer.id, peer.digest))
        d.addErrback(lambda f: self.log.warn(
            "cannot pull the replica of {peer}: {error}", peer=peer.id,
            error=f.getErrorMessage()))
        d.addBoth(lambda _: self._pulling.discard(peer.id))

    async def _pull(self, peer_id, peer_digest):
        data = await self.bus.call(peer_id, "replica.dump", {}, self.call_timeout)
        replica = self._checked(data, peer_id, "replica.pull")
        before = self.store.digest()
        removed = self.store.merge(replica)
        self._pulled[peer_id] = (peer_digest, self.store.digest())
        if self._merged("catch_up", before):
            self.log.info("caught up with {peer}", peer=peer_id)
            self.log.info(
                "replica.pull peer={peer} removed={removed}",
                peer=peer_id, removed=[i.name for i in removed],
            )
            # The peer pulls from us in turn once it sees our new digest.
            self.bus.announce()

    async def replicate(self, *keys):
        """
        Send the records under C{keys} (or their tombstones) to every live
        branch; the ids of the branches that did not take them.
        """
        full = self.store.replica()
        part = {"apps": {}, "queues": {}, "tokens": {}, "versions": {}}
        for key in keys:
            version = full["versions"].get(key)
            if version is None:
                continue
            part["versions"][key] = version
            kind, _, rest = key.partition("/")
            if kind in ("app", "token") and rest in full[kind + "s"]:
                part[kind + "s"][rest] = full[kind + "s"][rest]
            elif kind == "queue":
                app, _, name = rest.partition("/")
                record = full["queues"].get(app, {}).get(name)
                if record is not None:
                    part["queues"].setdefault(app, {})[name] = record
        results, errors, missing = await self.bus.broadcast(
            "replica.merge", {"replica": part}, self.write_timeout
        )
        return sorted(set(missing) | set(errors) - {self.bus.branch_id})
