"""Celery's remote control (the pidbox protocol), spoken natively over txAMQP.

A command is one JSON message to the ``celery.pidbox`` fanout exchange with
the list of destination nodes; each worker answers on
``reply.celery.pidbox`` with our routing key and the command's ticket, so
one message asks any number of workers and the replies are gathered until
all answered or the timeout (L{cyme.gather.Gatherings}).
``PidboxControl`` talks to one broker; ``ControlRouter`` sends each node's
commands to the broker of its app and says, broker by broker, which are
reachable: one broker away stops nothing on the others.  Both take their
connections from the branch's L{cyme.amqp.BrokerPool}; the router gives
back the connection of a broker none of its nodes uses any more.
"""

import json
import time
import uuid

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cyme import logs
from cyme.amqp import AMQPError
from cyme.amqp.private import open_inbox
from cyme.errors import Unavailable
from cyme.gather import Gatherings
from cyme.listeners import Listeners
from cyme.state.queues import check_options
from cyme.supervision.interfaces import IControl

PIDBOX_EXCHANGE = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"


class NotConnected(AMQPError, Unavailable):
    """
    The broker connection is down: the command was not sent.  Through the
    API a 503 (a live query while the broker is away), not a 500.
    """


def safe_url(url):
    """C{url} without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.partition(':')[0]}:**@{host}"


def _replies(gathered):
    """C{{node: reply}} of the nodes asked that answered."""
    return {n: r for n, r in gathered.replies.items() if n in gathered.expected}


def _command_arguments(method, arguments):
    # Celery resets a worker's pidbox consumer when a command raises, so
    # only well-formed arguments are ever sent.
    for key, value in arguments.items():
        if not isinstance(key, str) or isinstance(value, (set, bytes)):
            raise ValueError(f"bad argument {key!r} for {method}")
    return arguments


def merged_replies(calls):
    """
    One answer from the calls of one command to several brokers: the
    replies of all that answered; a broker out of reach adds none.
    """
    if len(calls) == 1:
        return calls[0]

    def merge(results):
        merged = {}
        for ok, replies in results:
            if ok:
                merged.update(replies)
            elif replies.check(defer.CancelledError):
                # Cancelled (the branch stops): not an empty answer.
                return replies
        return merged

    return defer.DeferredList(calls, consumeErrors=True).addCallback(merge)


@implementer(IControl)
class PidboxControl:
    """Remote control of the workers of the broker at C{url} in C{pool}."""

    log = Logger(observer=logs.observer)

    def __init__(self, pool, url, clock):
        self.url = url
        self.connected = False
        self.published = 0
        self._oid = f"cyme.{uuid.uuid4().hex}"
        self._channel = None
        self._calls = Gatherings(clock)
        self._listeners = Listeners("remote-control connection")
        self._clock_value = 0
        self._pool = pool
        self._closed = False
        self._listener = pool.on_connection(
            url, self._setup, self._lost, what="remote-control channel", log=self.log
        )

    def close(self):
        """
        No more commands: the connection goes back to the pool (closed if
        nobody else uses it); fires with whether it was closed.
        """
        self._closed = True
        channel, self._channel = self._channel, None
        # Nobody is told: whoever closes it has stopped listening.
        self.connected = False
        # The connection may stay for its other users: the channel, its
        # exclusive reply queue and consumer go now.
        self._close_channel(channel)
        return self._pool.release(self.url, self._listener)

    def _close_channel(self, channel):
        if channel is not None and channel.is_open:
            channel.close(timeout=5).addErrback(
                lambda f: self.log.info("remote-control channel not closed: {error}",
                                        error=f.getErrorMessage()))

    # The broker connection

    async def _setup(self, connection):
        # The pidbox exchanges are not durable: after a broker restart they
        # are gone until somebody declares them, with exactly Celery's flags.
        channel = await open_inbox(
            connection, self._oid,
            exchanges=[(PIDBOX_EXCHANGE, "fanout"), (REPLY_EXCHANGE, "direct")],
            bindings=[(REPLY_EXCHANGE, self._oid)],
            on_message=self._reply, timeout=10,
        )
        if self._closed:
            self._close_channel(channel)
            return
        self._channel = channel
        self._set_connected(True)

    def _lost(self, reason):
        self._channel = None
        self._set_connected(False)

    def _set_connected(self, connected):
        if connected != self.connected:
            self.connected = connected
            self._listeners.notify(connected, self.url)

    # Replies

    def _reply(self, message):
        ticket = message.headers.get("ticket")
        try:
            body = json.loads(message.body)
        except ValueError:
            self.log.warn("undecodable pidbox reply: {body!r}", body=message.body[:200])
            return
        if isinstance(body, dict):
            for node, reply in body.items():
                # A late reply (its call timed out) finds no ticket.
                self._calls.reply(ticket, node, reply)

    # IControl

    def add_connection_listener(self, listener):
        self._listeners.add(listener)

    def register(self, node, broker_url):
        """Nothing to do: this control knows only its own broker."""

    def unregister(self, node):
        """Nothing to do: this control knows only its own broker."""

    def broker(self, node):
        return self.url

    def reachable(self, node):
        return self.connected

    def call(self, method, nodes, timeout, arguments=None, reply=True):
        """
        Send C{method} to C{nodes} (one message); fire with the replies of
        those that answered within C{timeout} seconds.
        """
        nodes = sorted(set(nodes))
        if not nodes:
            return defer.succeed({})
        if self._channel is None or not self.connected:
            return defer.fail(NotConnected(f"cannot send {method}: broker not connected"))
        arguments = _command_arguments(method, arguments or {})
        ticket = str(uuid.uuid4())
        self._clock_value += 1
        body = {
            "method": method,
            "arguments": arguments,
            "destination": nodes,
            "pattern": None,
            "matcher": None,
            "ticket": ticket,
            "reply_to": (
                {"exchange": REPLY_EXCHANGE, "routing_key": self._oid} if reply else None
            ),
        }
        headers = {"clock": self._clock_value}
        if timeout is not None:
            # A worker that reads the command later (it was stopped) drops it.
            headers["expires"] = time.time() + max(timeout, 1.0)
        if reply:
            _, gathered = self._calls.start(nodes, timeout, ticket)
        try:
            self._channel.publish(
                PIDBOX_EXCHANGE, "", json.dumps(body).encode("utf-8"),
                content_type="application/json", content_encoding="utf-8",
                headers=headers,
            )
        except Exception as e:
            self._calls.forget(ticket)
            return defer.fail(e)
        self.published += 1
        if not reply:
            return defer.succeed({})
        return gathered.addCallback(_replies)

    def ping(self, nodes, timeout):
        return self.call("ping", nodes, timeout)

    def stats(self, nodes, timeout):
        return self.call("stats", nodes, timeout)

    def active_queues(self, nodes, timeout):
        return self.call("active_queues", nodes, timeout)

    def add_consumer(self, nodes, queue, timeout):
        arguments = {
            "queue": queue.name,
            "exchange": queue.exchange,
            "exchange_type": queue.exchange_type,
            "routing_key": queue.routing_key,
        }
        arguments.update(
            {k: v for k, v in check_options(queue.options).items() if k not in arguments}
        )
        return self.call("add_consumer", nodes, timeout, arguments)

    def cancel_consumer(self, nodes, queue_name, timeout):
        return self.call("cancel_consumer", nodes, timeout, {"queue": queue_name})

    def autoscale(self, nodes, max_concurrency, min_concurrency, timeout):
        return self.call(
            "autoscale", nodes, timeout,
            {"max": int(max_concurrency), "min": int(min_concurrency)},
        )

    def shutdown(self, nodes):
        return self.call("shutdown", nodes, None, reply=False)


@implementer(IControl)
class ControlRouter:
    """
    Remote control across brokers: each node's commands go to the broker
    of its app (one message per broker per command), through the branch's
    broker C{pool}.

    The branch's own broker (C{default_url}) is always connected; another
    broker gets its control the first time a worker on it is registered,
    and loses it when the last one is unregistered.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, pool, default_url, reactor):
        self.reactor = reactor
        self.default_url = default_url
        self._pool = pool
        self._controls = {}
        self._nodes = {}
        self._published_closed = 0
        self._listeners = Listeners("remote-control connection")
        self._control(default_url)

    @property
    def connected(self):
        """Whether the branch's own broker is connected (see L{reachable})."""
        return self._controls[self.default_url].connected

    def broker(self, node):
        return self._nodes.get(node, self.default_url)

    def reachable(self, node):
        control = self._controls.get(self.broker(node))
        return control is not None and control.connected

    def brokers(self):
        """The URLs of the brokers this router holds a connection to."""
        return list(self._controls)

    @property
    def published(self):
        # A counter: the messages of the controls closed since count too.
        return self._published_closed + sum(c.published for c in self._controls.values())

    def _control(self, url):
        control = self._controls.get(url)
        if control is None:
            control = self._controls[url] = PidboxControl(self._pool, url, self.reactor)
            control.add_connection_listener(self._changed)
        return control

    def _changed(self, connected, url):
        self._listeners.notify(connected, url)

    def add_connection_listener(self, listener):
        self._listeners.add(listener)

    def register(self, node, broker_url):
        before = self._nodes.get(node)
        self._nodes[node] = broker_url
        self._control(broker_url)
        if before is not None and before != broker_url:
            self._release_unused(before)

    def unregister(self, node):
        url = self._nodes.pop(node, None)
        if url is not None:
            self._release_unused(url)

    def _release_unused(self, url):
        # The branch's own broker stays: the bus and the tasks use it.
        if url == self.default_url or url in self._nodes.values():
            return
        control = self._controls.pop(url, None)
        if control is not None:
            self._published_closed += control.published
            control.close().addCallbacks(
                lambda closed: self.log.info(
                    "no worker uses broker {broker} any more: {what}", broker=safe_url(url),
                    what="connection closed" if closed else "kept for the task service",
                ),
                lambda f: self.log.failure("closing a broker connection", f),
            )

    def _spread(self, nodes, send):
        groups = {}
        for node in nodes:
            groups.setdefault(self._nodes.get(node, self.default_url), []).append(node)
        return merged_replies([send(self._control(url), group)
                               for url, group in groups.items()])

    def ping(self, nodes, timeout):
        return self._spread(nodes, lambda c, n: c.ping(n, timeout))

    def stats(self, nodes, timeout):
        return self._spread(nodes, lambda c, n: c.stats(n, timeout))

    def active_queues(self, nodes, timeout):
        return self._spread(nodes, lambda c, n: c.active_queues(n, timeout))

    def add_consumer(self, nodes, queue, timeout):
        return self._spread(nodes, lambda c, n: c.add_consumer(n, queue, timeout))

    def cancel_consumer(self, nodes, queue_name, timeout):
        return self._spread(nodes, lambda c, n: c.cancel_consumer(n, queue_name, timeout))

    def autoscale(self, nodes, max_concurrency, min_concurrency, timeout):
        return self._spread(
            nodes, lambda c, n: c.autoscale(n, max_concurrency, min_concurrency, timeout)
        )

    def shutdown(self, nodes):
        return self._spread(nodes, lambda c, n: c.shutdown(n))
