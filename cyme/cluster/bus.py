"""The branch bus: presence, broadcast with scatter-gather, direct calls.

Every branch has one queue on the bus broker (C{<cluster>.branch.<id>}),
bound to a fanout exchange (C{<cluster>.bus}: broadcasts) and to a direct
exchange under its id (C{<cluster>.bus.direct}: calls to it, and the
replies to its own requests).  Messages are versioned JSON envelopes::

    {"v": 1, "type": "beat" | "request" | "reply" | "bye",
     "from": <branch id>, "ticket": ..., "method": ..., "args": ..., ...}

Presence: every branch broadcasts a heartbeat every few seconds with its
id, URL, instance names, load and version; a branch not heard from for
C{expiry_beats} beats is offline; a clean stop says goodbye; a branch that
(re)connects says hello and the others answer with a beat at once.

A broadcast call completes as soon as every live branch answered (the
local branch answers itself without the network), or at its timeout with
the branches that did not answer named; a direct call to one branch
errbacks with L{GatewayTimeout} at its timeout.
"""

import json
import random
import uuid

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from cyme import __version__, logs
from cyme.amqp.private import open_inbox, setup_failed
from cyme.errors import CymeError, GatewayTimeout

PROTOCOL_VERSION = 1


class IBusTransport(Interface):
    """Carries bus envelopes between branches."""

    connected = Attribute("True while messages can be sent.")

    def start(deliver, connection_changed):
        """Begin: C{deliver(envelope)} per message, C{connection_changed(bool)}."""

    def broadcast(envelope):
        """Send C{envelope} (a dict) to every branch, this one included."""

    def send(branch_id, envelope):
        """Send C{envelope} to one branch."""

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


class _Gather:
    def __init__(self, expected):
        self.expected = set(expected)
        self.replies = {}
        self.errors = {}
        self.deferred = None
        self.timer = None

    def done(self):
        return not (self.expected - set(self.replies) - set(self.errors))


