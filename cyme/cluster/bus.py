"""The branch bus: presence, broadcast with scatter-gather, direct calls.

Every branch has one queue on the bus broker (C{<cluster>.branch.<id>}),
bound to a fanout exchange (C{<cluster>.bus}: broadcasts) and to a direct
exchange under its id (C{<cluster>.bus.direct}: calls to it, and the
replies to its own requests).  Messages are versioned JSON envelopes::

    {"v": 3, "type": "beat" | "ping" | "ack" | "ping-req" | "gossip" | "members"
                 | "request" | "reply" | "bye",
     "from": <branch id>, "to": <branch id> | "*", "ticket": ..., "method": ...,
     "args": ..., ...}

sealed with the cluster key on their way out and opened on their way in
(L{cyme.cluster.seal}, here and nowhere else), then checked
(L{cyme.cluster.messages}) and addressed (L{cyme.cluster.address}: for
this branch, or every one); what does not open or pass is dropped and
counted (L{cyme.cluster.drops}).  A branch whose envelopes say another
protocol version is known by its id and version, never called, and said
so in the log once.

Presence: SWIM (L{cyme.cluster.membership}); a branch broadcasts its own
record (C{beat}: id, URL, instance names, load, version) when it changes,
goodbye at a clean stop, and hello when it (re)connects.

A broadcast call completes as soon as every live branch answered (the
local branch answers itself without the network), or at its timeout with
the branches that did not answer named; a direct call to one branch
errbacks with L{GatewayTimeout} at its timeout.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from cyme import logs
from cyme.errors import CymeError, GatewayTimeout, RemoteError
from cyme.gather import Gatherings

from . import address, messages
from .drops import Drops
from .membership import Membership
from .presence import ALIVE, CONTENTS, PROTOCOL_VERSION, Presence
from .address import STALE
from .seal import Unopened


#: The probes of membership, and the method of L{Membership} each goes to.
_PROBES = {"ping": "pinged", "ack": "acked", "ping-req": "asked"}


class Bus(service.Service):
    """
    Presence and calls between branches.

    C{describe()} returns this branch's own beat contents: C{url},
    C{instances} (C{[[app, name], ...]}), C{load}, C{limits}, C{digest} (see
    L{cyme.cluster.presence.BeatContents}).  C{seal} (an
    L{cyme.cluster.seal.ISeal}) turns envelopes into bytes and back.  The
    methods other branches may call are added with L{register}; peer events
    go to the listeners added with L{subscribe}.
    """

    log = Logger(observer=logs.observer)
    name = "bus"

    def __init__(self, transport, branch_id, clock, describe, *, seal, digest=None,
                 rng=None, probe_interval=1.0, probe_timeout=0.5, suspicion=4.0,
                 table_sync=30.0):
        self.transport = transport
        self.branch_id = branch_id
        self.clock = clock
        self.describe = describe
        self.seal = seal
        self.drops = Drops(clock)
        # An alive record of a branch undoes an old death of the same
        # incarnation: it comes from the other side of a healed partition.
        self.presence = Presence(clock, grace=2 * suspicion * probe_interval)
        self.membership = Membership(
            branch_id, clock, self.presence, describe,
            digest if digest is not None else lambda: describe().get("digest"),
            self._send, lambda: self.transport.connected, rng=rng,
            interval=probe_interval, timeout=probe_timeout, suspicion=suspicion,
            sync=table_sync,
        )
        self.started = self.connected_since = None
        self._handlers = {}
        self._gatherings = Gatherings(clock)
        self._announce_call = None

    def register(self, handlers):
        """
        Answer the bus methods of C{handlers}: a dict of method name to
        C{f(args, sender)} returning a JSON value (or a Deferred/coroutine
        of one), raising L{CymeError} for an error reply.
        """
        taken = set(handlers) & set(self._handlers)
        if taken:
            raise ValueError(f"bus methods registered twice: {', '.join(sorted(taken))}")
        self._handlers.update(handlers)

    def subscribe(self, listener):
        """Call C{listener(peer)} whenever a peer was seen, went offline or left."""
        self.presence.subscribe(listener)

    # Service

    def startService(self):
        super().startService()
        if self.seal.sealed:
            self.log.info("bus sealed with the cluster key in {path}", path=self.seal.source)
        else:
            self.log.warn(
                "the bus is OPEN (--insecure-open-bus): anyone who can publish on this "
                "cluster's bus exchanges on its broker can read every app's broker "
                "password and create, change or delete apps and instances on every branch"
            )
        self.started = self.connected_since = self.clock.seconds()
        self.membership.start(self.started)
        self.transport.start(self._deliver, self._connection_changed)

    def stopService(self):
        super().stopService()
        self.membership.stop()
        if self._announce_call is not None and self._announce_call.active():
            self._announce_call.cancel()
        if self.transport.connected:
            try:
                self._post(self._envelope("bye"))
            except Exception:
                self.log.failure("cannot say goodbye")
        self._gatherings.finish_all()
        return self.transport.stop()

    # Presence

    def _envelope(self, kind, **fields):
        return {"v": PROTOCOL_VERSION, "type": kind, "from": self.branch_id, **fields}

    def _post(self, envelope, to=None):
        """Seal C{envelope} for C{to} (a branch id), or every branch, and send it."""
        peer = self.presence.get(to) if to is not None else None
        body = self.seal.close(address.address(
            envelope, to, peer.incarnation if peer is not None else None))
        if to is None:
            self.transport.broadcast(body)
        else:
            self.transport.send(to, body)

    def _send(self, kind, to, **fields):
        """Membership's messages: sent while connected, else not at all."""
        if self.transport.connected:
            self._post(self._envelope(kind, **fields), to)

    def announce_soon(self, *_event):
        """
        Announce this branch's record on the next turn, if it changed
        (many changes, one beat).

        A listener of the store's changes: the event's arguments, if any,
        do not matter (the beat describes the state as it is then).
        """
        if self._announce_call is None or not self._announce_call.active():
            self._announce_call = self.clock.callLater(0, self.announce)

    def announce(self):
        """Broadcast this branch's record now if it changed (others see it at once)."""
        if self.running and self.transport.connected:
            try:
                self.membership.announce()
            except Exception:
                self.log.failure("announcing this branch failed")

    def _connection_changed(self, connected):
        if connected and self.running:
            self.connected_since = self.clock.seconds()
            self.log.info("bus connected: saying hello as {branch}", branch=self.branch_id)
            self.membership.hello()

    def peer(self, branch_id):
        """What the beats of C{branch_id} said, or None if never heard of."""
        return self.presence.get(branch_id)

    def known_peers(self):
        """Every other branch ever heard of, online or not."""
        return self.presence.known()

    def live_peers(self):
        """The other branches heard from recently."""
        return self.presence.live()

    def live_ids(self):
        return sorted([self.branch_id] + [p.id for p in self.live_peers()])

    def figures(self):
        """
        What this branch's bus says of itself (its C{/branches/<id>/}
        C{"bus"}): its protocol, whether it is sealed, the messages it
        dropped by reason, and the branches heard of that speak another
        protocol version.
        """
        return {
            "protocol": PROTOCOL_VERSION,
            "sealed": self.seal.sealed,
            "dropped": self.drops.figures(),
            "other_versions": [
                {"id": p.id, "version": p.version, "protocol": p.protocol,
                 "online": p.online}
                for p in sorted(self.presence.others(), key=lambda p: p.id)
            ],
        }

    # Receiving

    def _deliver(self, body):
        try:
            envelope = self.seal.open(body)
        except Unopened as e:
            self.drops.drop(e.reason, **e.fields)
            return
        except Exception:
            self.log.failure("a bus message could not be opened")
            return
        try:
            self._dispatch(envelope)
        except messages.BadMessage as e:
            self._invalid(envelope, e)
        except Exception:
            # Named, not quoted: an envelope may carry apps and their
            # broker passwords, which no log line shows.
            self.log.failure("bad bus message ({kind} {method} from {sender})",
                             kind=envelope.get("type"), method=envelope.get("method"),
                             sender=envelope.get("from"))

    def _invalid(self, envelope, error, method=None):
        sender, kind = envelope.get("from"), envelope.get("type")
        self.drops.drop(
            "invalid", sender=sender if error.field != "from" else None,
            what=f"{kind} {method}" if method else kind if kind in messages.TYPES else "?",
            why=error.message,
        )

    def _dispatch(self, envelope):
        sender = messages.name(envelope.get("from"), "from")
        version = messages.integer(envelope.get("v"), "v", 1)
        if version != PROTOCOL_VERSION:
            self._other_protocol(envelope, sender, version)
            return
        messages.envelope(envelope)
        if not self._addressed(envelope):
            return
        if sender == self.branch_id:
            return  # our own broadcast: answered locally already
        kind = envelope["type"]
        if kind == "beat":
            self._beat(sender, messages.beat(envelope))
        elif kind in _PROBES:
            getattr(self.membership, _PROBES[kind])(sender, messages.probe(envelope))
        elif kind in ("gossip", "members"):
            said = messages.members(envelope)
            # Broadcast, or a table: every branch has it, or it is old news.
            for record in said["gossip"] + said["members"]:
                self.membership.learn(record, sender, spread=False)
            if said["want"]:
                self._send("members", sender, members=self.membership.table())
        elif kind == "bye":
            self.presence.left(sender)
        elif kind == "request":
            self._handle(envelope)
        elif kind == "reply":
            self._collect(envelope)

    def _addressed(self, envelope):
        """Whether C{envelope} is for this run of this branch; else dropped."""
        try:
            address.check(envelope, self.branch_id, self.membership.hello_incarnation,
                          self.connected_since)
        except Unopened as e:
            self.drops.drop(e.reason, **e.fields)
            if e.reason == STALE and envelope["from"] != self.branch_id:
                # A sender that missed this run's hello learns its incarnation,
                # and its request fails now rather than at its timeout.
                self._send("members", envelope["from"], members=[self.membership.own()])
                self._reply(envelope, error=(503, {
                    "error": f"branch {self.branch_id} was asked as its run before its last "
                             "start or bus reconnection", "reason": STALE}))
            return False
        return True

    def _beat(self, sender, beat):
        """A branch's own record, broadcast: on a change of it, or hello."""
        record = {k: beat[k] for k in CONTENTS}
        record.update(id=sender, inc=beat["inc"], status=ALIVE, digest=beat["digest"])
        if not self.membership.learn(record, sender, spread=False):
            self.presence.heard(sender, beat["digest"])
        if beat["hello"] and self.membership.answers_hello(sender):
            # A branch (re)joined: a few answer with the whole table, to it alone.
            self._send("members", sender, members=self.membership.table())

    def _other_protocol(self, envelope, sender, version):
        """An envelope of another protocol version: said, never acted on."""
        kind = envelope.get("type")
        if kind == "beat":
            said = envelope.get("version")
            self.presence.other(
                sender, version,
                said if isinstance(said, str) and len(said) <= 64 else None,
            )
        elif kind == "request" and isinstance(envelope.get("ticket"), str):
            self._reply(envelope, error=(400, {
                "error": f"bus protocol version {version} not supported "
                         f"(this branch speaks {PROTOCOL_VERSION})",
            }))

    def _handle(self, envelope):
        method = envelope["method"]
        handler = self._handlers.get(method)
        if handler is None:
            self._reply(envelope, error=(400, {"error": f"unknown bus method {method!r}"}))
            return
        # Arguments that are no object are a 400 to the caller, as any bad one.
        d = defer.maybeDeferred(
            lambda: handler(messages.obj(envelope.get("args", {}), "args"), envelope["from"]))
        d.addCallbacks(
            lambda result: self._reply(envelope, result=result),
            lambda failure: self._reply(envelope, error=self._error_of(failure, envelope)),
        )

    def _error_of(self, failure, envelope):
        method = envelope["method"]
        if failure.check(messages.BadMessage):
            self._invalid(envelope, failure.value, method)
        if failure.check(CymeError):
            return (failure.value.status, failure.value.to_json())
        self.log.failure("bus method {method} failed", failure, method=method)
        return (500, {"error": "internal error"})

    def _reply(self, envelope, result=None, error=None):
        reply = self._envelope("reply", ticket=envelope.get("ticket"))
        if error is not None:
            reply["status"], reply["error"] = error
        else:
            reply["result"] = result
        if self.transport.connected:
            self._post(reply, to=envelope["from"])

    def _collect(self, envelope):
        ticket, sender = envelope.get("ticket"), envelope["from"]
        if "error" in envelope:
            error = RemoteError(envelope.get("status", 500), envelope["error"])
            self._gatherings.error(ticket, sender, error)
        else:
            self._gatherings.reply(ticket, sender, envelope.get("result"))

    # Calling

    def _local(self, method, args):
        handler = self._handlers.get(method)
        if handler is None:
            return defer.fail(RemoteError(400, {"error": f"unknown bus method {method!r}"}))
        return defer.maybeDeferred(handler, args, self.branch_id)

    def _send_request(self, targets, method, args, timeout, direct):
        """
        Send a request to C{targets}, each on its own if C{direct}, else
        broadcast; a Deferred of its L{cyme.gather.Gathered}.
        """
        ticket, gathered = self._gatherings.start(targets, timeout)
        envelope = self._envelope("request", ticket=ticket, method=method, args=args)
        try:
            for to in (targets if direct else [None]):
                self._post(envelope, to)
        except Exception:
            self._gatherings.forget(ticket)
            raise
        return gathered

    async def _request(self, targets, method, args, timeout, direct):
        """
        L{_send_request}'s C{(results, errors, missing)}, asked once more of
        the branches that refused it as C{stale}: they restarted or
        reconnected since this branch last heard of them, and sent their new
        record before the refusal, so asked again it is addressed to their
        run now (without this, the first request after a restart would fail).
        """
        gathered = await self._send_request(targets, method, args, timeout, direct)
        results, errors = dict(gathered.replies), dict(gathered.errors)
        missing = list(gathered.missing)
        stale = sorted(b for b, e in errors.items()
                       if isinstance(e.body, dict) and e.body.get("reason") == STALE)
        if stale and self.transport.connected:
            for branch_id in stale:
                del errors[branch_id]
            again = await self._send_request(stale, method, args, timeout, direct=True)
            results.update(again.replies)
            errors.update(again.errors)
            missing = sorted(missing + list(again.missing))
        return results, errors, missing

    async def broadcast(self, method, args, timeout):
        """
        Ask every live branch; returns C{(results, errors, missing)}: the
        results by branch id, the L{RemoteError}s by branch id, and the ids
        of live branches that did not answer within C{timeout}.
        """
        others = [p.id for p in self.live_peers()]
        local = self._local(method, args)
        results, errors, missing = {}, {}, []
        if others and self.transport.connected:
            results, errors, missing = await self._request(
                others, method, args, timeout, direct=False)
        else:
            missing = sorted(others)
        try:
            results[self.branch_id] = await local
        except CymeError as e:
            errors[self.branch_id] = e
        return results, errors, missing

    async def ask(self, branch_ids, method, args, timeout):
        """
        Ask the branches C{branch_ids} (one message each); returns
        C{(results, errors, missing)} as L{broadcast} does.
        """
        others = sorted(set(branch_ids) - {self.branch_id})
        if not others:
            return {}, {}, []
        if not self.transport.connected:
            return {}, {}, others
        return await self._request(others, method, args, timeout, direct=True)

    async def call(self, branch_id, method, args, timeout):
        """Ask one branch; its result, or its error raised here."""
        if branch_id == self.branch_id:
            return await self._local(method, args)
        if not self.transport.connected:
            raise GatewayTimeout(
                f"branch {branch_id} cannot be reached: bus not connected", branch=branch_id
            )
        results, errors, _ = await self._request([branch_id], method, args, timeout, direct=True)
        if branch_id in errors:
            raise errors[branch_id]
        if branch_id not in results:
            raise GatewayTimeout(
                f"branch {branch_id} did not answer within {timeout:g} s", branch=branch_id
            )
        return results[branch_id]

