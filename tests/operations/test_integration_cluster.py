"""Three real branches on the real RabbitMQ, one cluster, driven over HTTP.

Every test starts three ``twistd -n --pidfile= cyme-branch`` processes
(a, b and c; the helpers of L{tests.integration}) with the same
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

import os
import signal
import uuid

from twisted.internet import defer, reactor

from cyme import __version__
from tests.integration import KILL_TIMEOUT, IntegrationTestCase, processes
from tests.test_daemon import deferred, free_port

IDS = ("a", "b", "c")

#: Seconds before a branch that stopped cleanly would be offline anyway
#: were its goodbye lost: a missed probe or two, and 4 s of suspicion.
EXPIRY = 6.0


class ClusterTestCase(IntegrationTestCase):
    timeout = 100
    http_timeout = 20
    get_timeout = 10
    whole_answers = True

    async def start_cluster(self):
        """Branches a, b and c (c with an explicit C{--url}), joined."""
        ports = {i: free_port() for i in IDS}
        urls = {"c": f"http://localhost:{ports['c']}/"}
        # Spawned together, so that they start side by side.
        nodes = [await self.spawn_branch(i, port=ports[i], url=urls.get(i)) for i in IDS]
        for node in nodes:
            await self.wait_ping(node.process, node.port)
        for node in nodes:
            await self.wait_branches(node, list(IDS), 10)
        return nodes

    async def wait_branches(self, node, ids, timeout):
        return await self.poll_get(
            node, "/branches/", lambda code, body: (code, body) == (200, sorted(ids)),
            timeout, f"GET /branches/ on {node.id} is {sorted(ids)}",
        )

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
        # is listed on a and c.  The queue (and its exchange) has a name of
        # its own, even within the run's virtual host.
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
        # A new name sent to every branch at once is still one instance.
        twin = f"twin-{uuid.uuid4().hex[:6]}"
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.call(
                "PUT", node.url(f"/bar/instances/{twin}/"), data={"pool": "solo"},
                timeout=30,
            ))
            for node in nodes
        ])
        self.assertEqual(sorted(code for code, _, _ in answers), [200, 200, 201], answers)
        self.assertEqual(len({body["branch"] for _, body, _ in answers}), 1, answers)
        for node in nodes:
            self.assertEqual(await self.ok("GET", node, "/bar/instances/"), [twin])
        await self.ok("DELETE", a, f"/bar/instances/{twin}/", expected=(200,))

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
            data={"arguments": "--without-mingle", "extra_config": '{"worker_prefetch_multiplier": 1}'},
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

    @deferred
    async def test_a_silent_branch_is_a_504_then_offline_then_back(self):
        """
        A branch that stops answering (SIGSTOP: its connections open, its
        bus silent): a call to its instance is a 504 and a fresh listing
        names it; soon every other branch holds it offline (its instance
        listed, shown offline, a change of it a 503).  Woken, it refutes
        its death and is back everywhere.
        """
        nodes = await self.start_cluster()
        a, b, c = nodes
        await self.ok("PUT", a, "/foo/", expected=(201,))
        name = f"w-{uuid.uuid4().hex[:12]}"
        await self.create_instance(a, name=name, branch="b")
        b.process.signal("STOP")
        self.addCleanup(b.process.signal, signal.SIGCONT)
        stats, fresh = await defer.gatherResults([
            defer.ensureDeferred(self.call("GET", a.url(f"/foo/instances/{name}/stats/"))),
            defer.ensureDeferred(self.call("GET", c.url("/foo/instances/?fresh=1"))),
        ])
        self.assertEqual(stats[0], 504, stats[1])
        self.assertEqual((fresh[0], fresh[1]), (200, [name]))
        self.assertEqual(fresh[2].getRawHeaders(b"cyme-missing-branches"), [b"b"])
        for node in (a, c):
            await self.wait_branches(node, ["a", "c"], 15)
            self.assertEqual(await self.get(node, "/foo/instances/"), (200, [name]))
            code, shown = await self.get(node, f"/foo/instances/{name}/")
            self.assertEqual((code, shown["state"], shown["branch"]), (200, "offline", "b"))
        code, body, _ = await self.call("DELETE", a.url(f"/foo/instances/{name}/"))
        self.assertEqual(code, 503, body)
        b.process.signal(signal.SIGCONT)
        for node in nodes:
            await self.wait_branches(node, list(IDS), 10)
        for node in nodes:
            await self.stop(node.process)
