"""cyme.client end to end: real branches (a cluster of two), real workers.

The original Cyme's client session (its module's documentation) is run as
written, through one branch, for instances that land on both; then queued
URLs, TLS with a private CA and tokens.  The client is synchronous: it runs
in a thread (L{ToolsTestCase.thread}) while the reactor reads the
branches' output.  The helpers are L{tests.tools}'s; skipped, with the
reason, when nothing listens on 127.0.0.1:5672.
"""

import os
import time

from twisted.internet.utils import getProcessOutputAndValue

from cyme.client import (
    BadRequest, Client, ConnectionFailed, Conflict, Forbidden, GatewayTimeout, Instance,
    NotFound, Queue, TaskFailed, Unauthorized,
)
from tests.integration import made_vhost
from tests.localhost import self_signed
from tests.test_daemon import CYME_BRANCH, deferred, free_port
from tests.tools import ToolsTestCase


def until(probe, timeout, what):
    """Call C{probe} (in the client's thread) until it returns something true; that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


class OriginalSessionTests(ToolsTestCase):
    @deferred
    async def test_the_original_session_through_one_branch_of_two(self):
        """
        Add an app, a queue, an anonymous and a named instance (one per
        branch), read and set autoscale, read stats, add and delete a
        consumer, delete everything, all through branch a; the errors are
        typed, with the status and the branch's message.
        """
        a, b = await self.start_pair()
        vhost = made_vhost(self.vhost_prefix)

        def session():
            client = Client(a.base)
            # Applications
            app = client.add("foo")
            self.assertEqual((app.name, app.broker["virtual_host"]), ("foo", vhost))
            self.assertEqual(client.all(), ["foo"])
            self.assertEqual(Client(b.base).get("foo").info, app.info)
            # Queues
            q = app.queues.add("tasks", exchange="tasks", routing_key="tasks")
            self.assertIsInstance(q, Queue)
            self.assertEqual((q.name, q.exchange, q.exchange_type, q.routing_key),
                             ("tasks", "tasks", "direct", "tasks"))
            self.assertEqual(app.queues.get("tasks"), q)
            self.assertEqual(list(app.queues), [q])
            self.assertIn("tasks", app.queues)
            # Instances: an anonymous one, and a named one without waiting.
            i = app.instances.add()
            self.assertIsInstance(i, Instance)
            self.assertEqual((len(i.name), i.state), (36, "running"))
            self.assertEqual(i.broker, app.broker)  # inherited from the app
            w1 = app.instances.add("w1", nowait=True)
            self.assertEqual(w1.name, "w1")
            w1 = until(lambda: (lambda w: w.state == "running" and w)(w1.refresh()),
                       30, "w1 running")
            self.assertEqual({i.branch, w1.branch}, {"a", "b"})
            self.assertEqual(sorted(app.instances.names()), sorted([i.name, "w1"]))
            self.assertEqual(sorted(x.name for x in app.instances), sorted([i.name, "w1"]))
            # Autoscale, read and set, on each branch's instance.
            for instance in (i, w1):
                self.assertEqual(instance.autoscale(), {"max": 1, "min": 1})
                self.assertEqual(instance.autoscale(max=2, min=1), {"max": 2, "min": 1})
                self.assertEqual(instance.autoscale(), {"max": 2, "min": 1})
                until(lambda x=instance: x.stats()["autoscaler"]["max"] == 2, 20,
                      f"{instance.name}'s worker autoscales to 2")
            stats = i.stats()
            self.assertEqual(stats["pid"], i.pid)
            self.assertIn("pool", stats)
            # Consumers
            self.assertEqual(i.consumers.add(q), {"ok": "ok"})
            self.assertEqual(i.refresh().queue_names, ["tasks"])
            self.assertEqual(i.refresh().queues, [q])
            until(lambda: "tasks" in i.consumers.names(), 20, "the worker consumes tasks")
            self.assertEqual(i.consumers.delete("tasks"), {"ok": "ok"})
            until(lambda: "tasks" not in i.consumers.names(), 20, "the worker stops")
            self.assertEqual(i.refresh().queue_names, [])
            # Errors: typed, with the status and the message.
            with self.assertRaises(NotFound) as caught:
                app.instances.get("nope")
            self.assertEqual((caught.exception.status, str(caught.exception)),
                             (404, "no such instance: nope"))
            self.assertEqual(caught.exception.detail, {"kind": "instance", "name": "nope"})
            with self.assertRaises(NotFound):
                client.get("fooo")
            with self.assertRaises(Conflict) as caught:
                client.add("bar").instances.add("w1")
            self.assertEqual(caught.exception.status, 409)
            with self.assertRaises(BadRequest) as caught:
                app.instances.add("w2", max_concurrency="lots")
            self.assertEqual(caught.exception.detail["field"], "max_concurrency")
            with self.assertRaises(ConnectionFailed) as caught:
                Client(f"http://127.0.0.1:{free_port()}").all()
            self.assertIn("Connection refused", str(caught.exception))
            # Deleting
            self.assertEqual(q.delete(), {"ok": "ok"})
            self.assertEqual(app.queues.names(), [])
            self.assertEqual(i.delete(), {"ok": "ok"})
            self.assertEqual(app.instances.delete("w1"), {"ok": "ok"})
            self.assertEqual(app.instances.names(), [])
            self.assertEqual(client.delete("bar"), {"ok": "ok"})
            self.assertEqual(app.delete(), {"ok": "ok"})
            self.assertEqual(client.all(), [])
            return i.pid, w1.pid

        pids = await self.thread(session)
        for pid in pids:
            await self.wait_gone(pid, 15, f"worker {pid} stopped")


class QueuedURLTests(ToolsTestCase):
    @deferred
    async def test_queue_wait_and_fail(self):
        """
        A URL queued through branch b for a worker on branch a: its state,
        its result, and a wait; a URL that cannot be reached is a
        TaskFailed; a wait that runs out is a GatewayTimeout.
        """
        a, b = await self.start_pair()
        target, base = self.start_target()
        closed = self.closed_url()

        def tasks():
            client = Client(b.base)
            app = client.add("foo", allowed_hosts=["127.0.0.1"])
            app.queues.add("tasks")
            app.instances.add("w1", pool="solo", queues=["tasks"], branch="a")
            until(lambda: "tasks" in app.instances.named("w1").consumers.names(), 20,
                  "w1 consumes tasks")
            task = app.queue("tasks", base + "/import?user=133", data={"name": "George"})
            self.assertEqual((task.info["queue"], task.info["method"]), ("tasks", "POST"))
            result = task.wait(timeout=30)
            self.assertEqual(result["status_code"], 200)
            self.assertEqual(result["content"], "POST /import name=George")
            self.assertEqual(task.state, "SUCCESS")
            self.assertEqual(app.task(task.uuid).result(), result)
            self.assertEqual(Client(a.base).app("foo").task(task.uuid).result(), result)
            failing = app.queue("tasks", closed, method="get")
            with self.assertRaises(TaskFailed) as caught:
                failing.wait(timeout=30)
            self.assertEqual(caught.exception.body["state"], "FAILURE")
            self.assertEqual(failing.state, "FAILURE")
            with self.assertRaises(GatewayTimeout):
                app.task("0" * 32).wait(timeout=1)
            self.assertIsNone(app.task("0" * 32).result())
            return task.uuid

        await self.thread(tasks)
        self.assertEqual(target.requests, [("POST", "/import?user=133", b"name=George")])


class NoWaitTests(ToolsTestCase):
    @deferred
    async def test_nowait_writes_and_one_consumed_queue(self):
        """
        Every write takes C{nowait} (the original client's C{!} marker), the
        original client's own signatures work (C{config=}, the
        C{branches} property, C{branch_info}), and an instance's consumers
        are read as the declarations of the queues it consumes.
        """
        branch = await self.start_branch("a")

        def nowait():
            client = Client(branch.base)
            self.assertEqual((client.branches, client.branches()), (["a"], ["a"]))
            self.assertEqual(client.branch_info("a")["id"], "a")
            app = client.add("foo", nowait=True)
            self.assertEqual(app.name, "foo")
            until(lambda: client.all() == ["foo"], 10, "foo added")
            app.queues.add("tasks", nowait=True)
            until(lambda: "tasks" in app.queues.names(), 10, "tasks declared")
            declared = app.queues.get("tasks")
            i = app.instances.add("w1", pool="solo", config={"worker_prefetch_multiplier": 2})
            self.assertEqual(i.extra_config, {"worker_prefetch_multiplier": 2})
            self.assertEqual(i.autoscale(max=2, min=1, nowait=True), {"max": 2, "min": 1})
            i.consumers.add("tasks", nowait=True)
            until(lambda: "tasks" in i.consumers.names(), 20, "w1 consumes tasks")
            self.assertEqual(i.consumers.get("tasks"), declared)
            self.assertEqual(list(i.consumers), [declared])
            with self.assertRaises(NotFound):
                i.consumers.get("other")
            i.consumers.delete("tasks", nowait=True)
            until(lambda: "tasks" not in i.consumers.names(), 20, "w1 stops consuming")
            app.queues.delete("tasks", nowait=True)
            until(lambda: app.queues.names() == [], 10, "tasks deleted")
            i.delete(nowait=True)
            until(lambda: app.instances.names() == [], 10, "w1 deleted")
            app.delete(nowait=True)
            until(lambda: client.all() == [], 10, "foo deleted")
            return i.pid

        pid = await self.thread(nowait)
        await self.wait_gone(pid, 15, "w1's worker stopped")


class TLSAndTokenTests(ToolsTestCase):
    @deferred
    async def test_private_ca_and_tokens(self):
        """
        A branch over TLS with a private CA and no trust of loopback: the
        client reaches it with C{cacert} and a token; tokens are made,
        listed and revoked through it, and scopes are enforced.
        """
        key, cert = self_signed(self.cwd, "localhost", addresses=["127.0.0.1"])
        port = free_port()
        root = self.path("root")
        os.makedirs(root)
        code, admin, err = await self.run_token_command(root)
        self.assertEqual(code, 0, err)
        await self.spawn_tls_branch(root, port, key, cert)
        url = f"https://localhost:{port}"

        def tls():
            client = Client(url, token=admin, cacert=cert)
            self.assertEqual(client.all(), [])
            self.assertNotIn(admin, repr(client) + repr(client.transport))
            made = client.tokens.add("ci", scope=["read"], expires="1d")
            self.assertEqual((made["name"], made["scopes"]), ("ci", ["read"]))
            self.assertEqual(sorted(t["name"] for t in client.tokens.all()), ["ci", "root"])
            self.assertNotIn(made["token"], repr(client.tokens.all()))
            reader = Client(url, token=made["token"], cacert=cert)
            self.assertEqual(reader.all(), [])
            with self.assertRaises(Forbidden) as caught:
                reader.add("foo")
            self.assertEqual(caught.exception.status, 403)
            self.assertEqual(client.tokens.delete("ci"), {"ok": "ok"})
            with self.assertRaises(Unauthorized):
                reader.all()
            with self.assertRaises(Unauthorized):
                Client(url, cacert=cert).all()
            with self.assertRaises(ConnectionFailed) as caught:
                Client(url, token=admin).all()  # the private CA is not known
            self.assertIn("CERTIFICATE_VERIFY_FAILED", str(caught.exception))

        await self.thread(tls)

    async def run_token_command(self, root):
        """An admin token made with C{cyme-branch token create} on an idle root."""
        out, err, code = await getProcessOutputAndValue(
            CYME_BRANCH, ["token", "create", "--name", "root", "--scope", "read,write,admin",
                          "-D", root], env=dict(os.environ), path=self.cwd)
        return code, out.decode().strip(), err.decode()

    async def spawn_tls_branch(self, root, port, key, cert):
        branch = await self.spawn_branch(
            "t", "--no-trust-loopback",
            f"--http=ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            root=root, port=port,
        )

        def pong():
            try:
                return Client(f"https://localhost:{port}", cacert=cert, timeout=2).ping()
            except ConnectionFailed:
                return None

        await self.poll(lambda: self.thread(pong), 15, "the TLS branch answers")
        return branch
