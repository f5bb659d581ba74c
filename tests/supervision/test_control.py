"""Celery's remote control spoken natively: PidboxControl against the real
RabbitMQ and a real ``celery worker`` process.
"""

import os
import signal
import socket
import sys
import uuid

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from cyme.amqp import BrokerPool
from cyme.supervision.control import ControlRouter, NotConnected, PidboxControl
from cyme.supervision.interfaces import IControl
from cyme.state.models import Queue
from tests.vhosts import broker_url, run_vhost



def broker_reachable():
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


class WorkerProcess(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.output = []

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)


class ControlTests(TestCase):
    timeout = 60

    async def wait_for(self, predicate, timeout=15.0, step=0.05):
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            value = await defer.maybeDeferred(predicate)
            if value:
                return value
            await deferLater(reactor, step, lambda: None)
        self.fail(f"condition not met in {timeout} s")

    def start_worker(self):
        name = f"ctl-{uuid.uuid4().hex[:8]}@test"
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        argv = [
            sys.executable, "-m", "cyme.supervision.workerexec", "-A", "cyme.tasks.worker", "-b", self.broker,
            "worker", "-n", name, "-Q", f"dq.{name}", "--without-mingle",
            "--without-gossip", "--autoscale=2,1", "-l", "warning",
            "--pidfile", os.path.join(directory, "worker.pid"),
        ]
        worker = WorkerProcess()
        transport = reactor.spawnProcess(
            worker, sys.executable, argv, env=dict(os.environ), path=directory
        )

        async def stop():
            try:
                os.killpg(transport.pid, signal.SIGKILL)
            except OSError:
                pass
            await worker.ended

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return name

    def started_pool(self):
        pool = BrokerPool(reactor, connection_name="cyme test control")
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool

    async def connected_control(self):
        self.pool = self.started_pool()
        control = PidboxControl(self.pool, self.broker, reactor)
        await self.wait_for(lambda: control.connected)
        return control

    def setUp(self):
        if not broker_reachable():
            raise SkipTest("RabbitMQ is not reachable on 127.0.0.1:5672")
        # The workers' queues in the run's virtual host, not in "/".
        self.broker = broker_url(run_vhost("cyme-control"))

    @defer.inlineCallbacks
    def test_interface(self):
        control = yield defer.ensureDeferred(self.connected_control())
        self.assertTrue(verifyObject(IControl, control))

    async def _up(self):
        control = await self.connected_control()
        node = self.start_worker()

        async def pong():
            replies = await control.ping([node], 0.2)
            return replies.get(node)

        self.assertEqual(await self.wait_for(pong), {"ok": "pong"})
        return control, node

    @defer.inlineCallbacks
    def test_ping_gathers_until_timeout_for_silent_nodes(self):
        control, node = yield defer.ensureDeferred(self._up())
        before = control.published
        started = reactor.seconds()
        replies = yield control.ping([node, "nobody@nowhere"], 0.5)
        self.assertEqual(replies, {node: {"ok": "pong"}})
        self.assertGreaterEqual(reactor.seconds() - started, 0.45)
        # One message for any number of nodes.
        self.assertEqual(control.published - before, 1)

    @defer.inlineCallbacks
    def test_ping_returns_as_soon_as_all_answered(self):
        control, node = yield defer.ensureDeferred(self._up())
        started = reactor.seconds()
        replies = yield control.ping([node], 5.0)
        self.assertEqual(list(replies), [node])
        self.assertLess(reactor.seconds() - started, 1.0)

    @defer.inlineCallbacks
    def test_stats_and_autoscale(self):
        control, node = yield defer.ensureDeferred(self._up())
        stats = yield control.stats([node], 2.0)
        self.assertEqual(stats[node]["autoscaler"]["max"], 2)
        reply = yield control.autoscale([node], 3, 1, 2.0)
        self.assertIn("autoscale now max=3 min=1", reply[node]["ok"])
        stats = yield control.stats([node], 2.0)
        self.assertEqual(
            (stats[node]["autoscaler"]["max"], stats[node]["autoscaler"]["min"]), (3, 1)
        )

    @defer.inlineCallbacks
    def test_add_and_cancel_consumer(self):
        control, node = yield defer.ensureDeferred(self._up())
        queue = Queue(f"q-{uuid.uuid4().hex[:8]}", exchange="cyme-test", exchange_type="topic",
                      routing_key="a.#", options={"auto_delete": True})
        yield control.add_consumer([node], queue, 2.0)

        async def consuming(name):
            live = await control.active_queues([node], 2.0)
            return [q for q in live.get(node, []) if q["name"] == name]

        found = yield defer.ensureDeferred(self.wait_for(lambda: defer.ensureDeferred(consuming(queue.name))))
        self.assertEqual(found[0]["exchange"]["name"], "cyme-test")
        self.assertEqual(found[0]["routing_key"], "a.#")
        yield control.cancel_consumer([node], queue.name, 2.0)

        async def gone():
            return not await consuming(queue.name)

        yield defer.ensureDeferred(self.wait_for(lambda: defer.ensureDeferred(gone())))

    @defer.inlineCallbacks
    def test_not_connected_fails_at_once(self):
        control = PidboxControl(BrokerPool(reactor), self.broker, reactor)
        yield self.assertFailure(control.ping(["x@y"], 1.0), NotConnected)

    @defer.inlineCallbacks
    def test_router_sends_to_the_default_broker(self):
        router = ControlRouter(self.started_pool(), self.broker, reactor)
        self.assertTrue(verifyObject(IControl, router))
        node = self.start_worker()
        router.register(node, self.broker)
        yield defer.ensureDeferred(self.wait_for(lambda: router.connected))

        async def pong():
            return (await router.ping([node], 0.2)).get(node)

        reply = yield defer.ensureDeferred(self.wait_for(pong))
        self.assertEqual(reply, {"ok": "pong"})

    @defer.inlineCallbacks
    def test_survives_a_dropped_connection(self):
        control, node = yield defer.ensureDeferred(self._up())
        changes = []
        control.add_connection_listener(lambda connected, url: changes.append(connected))
        self.pool.client(self.broker).connection.abort()
        yield defer.ensureDeferred(self.wait_for(lambda: changes == [False, True]))

        async def pong():
            return (await control.ping([node], 0.2)).get(node)

        reply = yield defer.ensureDeferred(self.wait_for(pong))
        self.assertEqual(reply, {"ok": "pong"})


