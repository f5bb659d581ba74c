"""Real workers under a real branch, driven over HTTP as a user with curl would.

Every test starts ``twistd -n cyme-branch`` processes (the helpers of
L{tests.integration}) against the RabbitMQ on 127.0.0.1:5672, in a virtual
host of the run's own (``cyme-it-<pid>``, made with ``rabbitmqctl`` and
deleted at exit) so that other branches, workers and test runs on the same
broker neither see nor disturb them.  The tests are skipped, with the reason, only when nothing
listens on 127.0.0.1:5672.

Workers outlive their branch by design: every test ends by killing each
process whose command line names its directory (workers and their pool
children, stopped ones included), after the branch itself was killed.

The broker restart test stops RabbitMQ's application (``rabbitmqctl
stop_app``) and always starts it again in a cleanup; it is in its own class,
last in the module.
"""

import os
import signal
import socket
import uuid

from twisted.internet import defer, reactor, threads

from tests.integration import (
    INTERVAL,
    KILL_TIMEOUT,
    RABBITMQCTL,
    IntegrationTestCase,
    broker_url,
    group,
    need_rabbitmqctl,
    processes,
    run_vhost,
    sleep,
    worker_processes,
)
from tests.test_daemon import deferred

VHOST = "cyme-it"  # each run has its own: cyme-it-<pid of the run>
HOSTNAME = socket.gethostname()

#: How long creating an instance waits for its worker's first pong.
READY_TIMEOUT = 8
#: The client's timeout of the calls that wait for a worker.
SLOW = KILL_TIMEOUT + READY_TIMEOUT + 2


def run_echo(url, queue, args, timeout):
    """
    In a thread: send C{cyme.echo(*args)} to C{queue} with Celery's own
    client and wait for its result through the C{rpc://} backend.
    """
    from celery import Celery

    client = Celery("cyme-it-client", broker=url, backend="rpc://")
    client.conf.broker_connection_retry_on_startup = True
    try:
        result = client.send_task("cyme.echo", args=args, queue=queue)
        return result.get(timeout=timeout)
    finally:
        client.close()


class WorkerTestCase(IntegrationTestCase):
    timeout = 60
    vhost_prefix = VHOST
    branch_options = ("--ready-timeout", str(READY_TIMEOUT))

    async def set_up(self):
        await super().set_up()
        # "tasks" in this run's own virtual host; in the shared "/" (no
        # rabbitmqctl) a name no other worker consumes.
        self.queue = "tasks" if RABBITMQCTL else f"tasks-{uuid.uuid4().hex[:8]}"

    async def show(self, branch, name, app="foo"):
        code, body = await self.get(branch, f"/{app}/instances/{name}/")
        self.assertEqual(code, 200, body)
        return body

    async def wait_instance(self, branch, name, check, timeout, what, app="foo"):
        """Poll the instance's JSON until C{check(instance)}; the instance."""
        return await self.poll_get(
            branch, f"/{app}/instances/{name}/",
            lambda code, body: code == 200 and check(body), timeout, what,
        )

    async def live_queues(self, branch, name, app="foo"):
        code, body = await self.get(branch, f"/{app}/instances/{name}/queues/")
        return body if code == 200 else None

    async def stats(self, branch, name, app="foo"):
        code, body = await self.get(branch, f"/{app}/instances/{name}/stats/")
        return body if code == 200 else None

    # Set-up through the API

    async def create(self, branch, name=None, app="foo", **params):
        """C{PUT /<app>/} (once) and C{PUT /<app>/instances/<name>/}: 201, running."""
        code, _ = await self.request("PUT", branch.url(f"/{app}/"))
        self.assertIn(code, (200, 201))
        name = name or f"w{uuid.uuid4().hex[:10]}"
        code, instance = await self.request(
            "PUT", branch.url(f"/{app}/instances/{name}/"), data=params or None,
            timeout=SLOW,
        )
        self.assertEqual(code, 201, instance)
        self.assertEqual(instance["name"], name)
        self.assertEqual(instance["state"], "running", instance)
        self.assertIsInstance(instance["pid"], int)
        self.assertTrue(processes.alive(instance["pid"]))
        return instance

    async def consume(self, branch, name, queue, app="foo"):
        code, body = await self.request("PUT", branch.url(f"/{app}/queues/{queue}/"))
        self.assertIn(code, (200, 201), body)
        code, body = await self.request(
            "PUT", branch.url(f"/{app}/instances/{name}/queues/{queue}/")
        )
        self.assertEqual((code, body), (201, {"ok": "ok"}))

    async def wait_consuming(self, branch, name, queue, timeout=5.0):
        async def probe():
            queues = await self.live_queues(branch, name)
            return queues if queues is not None and queue in queues else None

        return await self.poll(probe, timeout, f"{name} consuming {queue}")

    async def echo(self, queue, args, timeout=15.0):
        url = broker_url(await run_vhost(VHOST))
        return await threads.deferToThread(run_echo, url, queue, args, timeout)


