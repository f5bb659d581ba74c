"""Three real branches on the real RabbitMQ, one cluster, driven over HTTP.

Every test starts three ``twistd -n --pidfile= cyme-branch`` processes
(a, b and c; the helpers of L{tests.test_daemon}) with the same
``--cluster`` name, one of the test's own, so that branches of other tests
and of concurrent runs on the same broker never join it.  The workers are
real ``celery worker`` processes with the solo pool (the quickest to start
and the smallest), on the broker's C{/} virtual host under names of their
own (UUIDs).  Nothing here publishes a task.

The tests are skipped, with the reason, only when nothing listens on
127.0.0.1:5672.  Each test stops its branches with SIGTERM (a clean stop is
asserted); the branches left, and every worker (which outlive their branch
by design), are killed in the cleanups.
"""

import json
import os
import signal
import socket
import uuid

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from cyme import __version__
from cyme.workers import ProcessTable
from tests.test_daemon import DaemonTestCase, deferred, free_port

HOST, PORT = "127.0.0.1", 5672
IDS = ("a", "b", "c")

#: Seconds of the supervisor's tick and of a worker's TERM → KILL.
INTERVAL = 1
KILL_TIMEOUT = 3
#: Seconds a branch stays online without heartbeats (2 s beats, 3 missed).
EXPIRY = 6.0

processes = ProcessTable()


def unreachable():
    try:
        socket.create_connection((HOST, PORT), timeout=0.5).close()
    except OSError as e:
        return f"RabbitMQ is not reachable at {HOST}:{PORT}: {e}"
    return None


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class Node:
    """One running branch: its id, process, root directory, port and URLs."""

    def __init__(self, branch_id, process, root, port, url):
        self.id = branch_id
        self.process = process
        self.root = root
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.advertised = url

    def url(self, path):
        return self.base + path