class Bus(service.Service):
    """
    Presence and calls between branches.

    C{describe()} returns this branch's own beat contents: C{url},
    C{instances} (C{[[app, name], ...]}), C{load}, C{digest}.  C{handlers}
    maps a method name to C{f(args, sender)} returning a JSON value (or a
    Deferred/coroutine of one), raising L{CymeError} for an error reply.
    """

    log = Logger(observer=logs.observer)
    name = "bus"

    def __init__(self, transport, branch_id, clock, describe, handlers=None,
                 beat_interval=2.0, expiry_beats=3, rng=random.random):
        self.transport = transport
        self.branch_id = branch_id
        self.clock = clock
        self.describe = describe
        self.handlers = dict(handlers or {})
        self.beat_interval = beat_interval
        self.expiry = beat_interval * expiry_beats
        self.rng = rng
        self.peers = {}
        self.started = None
        self.peer_listeners = []
        self._pending = {}
        self._beat_loop = None
        self._announce_call = None

    # Service

    def startService(self):
        super().startService()
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
                self.transport.broadcast(self._envelope("bye"))
            except Exception:
                self.log.failure("cannot say goodbye")
        for ticket in list(self._pending):
            self._finish(ticket)
        return self.transport.stop()

    # Presence

    def _envelope(self, kind, **fields):
        return {"v": PROTOCOL_VERSION, "type": kind, "from": self.branch_id, **fields}

    def _beat_envelope(self, hello=False):
        info = self.describe()
        return self._envelope(
            "beat", hello=hello, url=info.get("url"), instances=info.get("instances", []),
            load=info.get("load", {}), digest=info.get("digest"), version=__version__,
            started=self.started,
        )

    def _beat(self):
        try:
            self._expire()
            if self.transport.connected:
                self.transport.broadcast(self._beat_envelope())
        except Exception:
            self.log.failure("heartbeat failed")

    def announce_soon(self):
        """Send a heartbeat on the next turn (many changes, one beat)."""
        if self._announce_call is None or not self._announce_call.active():
            self._announce_call = self.clock.callLater(0, self.announce)

    def announce(self):
        """Send a heartbeat now (after a change others should see at once)."""
        if self.running and self.transport.connected:
            try:
                self.transport.broadcast(self._beat_envelope())
            except Exception:
                self.log.failure("heartbeat failed")

    def _connection_changed(self, connected):
        if connected and self.running:
            self.log.info("bus connected: saying hello as {branch}", branch=self.branch_id)
            self.transport.broadcast(self._beat_envelope(hello=True))

    def _expire(self):
        now = self.clock.seconds()
        for peer in self.peers.values():
            if peer.online and now - peer.last_seen > self.expiry:
                peer.online = False
                self.log.warn(
                    "branch {peer} is offline (no heartbeat for {seconds:.1f} s)",
                    peer=peer.id, seconds=now - peer.last_seen,
                )
                self._peer_changed(peer)

    def _peer_changed(self, peer):
        for listener in list(self.peer_listeners):
            try:
                listener(peer)
            except Exception:
                self.log.failure("peer listener failed")

    def _seen(self, envelope):
        sender = envelope["from"]
        peer = self.peers.get(sender)
        was_online = peer is not None and peer.online
        if peer is None:
            peer = self.peers[sender] = Peer(sender)
        peer.url = envelope.get("url")
        peer.instances = [list(i) for i in envelope.get("instances") or []]
        peer.load = envelope.get("load") or {}
        peer.version = envelope.get("version")
        peer.started = envelope.get("started")
        peer.digest = envelope.get("digest")
        peer.last_seen = self.clock.seconds()
        peer.online = True
        if not was_online:
            self.log.info("branch {peer} is online ({url})", peer=sender, url=peer.url)
        self._peer_changed(peer)
        if envelope.get("hello"):
            # A branch (re)joined: answer with our beat, to it alone.
            self.transport.send(sender, self._beat_envelope())

    def live_peers(self):
        """The other branches heard from recently."""
        self._expire()
        return [p for p in self.peers.values() if p.online]

    def live_ids(self):
        return sorted([self.branch_id] + [p.id for p in self.live_peers()])

    # Receiving

    def _deliver(self, envelope):
        try:
            self._dispatch(envelope)
        except Exception:
            self.log.failure("bad bus message {envelope!r}", envelope=envelope)

    def _dispatch(self, envelope):
        if not isinstance(envelope, dict) or "from" not in envelope:
            return
        sender = envelope["from"]
        kind = envelope.get("type")
        if envelope.get("v") != PROTOCOL_VERSION:
            if kind == "request" and sender != self.branch_id:
                self._reply(envelope, error=(400, {
                    "error": f"bus protocol version {envelope.get('v')!r} not supported",
                }))
            return
        if sender == self.branch_id:
            return  # our own broadcast: answered locally already
        if kind == "beat":
            self._seen(envelope)
        elif kind == "bye":
            peer = self.peers.get(sender)
            if peer is not None and peer.online:
                peer.online = False
                self.log.info("branch {peer} left", peer=sender)
                self._peer_changed(peer)
        elif kind == "request":
            self._handle(envelope)
        elif kind == "reply":
            self._collect(envelope)

    def _handle(self, envelope):
        method = envelope.get("method")
        handler = self.handlers.get(method)
        if handler is None:
            self._reply(envelope, error=(400, {"error": f"unknown bus method {method!r}"}))
            return
        d = defer.maybeDeferred(handler, envelope.get("args") or {}, envelope["from"])
        d.addCallbacks(
            lambda result: self._reply(envelope, result=result),
            lambda failure: self._reply(envelope, error=self._error_of(failure, method)),
        )

    def _error_of(self, failure, method):
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
            self.transport.send(envelope["from"], reply)

    def _collect(self, envelope):
        gather = self._pending.get(envelope.get("ticket"))
        if gather is None:
            return
        sender = envelope["from"]
        if "error" in envelope:
            gather.errors[sender] = RemoteError(envelope.get("status", 500), envelope["error"])
        else:
            gather.replies[sender] = envelope.get("result")
        if gather.done():
            self._finish(envelope["ticket"])

    def _finish(self, ticket):
        gather = self._pending.pop(ticket, None)
        if gather is None:
            return
        if gather.timer is not None and gather.timer.active():
            gather.timer.cancel()
        gather.deferred.callback(gather)

    # Calling

    def _local(self, method, args):
        handler = self.handlers.get(method)
        if handler is None:
            return defer.fail(RemoteError(400, {"error": f"unknown bus method {method!r}"}))
        return defer.maybeDeferred(handler, args, self.branch_id)

    def _send_request(self, targets, method, args, timeout, to=None):
        ticket = uuid.uuid4().hex
        gather = _Gather(targets)
        gather.deferred = defer.Deferred(lambda _: self._pending.pop(ticket, None))
        self._pending[ticket] = gather
        gather.timer = self.clock.callLater(timeout, self._finish, ticket)
        envelope = self._envelope("request", ticket=ticket, method=method, args=args)
        if to is None:
            self.transport.broadcast(envelope)
        else:
            self.transport.send(to, envelope)
        return gather.deferred

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
            gather = await self._send_request(others, method, args, timeout)
            results.update(gather.replies)
            errors.update(gather.errors)
            missing = sorted(set(others) - set(gather.replies) - set(gather.errors))
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
        gather = await self._send_request([branch_id], method, args, timeout, to=branch_id)
        if branch_id in gather.errors:
            raise gather.errors[branch_id]
        if branch_id not in gather.replies:
            raise GatewayTimeout(
                f"branch {branch_id} did not answer within {timeout:g} s", branch=branch_id
            )
        return gather.replies[branch_id]