class WorkerTests(WorkerTestCase):
    @deferred
    async def test_create_consume_task_and_autoscale(self):
        """
        A created instance is a running worker answering stats; a queue it
        is told to consume shows in its live queues and a task published to
        it runs there; autoscale bounds are applied to the live worker.
        """
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]
        self.assertEqual(instance["restarts"], 0)

        stats = await self.stats(branch, name)
        self.assertIsNotNone(stats, "GET …/stats/ did not answer 200")
        for key in ("pid", "pool", "autoscaler"):
            self.assertIn(key, stats)
        self.assertEqual(stats["pid"], pid)
        self.assertEqual(
            (stats["autoscaler"]["max"], stats["autoscaler"]["min"]), (1, 1)
        )
        queues = await self.live_queues(branch, name)
        self.assertEqual(queues, [f"dq.{name}"])

        await self.consume(branch, name, self.queue)
        queues = await self.wait_consuming(branch, name, self.queue)
        self.assertIn(f"dq.{name}", queues)

        result = await self.echo(self.queue, ["hello", 42])
        self.assertEqual(result["args"], ["hello", 42])
        self.assertEqual(result["hostname"], f"{name}@{HOSTNAME}")

        code, body = await self.request(
            "POST", branch.url(f"/foo/instances/{name}/autoscale/?max=3&min=2")
        )
        self.assertEqual((code, body), (200, {"max": 3, "min": 2}))

        async def scaled():
            stats = await self.stats(branch, name)
            scaler = (stats or {}).get("autoscaler") or {}
            return stats if (scaler.get("max"), scaler.get("min")) == (3, 2) else None

        stats = await self.poll(scaled, 5, "autoscaler max 3 min 2")
        self.assertEqual(stats["pid"], pid)  # applied live, no restart
        shown = await self.show(branch, name)
        self.assertEqual((shown["pid"], shown["restarts"]), (pid, 0))

    @deferred
    async def test_kill_9_restarts(self):
        """A worker killed with SIGKILL is replaced at once by a new process."""
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]
        started = reactor.seconds()
        os.kill(pid, signal.SIGKILL)
        shown = await self.wait_instance(
            branch, name,
            lambda i: i["state"] == "running" and i["pid"] not in (None, pid),
            5, "a new worker running after kill -9",
        )
        self.assertEqual(shown["restarts"], 1)
        self.assertIn("SIGKILL", shown["last_error"] or "")
        self.assertTrue(processes.alive(shown["pid"]))
        stats = await self.stats(branch, name)
        self.assertEqual((stats or {}).get("pid"), shown["pid"])
        self.assertLess(reactor.seconds() - started, 5)
        # Nothing of the killed worker is left: its pool children end too.
        await self.poll(
            lambda: defer.succeed(None if group(pid) else True),
            3, f"the pool children of the killed worker {pid} gone",
        )

    @deferred
    async def test_sigstop_replaced(self):
        """
        A worker frozen with SIGSTOP stops answering pings: it is killed
        and replaced within about three ticks plus the kill timeout.
        """
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]
        started = reactor.seconds()
        os.kill(pid, signal.SIGSTOP)
        # SIGCONT in any case, so that the cleanup's SIGKILL is not the
        # only way out (it works on a stopped process, but be clear).
        self.addCleanup(self.signal_quietly, pid, signal.SIGCONT)
        # Judged unresponsive within a tick or so (the ping round ends
        # within half a tick), TERM ignored, KILL after the kill timeout.
        bound = 3 * INTERVAL + KILL_TIMEOUT
        await self.wait_gone(pid, bound + 2, f"the stopped worker {pid} killed")
        killed = reactor.seconds() - started
        shown = await self.wait_instance(
            branch, name,
            lambda i: i["state"] == "running" and i["pid"] not in (None, pid),
            READY_TIMEOUT, "a new worker running after SIGSTOP",
        )
        self.assertEqual(shown["restarts"], 1)
        self.assertIn("did not answer", shown["last_error"] or "")
        self.assertLessEqual(killed, bound + 0.5)

    def signal_quietly(self, pid, signum):
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    @deferred
    async def test_delete(self):
        """DELETE: the worker process ends and its directory is removed."""
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]
        directory = branch.instance_dir(name)
        self.assertTrue(os.path.isdir(directory))
        code, body = await self.request("DELETE", branch.url(f"/foo/instances/{name}/"))
        self.assertEqual((code, body), (200, {"ok": "ok"}))
        await self.wait_gone(pid, KILL_TIMEOUT + 3, f"worker {pid} gone after DELETE")

        async def removed():
            return True if not os.path.exists(directory) else None

        await self.poll(removed, 3, f"{directory} removed")
        self.assertEqual(worker_processes(directory), [])
        code, _ = await self.get(branch, f"/foo/instances/{name}/")
        self.assertEqual(code, 404)

    @deferred
    async def test_branch_restart_adopts_workers(self):
        """
        A branch stopped with SIGTERM leaves its workers running; started
        again on the same root it adopts them: same pids, not restarted.
        """
        branch = await self.start_branch("it")
        first = await self.create(branch)
        second = await self.create(branch)
        await self.stop(branch.process)
        for instance in (first, second):
            self.assertTrue(processes.alive(instance["pid"]))

        again = await self.start_branch("it", root=branch.root, port=branch.port)
        for instance in (first, second):
            name = instance["name"]
            shown = await self.wait_instance(
                again, name, lambda i: i["state"] == "running", 5,
                f"{name} running after the branch restart",
            )
            self.assertEqual(shown["pid"], instance["pid"])
            self.assertEqual(shown["restarts"], 0)
            stats = await self.stats(again, name)
            self.assertEqual((stats or {}).get("pid"), instance["pid"])
        # Still the same after a few ticks: nothing judged them dead.
        await sleep(2 * INTERVAL + 0.5)
        for instance in (first, second):
            shown = await self.show(again, instance["name"])
            self.assertEqual(
                (shown["state"], shown["pid"], shown["restarts"]),
                ("running", instance["pid"], 0),
            )

    @deferred
    async def test_no_wait_form(self):
        """C{PUT /foo/instances/!/<name>/} answers 202 at once; running soon after."""
        branch = await self.start_branch("it")
        code, _ = await self.request("PUT", branch.url("/foo/"))
        self.assertEqual(code, 201)
        name = f"w{uuid.uuid4().hex[:10]}"
        started = reactor.seconds()
        code, instance = await self.request("PUT", branch.url(f"/foo/instances/!/{name}/"))
        self.assertEqual(code, 202, instance)
        self.assertLess(reactor.seconds() - started, 0.5)
        self.assertEqual(instance["name"], name)
        self.assertIn(instance["state"], ("starting", "stopped"))
        shown = await self.wait_instance(
            branch, name, lambda i: i["state"] == "running", 10, f"{name} running"
        )
        self.assertTrue(processes.alive(shown["pid"]))
        self.assertEqual(shown["restarts"], 0)

    @deferred
    async def test_restart_disable_enable(self):
        """POST …/restart/ gives a new pid; …/disable/ stops; …/enable/ starts."""
        branch = await self.start_branch("it")
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]

        code, shown = await self.request(
            "POST", branch.url(f"/foo/instances/{name}/restart/"), timeout=SLOW
        )
        self.assertEqual(code, 200, shown)
        self.assertEqual(shown["state"], "running", shown)
        self.assertNotIn(shown["pid"], (None, pid))
        self.assertFalse(processes.alive(pid))
        pid = shown["pid"]
        self.assertTrue(processes.alive(pid))

        # Disabling answers once the worker is gone.
        code, shown = await self.request(
            "POST", branch.url(f"/foo/instances/{name}/disable/"), timeout=SLOW
        )
        self.assertEqual(code, 200, shown)
        self.assertFalse(shown["is_enabled"])
        self.assertEqual((shown["state"], shown["pid"]), ("stopped", None), shown)
        await self.wait_gone(pid, 1, f"worker {pid} gone after disable")
        self.assertEqual(worker_processes(branch.instance_dir(name)), [])
        # It stays stopped: no tick starts it again.
        await sleep(INTERVAL + 0.5)
        shown = await self.show(branch, name)
        self.assertEqual((shown["state"], shown["pid"]), ("stopped", None))

        code, shown = await self.request(
            "POST", branch.url(f"/foo/instances/{name}/enable/"), timeout=SLOW
        )
        self.assertEqual(code, 200, shown)
        self.assertTrue(shown["is_enabled"])
        self.assertEqual(shown["state"], "running", shown)
        self.assertNotIn(shown["pid"], (None, pid))
        self.assertTrue(processes.alive(shown["pid"]))