class ClusterTestCase(DaemonTestCase):
    timeout = 100

    def setUp(self):
        reason = unreachable()
        if reason:
            raise SkipTest(reason)
        super().setUp()
        self.spawned = []
        self.addCleanup(self.save_output)
        # Cleanups run last-in first-out: after the branches were killed
        # (spawned later), and before kill_workers, which misses a worker
        # that has not written its worker.pid yet.
        self.addCleanup(lambda: defer.ensureDeferred(self.kill_leftovers()))

    # Processes

    def worker_processes(self):
        """Pids of the live workers whose command line names this test's directory."""
        marker = self.cwd.encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"cyme.workerexec" in argv and any(marker in a for a in argv):
                if processes.alive(int(entry)):
                    found.append(int(entry))
        return found

    async def kill_leftovers(self):
        """Kill every worker this test started (and its group); wait for them."""
        deadline = reactor.seconds() + 5
        while True:
            pids = self.worker_processes()
            if not pids:
                return
            for pid in pids:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if reactor.seconds() > deadline:
                self.fail(f"worker processes still alive after SIGKILL: {pids}")
            await sleep(0.05)

    # Branches

    def spawn_branch(self, branch_id, root=None, port=None, url=None):
        root = root or self.path(f"branch-{branch_id}")
        port = port or free_port()
        options = [
            "-i", branch_id, "-D", root,
            "--cluster", self.cluster,
            "--sup-interval", str(INTERVAL),
            "--kill-timeout", str(KILL_TIMEOUT),
        ]
        if url is not None:
            options += ["--url", url]
        process = self.twistd(f"127.0.0.1:{port}", *options)
        self.spawned.append((branch_id, process))
        return Node(branch_id, process, root, port, url or f"http://127.0.0.1:{port}/")

    async def start_branch(self, branch_id, root=None, port=None, url=None):
        node = self.spawn_branch(branch_id, root, port, url)
        await self.wait_ping(node.process, node.port)
        return node

    async def start_cluster(self):
        """Branches a, b and c (c with an explicit C{--url}), joined."""
        ports = {i: free_port() for i in IDS}
        urls = {"c": f"http://localhost:{ports['c']}/"}
        # Spawned together, so that they start side by side.
        nodes = [self.spawn_branch(i, port=ports[i], url=urls.get(i)) for i in IDS]
        for node in nodes:
            await self.wait_ping(node.process, node.port)
        for node in nodes:
            await self.wait_branches(node, list(IDS), 10)
        return nodes

    def save_output(self):
        """Each branch's output in the test's directory, for post-mortems."""
        for n, (branch_id, process) in enumerate(self.spawned):
            with open(self.path(f"branch-{branch_id}-{n}.log"), "w") as f:
                f.write(process.describe())

    def outputs(self):
        return "".join(
            f"\n--- branch {branch_id}:\n{process.describe()[-4000:]}"
            for branch_id, process in self.spawned
        )

    # HTTP

    async def call(self, method, url, timeout=20, **kwargs):
        """C{(code, json body, headers)} of a request; every answer is JSON."""
        response = await treq.request(
            method, url, pool=self.pool, timeout=timeout, **kwargs
        )
        content = await treq.content(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"],
            f"{method} {url}: {response.code} {content[:300]!r}",
        )
        return response.code, json.loads(content), response.headers

    async def get(self, node, path):
        code, body, _ = await self.call("GET", node.url(path), timeout=10)
        return code, body

    async def ok(self, method, node, path, expected=(200, 201), **kwargs):
        """A request that must succeed completely: its body."""
        code, body, headers = await self.call(method, node.url(path), **kwargs)
        self.assertIn(code, expected, f"{method} {path} on {node.id}: {body}")
        self.assertIsNone(
            headers.getRawHeaders(b"cyme-missing-branches"),
            f"{method} {path} on {node.id}: partial answer",
        )
        return body

    async def poll(self, probe, timeout, what, interval=0.1):
        """
        Call the coroutine function C{probe} until it returns something
        other than None; that value.  Fails after C{timeout} seconds with
        the last value or error seen and the branches' output.
        """
        deadline = reactor.seconds() + timeout
        last = None
        while True:
            try:
                value = await probe()
            except Exception as e:
                value, last = None, e
            else:
                if value is not None:
                    return value
            if reactor.seconds() > deadline:
                self.fail(
                    f"{what}: not within {timeout} s (last: {last!r}){self.outputs()}"
                )
            await sleep(interval)

    async def poll_get(self, node, path, check, timeout, what):
        """Poll C{GET path} on C{node} until C{check(code, body)}; the body."""
        seen = []

        async def probe():
            code, body = await self.get(node, path)
            seen[:] = [(code, body)]
            return body if check(code, body) else None

        try:
            return await self.poll(probe, timeout, what)
        except self.failureException as e:
            raise self.failureException(f"last answer: {seen}\n{e}") from None

    async def wait_branches(self, node, ids, timeout):
        return await self.poll_get(
            node, "/branches/", lambda code, body: (code, body) == (200, sorted(ids)),
            timeout, f"GET /branches/ on {node.id} is {sorted(ids)}",
        )

    async def wait_gone(self, pid, timeout, what, directory=None):
        """Wait for C{pid} to end (and C{directory} to be removed)."""
        async def probe():
            if processes.alive(pid):
                return None
            if directory is not None and os.path.exists(directory):
                return None
            return True

        await self.poll(probe, timeout, what, interval=0.05)

    # Instances

    async def create_instance(self, via, app="foo", name=None, **params):
        """An instance with the solo pool, created through C{via}: running."""
        path = f"/{app}/instances/{name}/" if name else f"/{app}/instances/"
        code, instance, headers = await self.call(
            "PUT", via.url(path), data={"pool": "solo", **params}, timeout=30
        )
        self.assertEqual(code, 201, instance)
        self.assertEqual(instance["pool"], "solo")
        if instance["state"] == "starting":
            # Not up within --ready-timeout (a slow machine, a broker
            # restarted by someone else): it must come up all the same.
            instance = await self.poll_get(
                via, f"/{app}/instances/{instance['name']}/",
                lambda code, body: code == 200 and body["state"] == "running",
                20, f"{instance['name']} running",
            )
        self.assertEqual(instance["state"], "running", instance)
        self.assertIsInstance(instance["pid"], int)
        self.assertTrue(processes.alive(instance["pid"]), instance)
        return instance


