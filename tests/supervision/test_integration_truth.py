"""Supervision that tells the truth, with a real branch, real workers and
the real RabbitMQ (in this module's own virtual host):

- changes through the API there and back (A, B, A) reach the worker
  within a tick, for consumers and autoscale bounds;
- changes made behind cyme's back with Celery's own remote-control client
  (``app.control.cancel_consumer``/``add_consumer``/``autoscale``, what
  ``celery control`` and Flower send) are put back within two ticks;
- an app on a broker whose host does not resolve (the README's ``bar``
  and ``baz``, host ``w1``) beside a healthy one: its worker is ``failed``
  with the reason, and the healthy app's workers are created, judged and
  restarted as usual, also after a restart of the branch.

The tests import Celery (as a client); the branch never does.
"""

import os
import signal
import socket

from twisted.internet import reactor, threads

from tests.integration import INTERVAL, KILL_TIMEOUT, broker_url, processes, run_vhost, sleep
from tests.supervision.test_integration_workers import READY_TIMEOUT, SLOW, WorkerTestCase
from tests.test_daemon import deferred

VHOST = "cyme-truth"
#: A change through the API reaches the worker within a tick; one made
#: behind cyme's back is put back within two.  The slack covers the
#: polling here and the worker applying what it was told.
SLACK = 1.5
#: The README's other broker: a host that does not resolve.
ELSEWHERE = "w1"


def celery_control(url, command, node, *args, **kwargs):
    """In a thread: C{app.control.<command>(*args)} to C{node}, as Celery's CLI does."""
    from celery import Celery

    app = Celery("cyme-it-control", broker=url)
    try:
        return getattr(app.control, command)(
            *args, destination=[node], reply=True, timeout=2.0, **kwargs
        )
    finally:
        app.close()


class TruthTestCase(WorkerTestCase):
    vhost_prefix = VHOST

    async def control(self, command, node, *args, **kwargs):
        url = broker_url(await run_vhost(VHOST))
        replies = await threads.deferToThread(
            celery_control, url, command, node, *args, **kwargs
        )
        self.assertTrue(replies, f"{command} to {node}: no reply")
        return reactor.seconds()

    async def bounds(self, branch, name):
        stats = await self.stats(branch, name)
        scaler = (stats or {}).get("autoscaler") or {}
        return scaler.get("max"), scaler.get("min")

    async def until(self, probe, bound, what):
        """Poll C{probe} until true; the seconds it took (at most C{bound} + slack)."""
        began = reactor.seconds()

        async def check():
            return True if await probe() else None

        await self.poll(check, bound + SLACK + 5, what, interval=0.05)
        took = reactor.seconds() - began
        self.assertLessEqual(took, bound + SLACK, f"{what}: took {took:.2f} s")
        return took

    async def consuming(self, branch, name, queue):
        return queue in (await self.live_queues(branch, name) or [])

    async def not_consuming(self, branch, name, queue):
        queues = await self.live_queues(branch, name)
        return queues is not None and queue not in queues


