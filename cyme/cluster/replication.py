"""Apps, queue declarations and API tokens on every branch: replicate,
merge, catch up.

Every branch keeps every app, queue declaration and token in its store, with a
version per record (last writer wins, ties by branch id: see
L{cyme.state.store.MemoryStore.merge}).  A write is applied on the branch
that took it, then sent to every live branch (L{Replication.replicate})
before it is answered.  A branch that was away catches up from a peer whose
heartbeat shows a different replica digest: it pulls the peer's replica,
and the peer, seeing this branch's new digest, pulls from it.

A merge that changed the store is logged here; what follows from the
change (the supervisor's reconcile, a heartbeat) follows from the store's
own change event.
"""

from twisted.internet import defer
from twisted.logger import Logger

from cyme import logs


class Replication:
    """The replica of this branch's C{store}, kept in step over C{bus}."""

    log = Logger(observer=logs.observer)

    def __init__(self, store, bus, call_timeout=5.0, write_timeout=5.0):
        self.store = store
        self.bus = bus
        self.call_timeout = call_timeout
        self.write_timeout = write_timeout
        self._pulling = set()

    def handlers(self):
        """The bus methods other branches call on this one."""
        return {"replica.merge": self._merge, "replica.dump": self._dump}

    def _dump(self, args, sender):
        return self.store.replica()

    def _merge(self, args, sender):
        before = self.store.digest()
        removed = self.store.merge(args.get("replica") or {})
        # Not for what this branch knew already (its own writes come back
        # to it too): nothing to log.
        if self.store.digest() != before:
            self.log.info(
                "replica.merge sender={sender} removed={removed}",
                sender=sender, removed=[i.name for i in removed],
            )
        return {"ok": True, "digest": self.store.digest()}

    def peer_seen(self, peer):
        """A bus peer event: catch up with a live peer whose replica differs."""
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