class WorkersAfterBrokerRestartTests(WorkerTestCase):
    """
    Last in the module (trial runs classes in the order of their names): it
    stops and starts the broker.
    """

    timeout = 120

    @deferred
    async def test_broker_restart(self):
        """
        After C{rabbitmqctl stop_app} / C{start_app} the workers consume
        their queues again, and none was restarted for it.
        """
        need_rabbitmqctl()
        branch = await self.start_branch("it", "--wait-after-broker-revived", "5")
        first = await self.create(branch)
        second = await self.create(branch)
        await self.consume(branch, first["name"], self.queue)
        await self.wait_consuming(branch, first["name"], self.queue)

        # Whatever happens, the broker is started again.
        await self.stop_broker()
        down = reactor.seconds()

        # While it is down a live query is a 503 (not a 500), and no
        # worker is judged: a tick later both are still running as before.
        async def unavailable():
            code, body = await self.get(branch, f"/foo/instances/{first['name']}/queues/")
            return body if code == 503 else None

        body = await self.poll(unavailable, 5, "503 from live queues, broker down")
        # Whether the worker was still judged running or no longer, the
        # answer names the broker as the reason.
        self.assertRegex(body["error"], r"broker .*not (connected|reachable)")
        await sleep(INTERVAL + 0.2)
        for instance in (first, second):
            shown = await self.show(branch, instance["name"])
            self.assertEqual((shown["pid"], shown["restarts"]), (instance["pid"], 0), shown)
            self.assertTrue(processes.alive(instance["pid"]))
        await self.start_broker()
        up = reactor.seconds()

        for instance in (first, second):
            name = instance["name"]
            wanted = {f"dq.{name}"} | ({self.queue} if instance is first else set())

            async def consuming(name=name, wanted=wanted):
                queues = await self.live_queues(branch, name)
                return queues if queues is not None and wanted <= set(queues) else None

            await self.poll(consuming, 30, f"{name} consuming {wanted} again", interval=0.2)

        # Past the revival grace period (5 s after the branch reconnected,
        # which is soon after the port is back) the workers are judged
        # again: still the same processes, never restarted.
        await sleep(max(0, up + 5 + 2 * INTERVAL + 0.5 - reactor.seconds()))
        for instance in (first, second):
            shown = await self.show(branch, instance["name"])
            self.assertEqual(
                (shown["state"], shown["pid"], shown["restarts"]),
                ("running", instance["pid"], 0),
                shown,
            )
        result = await self.echo(self.queue, ["after restart"])
        self.assertEqual(result["args"], ["after restart"])
        self.assertEqual(result["hostname"], f"{first['name']}@{HOSTNAME}")
        self.assertLess(up - down, 30)