class ClusterTests(ClusterTestCase):
    @deferred
    async def test_one_cluster_through_every_branch(self):
        """
        Three branches list each other with their details; an app created
        on one and a queue declared on another are served by all; anonymous
        instances created through one land one per branch and are listed
        from every branch once; consuming, autoscale, stats and delete work
        through a branch that does not own the instance; a name used on
        another branch under another app is a 409.
        """
        nodes = await self.start_cluster()
        a, b, c = nodes
        by_id = {n.id: n for n in nodes}

        # 1. Every branch lists every branch, and says what it knows of each.
        for node in nodes:
            self.assertEqual(await self.get(node, "/branches/"), (200, list(IDS)))
            for other in nodes:
                code, info = await self.get(node, f"/branches/{other.id}/")
                self.assertEqual(code, 200, info)
                for key in ("id", "url", "instances", "load", "uptime", "version",
                            "last_heartbeat"):
                    self.assertIn(key, info)
                self.assertEqual(info["id"], other.id)
                self.assertEqual(info["url"], other.advertised)
                self.assertEqual(info["instances"], [])
                self.assertEqual(info["load"]["instances"], 0)
                self.assertEqual(info["version"], __version__)
                self.assertGreaterEqual(info["uptime"], 0)
                self.assertLess(info["uptime"], 60)
                self.assertIsInstance(info["last_heartbeat"], (int, float))
            code, body = await self.get(node, "/branches/nope/")
            self.assertEqual(code, 404, body)

        # 2. An app created on a is served by b and c; a queue declared on b
        # is listed on a and c.  The broker's "/" is shared: the queue (and
        # its exchange) has a name no other test or run uses.
        tasks = f"tasks-{uuid.uuid4().hex[:8]}"
        app = await self.ok("PUT", a, "/foo/", expected=(201,))
        self.assertEqual(app["name"], "foo")
        for node in (b, c):
            self.assertEqual(await self.get(node, "/foo/"), (200, app))
            self.assertEqual(await self.get(node, "/"), (200, ["foo"]))
        queue = await self.ok(
            "PUT", b, f"/foo/queues/{tasks}/", expected=(201,),
            data={"exchange_type": "topic", "routing_key": f"{tasks}.#"},
        )
        self.assertEqual(
            (queue["name"], queue["exchange_type"], queue["routing_key"]),
            (tasks, "topic", f"{tasks}.#"),
        )
        for node in (a, c):
            self.assertEqual(await self.get(node, "/foo/queues/"), (200, [tasks]))
            self.assertEqual(await self.get(node, f"/foo/queues/{tasks}/"), (200, queue))

        # 3. Three anonymous instances created through a: one per branch.
        instances = {}
        for _ in IDS:
            instance = await self.create_instance(a)
            self.assertIn(instance["branch"], IDS)
            self.assertNotIn(instance["branch"], instances, instance)
            instances[instance["branch"]] = instance
        self.assertEqual(sorted(instances), list(IDS))
        names = sorted(i["name"] for i in instances.values())
        for node in nodes:
            for owner, instance in instances.items():
                await self.poll_get(
                    node, f"/branches/{owner}/",
                    lambda code, body, i=instance: code == 200
                    and body["instances"] == [i["name"]]
                    and body["load"]["instances"] == 1,
                    5, f"/branches/{owner}/ on {node.id} lists {instance['name']}",
                )
                code, shown = await self.get(node, f"/foo/instances/{instance['name']}/")
                self.assertEqual(code, 200, shown)
                self.assertEqual(
                    (shown["branch"], shown["state"], shown["pid"]),
                    (owner, "running", instance["pid"]),
                )
            listed = await self.ok("GET", node, "/foo/instances/")
            self.assertEqual(listed, names)
        # Each worker runs under its owner's root directory.
        for owner, instance in instances.items():
            pidfile = os.path.join(
                by_id[owner].root, "instances", instance["name"], "worker.pid"
            )
            with open(pidfile) as f:
                self.assertEqual(int(f.read().strip()), instance["pid"])

        # 4. Through a branch that does not own the instance: c's instance,
        # driven through b (and a).
        name, pid = instances["c"]["name"], instances["c"]["pid"]
        body = await self.ok(
            "PUT", b, f"/foo/instances/{name}/queues/{tasks}/", expected=(201,)
        )
        self.assertEqual(body, {"ok": "ok"})
        for node in (c, a):
            # The live queues of c's worker, asked through a and c.
            live = await self.poll_get(
                node, f"/foo/instances/{name}/queues/",
                lambda code, body: code == 200 and tasks in body,
                8, f"{name}'s worker consuming {tasks} (asked on {node.id})",
            )
            self.assertIn(f"dq.{name}", live)
        code, shown = await self.get(c, f"/foo/instances/{name}/")
        self.assertEqual(shown["queues"], [tasks])

        # Consuming changed the live worker, it did not restart it.
        stats = await self.poll_get(
            b, f"/foo/instances/{name}/stats/", lambda code, body: code == 200,
            5, f"stats of {name} through b",
        )
        self.assertEqual(stats["pid"], pid)
        self.assertIn("pool", stats)
        self.assertIn("total", stats)

        body = await self.ok("POST", b, f"/foo/instances/{name}/autoscale/?max=3&min=2")
        self.assertEqual(body, {"max": 3, "min": 2})
        for node in nodes:
            self.assertEqual(
                await self.get(node, f"/foo/instances/{name}/autoscale/"),
                (200, {"max": 3, "min": 2}),
            )
        # A solo pool runs one task at a time whatever its bounds say: the
        # new bounds are stored and its worker is left alone.
        shown = await self.poll_get(
            a, f"/foo/instances/{name}/",
            lambda code, body: code == 200 and body["state"] == "running",
            10, f"{name} running",
        )
        self.assertEqual((shown["max_concurrency"], shown["min_concurrency"]), (3, 2))
        self.assertEqual(shown["pid"], pid)
        pid = shown["pid"]
        stats = await self.poll_get(
            a, f"/foo/instances/{name}/stats/",
            lambda code, body: code == 200 and body["pid"] == pid,
            5, f"stats of {name} (pid {pid}) through a",
        )

        # 7. Names are unique across the cluster: c's instance name under
        # another app is a 409 from every branch, and changes nothing.
        await self.ok("PUT", a, "/bar/", expected=(201,))
        for node in nodes:
            code, body, _ = await self.call(
                "PUT", node.url(f"/bar/instances/{name}/"), data={"pool": "solo"}
            )
            self.assertEqual(code, 409, f"through {node.id}: {body}")
            self.assertIn("error", body)
            self.assertEqual(await self.ok("GET", node, "/bar/instances/"), [])
        code, shown = await self.get(a, f"/foo/instances/{name}/")
        self.assertEqual(
            (shown["app"], shown["branch"], shown["pid"]), ("foo", "c", pid)
        )

        # 4. Deleted through a: the worker on c is gone, and so is the name.
        body = await self.ok("DELETE", a, f"/foo/instances/{name}/", expected=(200,))
        self.assertEqual(body, {"ok": "ok"})
        await self.wait_gone(
            pid, KILL_TIMEOUT + 5, f"worker {pid} of {name} ended, its directory removed",
            directory=os.path.join(c.root, "instances", name),
        )
        rest = sorted(i["name"] for o, i in instances.items() if o != "c")
        for node in nodes:
            code, body = await self.get(node, f"/foo/instances/{name}/")
            self.assertEqual(code, 404, body)
            self.assertEqual(await self.ok("GET", node, "/foo/instances/"), rest)
        # The others' workers are untouched.
        for owner in ("a", "b"):
            self.assertTrue(processes.alive(instances[owner]["pid"]))

        for node in nodes:
            await self.stop(node.process)

    @deferred
    async def test_branch_stopped_and_restarted(self):
        """
        A branch stopped cleanly leaves the cluster at once; its instances
        are still listed, offline, and its workers keep running; writes made
        while it is away reach it when it comes back on the same root, and
        it adopts its workers.
        """
        nodes = await self.start_cluster()
        a, b, c = nodes
        await self.ok("PUT", a, "/foo/", expected=(201,))
        await self.ok("PUT", a, "/bar/", expected=(201,))
        name = f"w-{uuid.uuid4().hex[:12]}"
        instance = await self.create_instance(a, name=name, branch="b")
        self.assertEqual(instance["branch"], "b")
        pid = instance["pid"]
        for node in nodes:
            self.assertEqual(await self.ok("GET", node, "/foo/instances/"), [name])

        # 5. b stops: it says goodbye, so a and c drop it at once, long
        # before its heartbeats would expire.
        await self.stop(b.process)
        stopped = reactor.seconds()
        for node in (a, c):
            await self.wait_branches(node, ["a", "c"], EXPIRY / 2)
        self.assertLess(reactor.seconds() - stopped, EXPIRY / 2)
        self.assertTrue(processes.alive(pid), "the worker ended with its branch")

        # Its instance is not lost: listed, and shown offline.
        for node in (a, c):
            self.assertEqual(await self.get(node, "/foo/instances/"), (200, [name]))
            code, shown = await self.get(node, f"/foo/instances/{name}/")
            self.assertEqual(code, 200, shown)
            self.assertEqual(
                (shown["name"], shown["app"], shown["branch"], shown["state"]),
                (name, "foo", "b", "offline"),
            )
            code, info = await self.get(node, "/branches/b/")
            self.assertEqual(code, 200, info)
            self.assertEqual((info["online"], info["instances"]), (False, [name]))
        # It cannot be changed while its branch is away.
        code, body, _ = await self.call("DELETE", a.url(f"/foo/instances/{name}/"))
        self.assertEqual(code, 503, body)

        # 6. Writes while b is away: a new queue, an app changed.
        await self.ok("PUT", a, "/foo/queues/late/", expected=(201,))
        bar = await self.ok(
            "POST", c, "/bar/", expected=(200,),
            data={"arguments": "--without-mingle", "extra_config": '{"x": 1}'},
        )
        self.assertEqual(bar["arguments"], "--without-mingle")
        self.assertEqual(await self.get(a, "/bar/"), (200, bar))

        # b again, on the same root and port: it rejoins, catches up, and
        # adopts its worker (the same process, running).
        b = await self.start_branch("b", root=b.root, port=b.port)
        for node in (a, b, c):
            await self.wait_branches(node, list(IDS), 10)
        await self.poll_get(
            b, "/foo/queues/", lambda code, body: (code, body) == (200, ["late"]),
            10, "b has the queue declared while it was away",
        )
        code, late = await self.get(b, "/foo/queues/late/")
        self.assertEqual(code, 200, late)
        self.assertEqual(late, (await self.get(a, "/foo/queues/late/"))[1])
        self.assertEqual(await self.get(b, "/bar/"), (200, bar))
        for node in (b, a, c):
            shown = await self.poll_get(
                node, f"/foo/instances/{name}/",
                lambda code, body: code == 200 and body.get("state") == "running",
                10, f"{name} running again (asked on {node.id})",
            )
            self.assertEqual((shown["branch"], shown["pid"]), ("b", pid))
            self.assertEqual(shown["restarts"], 0)
            self.assertEqual(await self.ok("GET", node, "/foo/instances/"), [name])
        self.assertTrue(processes.alive(pid))

        for node in (a, b, c):
            await self.stop(node.process)