class RouterBrokerTests(TestCase):
    """The router's brokers one by one: one out of reach stops nothing."""

    timeout = 60
    setUp = ControlTests.setUp
    wait_for = ControlTests.wait_for
    start_worker = ControlTests.start_worker
    started_pool = ControlTests.started_pool

    UNREACHABLE = "amqp://me:me@w1.invalid:5672//"

    @defer.inlineCallbacks
    def test_an_unreachable_broker_leaves_the_others_working(self):
        pool = self.started_pool()
        router = ControlRouter(pool, self.broker, reactor)
        changes = []
        router.add_connection_listener(lambda connected, url: changes.append((connected, url)))
        node = self.start_worker()
        router.register(node, self.broker)
        router.register("bar@elsewhere", self.UNREACHABLE)
        yield defer.ensureDeferred(self.wait_for(lambda: router.connected))
        self.assertTrue(router.reachable(node))
        self.assertFalse(router.reachable("bar@elsewhere"))
        self.assertEqual(router.broker("bar@elsewhere"), self.UNREACHABLE)
        self.assertIn((True, self.broker), changes)

        async def pong():
            # Both nodes in one call: the reachable one answers.
            return (await router.ping([node, "bar@elsewhere"], 0.3)).get(node)

        reply = yield defer.ensureDeferred(self.wait_for(pong))
        self.assertEqual(reply, {"ok": "pong"})

    @defer.inlineCallbacks
    def test_the_connection_of_a_broker_nobody_uses_is_closed(self):
        pool = self.started_pool()
        router = ControlRouter(pool, self.broker, reactor)
        router.register("bar@elsewhere", self.UNREACHABLE)
        router.register("baz@elsewhere", self.UNREACHABLE)
        self.assertEqual(sorted(pool.urls()), sorted([self.broker, self.UNREACHABLE]))
        router.unregister("bar@elsewhere")
        self.assertIn(self.UNREACHABLE, pool.urls())
        router.unregister("baz@elsewhere")
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(pool.urls(), [self.broker])
        self.assertEqual(router.brokers(), [self.broker])
        # Its own broker stays, whoever uses it.
        router.register("foo@here", self.broker)
        router.unregister("foo@here")
        self.assertEqual(pool.urls(), [self.broker])

    def test_a_connection_someone_else_holds_stays(self):
        pool = self.started_pool()
        router = ControlRouter(pool, self.broker, reactor)
        router.register("bar@elsewhere", self.UNREACHABLE)
        pool.client(self.UNREACHABLE)  # the task service publishes there
        router.unregister("bar@elsewhere")
        self.assertIn(self.UNREACHABLE, pool.urls())
