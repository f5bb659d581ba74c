"""The branch bus: presence, broadcast with scatter-gather, direct calls.

Every branch has one queue on the bus broker (C{<cluster>.branch.<id>}),
bound to a fanout exchange (C{<cluster>.bus}: broadcasts) and to a direct
exchange under its id (C{<cluster>.bus.direct}: calls to it, and the
replies to its own requests).  Messages are versioned JSON envelopes::

    {"v": 2, "type": "beat" | "request" | "reply" | "bye",
     "from": <branch id>, "ticket": ..., "method": ..., "args": ..., ...}

sealed with the cluster key on their way out and opened on their way in
(L{cyme.cluster.seal}, here and nowhere else), then checked
(L{cyme.cluster.messages}); what does not open or pass is dropped and
counted (L{cyme.cluster.drops}).  A branch whose envelopes say another
protocol version is known by its id and version, never called, and said
so in the log once.

Presence: every branch broadcasts a heartbeat every few seconds with its
id, URL, instance names, load and version; a branch not heard from for
C{expiry_beats} beats is offline; a clean stop says goodbye; a branch that
(re)connects says hello and the others answer with a beat at once.

A broadcast call completes as soon as every live branch answered (the
local branch answers itself without the network), or at its timeout with
the branches that did not answer named; a direct call to one branch
errbacks with L{GatewayTimeout} at its timeout.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from cyme import __version__, logs
from cyme.errors import CymeError, GatewayTimeout
from cyme.gather import Gatherings

from . import messages
from .drops import Drops
from .presence import PROTOCOL_VERSION, Presence
from .seal import Unopened


class IBusTransport(Interface):
    """Carries the bytes of bus envelopes between branches."""

    connected = Attribute("True while messages can be sent.")

    def start(deliver, connection_changed):
        """Begin: C{deliver(body)} per message (bytes), C{connection_changed(bool)}."""

    def broadcast(body):
        """Send C{body} (bytes) to every branch, this one included."""

    def send(branch_id, body):
        """Send C{body} (bytes) to one branch."""

    def stop():
        """Stop; a Deferred that fires once done."""


class RemoteError(CymeError):
    """An error another branch answered with: same status, same body."""

    def __init__(self, status, body):
        message = body.get("error", "error") if isinstance(body, dict) else str(body)
        super().__init__(message)
        self.status = status
        self.body = body

    def to_json(self):
        return self.body


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

    def __init__(self, transport, branch_id, clock, describe, *, seal, beat_interval=2.0,
                 expiry_beats=3):
        self.transport = transport
        self.branch_id = branch_id
        self.clock = clock
        self.describe = describe
        self.seal = seal
        self.drops = Drops(clock)
        self.beat_interval = beat_interval
        self.presence = Presence(clock, beat_interval * expiry_beats)
        self.started = None
        self._handlers = {}
        self._gatherings = Gatherings(clock)
        self._beat_loop = None
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
        self.started = self.clock.seconds()
        self.transport.start(self._deliver, self._connection_changed)
        self._beat_loop = LoopingCall(self._beat)
        self._beat_loop.clock = self.clock
        self._beat_loop.start(self.beat_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._beat_loop is not None and self._beat_loop.running:
            self._beat_loop.stop()
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
        """Seal C{envelope} and send it to C{to}, or to every branch."""
        body = self.seal.close(envelope)
        if to is None:
            self.transport.broadcast(body)
        else:
            self.transport.send(to, body)

    def _beat_envelope(self, hello=False):
        info = self.describe()
        return self._envelope(
            "beat", hello=hello, url=info.get("url"), instances=info.get("instances", []),
            load=info.get("load", {}), limits=info.get("limits", {}),
            digest=info.get("digest"), version=__version__,
            started=self.started,
        )

    def _beat(self):
        try:
            self.presence.expire()
            if self.transport.connected:
                self._post(self._beat_envelope())
        except Exception:
            self.log.failure("heartbeat failed")

    def announce_soon(self, *_event):
        """
        Send a heartbeat on the next turn (many changes, one beat).

        A listener of the store's changes: the event's arguments, if any,
        do not matter (the beat describes the state as it is then).
        """
        if self._announce_call is None or not self._announce_call.active():
            self._announce_call = self.clock.callLater(0, self.announce)

    def announce(self):
        """Send a heartbeat now (after a change others should see at once)."""
        if self.running and self.transport.connected:
            try:
                self._post(self._beat_envelope())
            except Exception:
                self.log.failure("heartbeat failed")

    def _connection_changed(self, connected):
        if connected and self.running:
            self.log.info("bus connected: saying hello as {branch}", branch=self.branch_id)
            self._post(self._beat_envelope(hello=True))

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
        if sender == self.branch_id:
            return  # our own broadcast: answered locally already
        messages.envelope(envelope)
        kind = envelope["type"]
        if kind == "beat":
            beat = messages.beat(envelope)
            self.presence.seen(sender, beat)
            if beat["hello"]:
                # A branch (re)joined: answer with our beat, to it alone.
                self._post(self._beat_envelope(), to=sender)
        elif kind == "bye":
            self.presence.left(sender)
        elif kind == "request":
            self._handle(envelope)
        elif kind == "reply":
            self._collect(envelope)

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

    def _send_request(self, targets, method, args, timeout, to=None):
        """Send a request; a Deferred of its L{cyme.gather.Gathered}."""
        ticket, gathered = self._gatherings.start(targets, timeout)
        envelope = self._envelope("request", ticket=ticket, method=method, args=args)
        try:
            self._post(envelope, to)
        except Exception:
            self._gatherings.forget(ticket)
            raise
        return gathered

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
            gathered = await self._send_request(others, method, args, timeout)
            results.update(gathered.replies)
            errors.update(gathered.errors)
            missing = gathered.missing
        else:
            missing = sorted(others)
        try:
            results[self.branch_id] = await local
        except CymeError as e:
            errors[self.branch_id] = e
        return results, errors, missing

    async def call(self, branch_id, method, args, timeout):
        """Ask one branch; its result, or its error raised here."""
        if branch_id == self.branch_id:
            return await self._local(method, args)
        if not self.transport.connected:
            raise GatewayTimeout(
                f"branch {branch_id} cannot be reached: bus not connected", branch=branch_id
            )
        gathered = await self._send_request([branch_id], method, args, timeout, to=branch_id)
        if branch_id in gathered.errors:
            raise gathered.errors[branch_id]
        if branch_id not in gathered.replies:
            raise GatewayTimeout(
                f"branch {branch_id} did not answer within {timeout:g} s", branch=branch_id
            )
        return gathered.replies[branch_id]