def encode(envelope):
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def decode(body):
    return json.loads(body)


@implementer(IBusTransport)
class AMQPBusTransport:
    """The bus over RabbitMQ, through the branch's AMQP client."""

    log = Logger(observer=logs.observer)

    def __init__(self, client, branch_id, cluster="cyme"):
        # Names under the cluster's name: several clusters share a broker.
        self.client = client
        self.branch_id = branch_id
        self.broadcast_exchange = f"{cluster}.bus"
        self.direct_exchange = f"{cluster}.bus.direct"
        self.queue = f"{cluster}.branch.{branch_id}"
        self.connected = False
        self._channel = None
        self._deliver = None
        self._changed = None

    def start(self, deliver, connection_changed):
        self._deliver = deliver
        self._changed = connection_changed
        self.client.add_listener(self)

    def broker_connected(self, connection):
        d = defer.ensureDeferred(self._setup(connection))
        d.addErrback(self._setup_failed, connection)

    async def _setup(self, connection):
        # Exclusive: a second branch with the same id is refused by the broker.
        self._channel = await open_inbox(
            connection, self.queue,
            exchanges=[(self.broadcast_exchange, "fanout"), (self.direct_exchange, "direct")],
            bindings=[(self.broadcast_exchange, ""), (self.direct_exchange, self.branch_id)],
            on_message=self._message, timeout=10,
        )
        self.connected = True
        self._changed(True)

    def _setup_failed(self, failure, connection):
        setup_failed(
            self.log, "bus", failure, connection,
            locked=f"branch id {self.branch_id} is in use by another branch on this broker",
        )

    def broker_lost(self, reason):
        self._channel = None
        if self.connected:
            self.connected = False
            self._changed(False)

    def _message(self, message):
        try:
            envelope = decode(message.body)
        except ValueError:
            self.log.warn("undecodable bus message")
            return
        self._deliver(envelope)

    def _publish(self, exchange, routing_key, envelope):
        if self._channel is None:
            raise ConnectionError("bus not connected")
        self._channel.publish(
            exchange, routing_key, encode(envelope), content_type="application/json"
        )

    def broadcast(self, envelope):
        self._publish(self.broadcast_exchange, "", envelope)

    def send(self, branch_id, envelope):
        self._publish(self.direct_exchange, branch_id, envelope)

    def stop(self):
        self.client.remove_listener(self)
        self.connected = False
        return defer.succeed(None)


class MemoryBusNetwork:
    """
    Several branches' bus transports in one process, for tests.

    Delivery goes through the clock (C{callLater(0)}), as the network
    would, never re-entrantly; C{partition(id)} cuts a branch off.
    """

    def __init__(self, clock):
        self.clock = clock
        self.transports = {}
        self.cut = set()
        self.sent = []

    def transport(self, branch_id):
        t = MemoryBusTransport(self, branch_id)
        self.transports[branch_id] = t
        return t

    def partition(self, branch_id):
        self.cut.add(branch_id)

    def heal(self, branch_id):
        self.cut.discard(branch_id)

    def _deliver(self, sender, targets, envelope):
        self.sent.append((sender, envelope.get("type"), envelope.get("method")))
        if sender in self.cut:
            return
        body = encode(envelope)
        for target in targets:
            if target in self.cut:
                continue
            t = self.transports.get(target)
            if t is not None and t.running:
                self.clock.callLater(0, t.receive, body)


@implementer(IBusTransport)
class MemoryBusTransport:
    def __init__(self, network, branch_id):
        self.network = network
        self.branch_id = branch_id
        self.connected = False
        self.running = False
        self._deliver = None
        self._changed = None

    def start(self, deliver, connection_changed):
        self._deliver = deliver
        self._changed = connection_changed
        self.running = True
        self.connected = True
        self.network.clock.callLater(0, connection_changed, True)

    def receive(self, body):
        if self.running:
            self._deliver(decode(body))

    def broadcast(self, envelope):
        self.network._deliver(self.branch_id, list(self.network.transports), envelope)

    def send(self, branch_id, envelope):
        self.network._deliver(self.branch_id, [branch_id], envelope)

    def stop(self):
        self.running = False
        self.connected = False
        return defer.succeed(None)