class ThereAndBackTests(TruthTestCase):
    @deferred
    async def test_consumers_there_and_back_through_the_api(self):
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name = instance["name"]
        path = f"/foo/instances/{name}/queues/{self.queue}/"

        # Added, deleted a second later: it stops consuming within a tick.
        await self.consume(branch, name, self.queue)
        await self.wait_consuming(branch, name, self.queue)
        await sleep(1)
        code, _ = await self.request("DELETE", branch.url(path))
        self.assertEqual(code, 200)
        await self.until(lambda: self.not_consuming(branch, name, self.queue), INTERVAL,
                         f"{name} no longer consuming {self.queue}")

        # Deleted, added back 0.3 s later: it consumes again within a tick.
        await self.consume(branch, name, self.queue)
        await self.wait_consuming(branch, name, self.queue)
        code, _ = await self.request("DELETE", branch.url(path))
        self.assertEqual(code, 200)
        await sleep(0.3)
        code, _ = await self.request("PUT", branch.url(path))
        self.assertIn(code, (200, 201))
        await sleep(INTERVAL + SLACK)
        self.assertTrue(await self.consuming(branch, name, self.queue))
        # And it stays so.
        await sleep(2 * INTERVAL)
        self.assertTrue(await self.consuming(branch, name, self.queue))
        shown = await self.show(branch, name)
        self.assertEqual(sorted(shown["live"]["queues"]), sorted([f"dq.{name}", self.queue]))

    @deferred
    async def test_autoscale_there_and_back_through_the_api(self):
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name = instance["name"]
        autoscale = branch.url(f"/foo/instances/{name}/autoscale/")
        self.assertEqual(await self.bounds(branch, name), (1, 1))
        code, _ = await self.request("POST", autoscale + "?max=3&min=2")
        self.assertEqual(code, 200)
        await self.until(lambda: self.is_scaled(branch, name, (3, 2)), INTERVAL, "3/2")
        code, _ = await self.request("POST", autoscale + "?max=1&min=1")
        self.assertEqual(code, 200)
        await self.until(lambda: self.is_scaled(branch, name, (1, 1)), INTERVAL,
                         "back to 1/1")
        await sleep(2 * INTERVAL)
        self.assertEqual(await self.bounds(branch, name), (1, 1))
        shown = await self.show(branch, name)
        self.assertEqual((shown["live"]["max"], shown["live"]["min"]), (1, 1))
        self.assertEqual((shown["pid"], shown["restarts"]), (instance["pid"], 0))

    async def is_scaled(self, branch, name, bounds):
        return await self.bounds(branch, name) == bounds


class BehindCymesBackTests(TruthTestCase):
    @deferred
    async def test_consumers_changed_with_celerys_own_control_are_put_back(self):
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, node = instance["name"], instance["node"]
        await self.consume(branch, name, self.queue)
        await self.wait_consuming(branch, name, self.queue)

        await self.control("cancel_consumer", node, self.queue)
        await self.until(lambda: self.consuming(branch, name, self.queue), 2 * INTERVAL,
                         f"{self.queue} consumed again after cancel_consumer")

        await self.control("add_consumer", node, "stray")
        await self.until(lambda: self.not_consuming(branch, name, "stray"), 2 * INTERVAL,
                         "stray no longer consumed after add_consumer")
        shown = await self.show(branch, name)
        self.assertEqual((shown["pid"], shown["restarts"]), (instance["pid"], 0))

    @deferred
    async def test_autoscale_changed_with_celerys_own_control_is_put_back(self):
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, node = instance["name"], instance["node"]
        await self.control("autoscale", node, 5, 3)
        await self.until(
            lambda: self.is_scaled(branch, name), 2 * INTERVAL, "autoscale 1/1 again"
        )
        await sleep(INTERVAL + 0.5)
        shown = await self.show(branch, name)
        self.assertEqual((shown["live"]["max"], shown["live"]["min"]), (1, 1))

    async def is_scaled(self, branch, name):
        return await self.bounds(branch, name) == (1, 1)


class UnreachableBrokerTests(TruthTestCase):
    """An app whose broker host does not resolve, beside the healthy foo."""

    timeout = 120

    async def set_up(self):
        await super().set_up()
        try:
            socket.getaddrinfo(ELSEWHERE, 5672)
        except OSError:
            return
        self.skipTest(f"{ELSEWHERE} resolves here: it is not an unreachable broker")

    async def readme_apps(self, branch):
        """The README's apps: foo on the default broker, bar and baz on w1."""
        for path, data in (
            ("/foo/", None),
            ("/bar/", {"hostname": ELSEWHERE, "userid": "me", "password": "me",
                       "vhost": "/"}),
            ("/baz/", {"broker": f"amqp://me:me@{ELSEWHERE}:5672//"}),
        ):
            code, body = await self.request("POST", branch.url(path), data=data)
            self.assertIn(code, (200, 201), body)

    async def failed_bar_instance(self, branch, name="b1"):
        code, body = await self.request("PUT", branch.url(f"/bar/instances/!/{name}/"))
        self.assertEqual(code, 202, body)
        shown = await self.wait_instance(
            branch, name, lambda i: i["state"] == "failed", READY_TIMEOUT,
            f"{name} failed", app="bar",
        )
        self.assertIn("the host does not resolve", shown["last_error"])
        self.assertNotIn("me:me", shown["last_error"])
        self.assertIsNone(shown["live"])
        return shown

    @deferred
    async def test_a_healthy_app_beside_an_unreachable_broker(self):
        branch = await self.start_branch("it")
        await self.readme_apps(branch)
        await self.failed_bar_instance(branch)

        # A new instance on the healthy broker: 201 as soon as it pongs.
        began = reactor.seconds()
        instance = await self.create(branch)
        self.assertLess(reactor.seconds() - began, READY_TIMEOUT / 2)

        # Its worker killed: restarted at once.
        name, pid = instance["name"], instance["pid"]
        killed = reactor.seconds()
        os.kill(pid, signal.SIGKILL)
        shown = await self.wait_instance(
            branch, name, lambda i: i["state"] == "running" and i["pid"] not in (None, pid),
            5, "a new worker running after kill -9",
        )
        self.assertLess(reactor.seconds() - killed, 5)
        self.assertEqual(shown["restarts"], 1)
        # Its queues are still reconciled.
        await self.consume(branch, name, self.queue)
        await self.wait_consuming(branch, name, self.queue, timeout=INTERVAL + SLACK)

        # The bar instance is still failed, its worker left alone.
        shown = await self.show(branch, "b1", app="bar")
        self.assertEqual((shown["state"], shown["restarts"]), ("failed", 0))
        # Deleted, its broker's connection is closed.
        code, _ = await self.request("DELETE", branch.url("/bar/instances/b1/"), timeout=SLOW)
        self.assertEqual(code, 200)
        await self.poll(
            lambda: True if "connection closed" in branch.process.describe() else None,
            KILL_TIMEOUT + 5, "the connection to w1 closed",
        )

    @deferred
    async def test_the_readme_walkthrough_then_a_branch_restart(self):
        branch = await self.start_branch("it")
        await self.readme_apps(branch)
        code, instance = await self.request(
            "PUT", branch.url("/foo/instances/"), timeout=SLOW
        )
        self.assertEqual(code, 201, instance)
        self.assertEqual(instance["state"], "running")
        name = instance["name"]
        code, _ = await self.request(
            "POST", branch.url(f"/foo/queues/{self.queue}/"),
            data={"exchange": self.queue, "routing_key": self.queue},
        )
        self.assertEqual(code, 201)
        await self.consume(branch, name, self.queue)
        code, body = await self.request(
            "POST", branch.url(f"/foo/instances/{name}/autoscale/?max=4&min=1")
        )
        self.assertEqual((code, body), (200, {"max": 4, "min": 1}))
        await self.failed_bar_instance(branch)

        await self.stop(branch.process)
        again = await self.start_branch("it", root=branch.root, port=branch.port)
        shown = await self.wait_instance(
            again, name, lambda i: i["state"] == "running", 5,
            f"{name} running after the branch restart",
        )
        self.assertEqual((shown["pid"], shown["restarts"]), (instance["pid"], 0))
        # Judged: what it consumes and its bounds are known and right.
        shown = await self.wait_instance(
            again, name, lambda i: i["live"] is not None, 2 * INTERVAL + SLACK,
            f"{name} asked what it consumes",
        )
        self.assertEqual(sorted(shown["live"]["queues"]), sorted([f"dq.{name}", self.queue]))
        self.assertEqual((shown["live"]["max"], shown["live"]["min"]), (4, 1))
        # Judged: frozen, it is found silent and replaced.
        pid = shown["pid"]
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(self.signal_quietly, pid, signal.SIGCONT)
        await self.wait_gone(pid, 3 * INTERVAL + KILL_TIMEOUT + 2, f"frozen {pid} killed")
        shown = await self.wait_instance(
            again, name, lambda i: i["state"] == "running" and i["pid"] not in (None, pid),
            READY_TIMEOUT, "a new worker running",
        )
        self.assertIn("did not answer", shown["last_error"])
        self.assertTrue(processes.alive(shown["pid"]))
        await self.wait_consuming(again, name, self.queue, timeout=2 * INTERVAL + SLACK)
        # The bar instance is failed again, adopted and not restarted.
        shown = await self.wait_instance(
            again, "b1", lambda i: i["state"] == "failed", 3 * INTERVAL + 2,
            "b1 failed after the restart", app="bar",
        )
        self.assertEqual(shown["restarts"], 0)

    def signal_quietly(self, pid, signum):
        try:
            os.kill(pid, signum)
        except OSError:
            pass
