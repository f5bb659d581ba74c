"""Real workers under a real branch, driven over HTTP as a user with curl would.

Every test starts ``twistd -n cyme-branch`` processes (the helpers of
L{tests.test_daemon}) against the RabbitMQ on 127.0.0.1:5672, in a virtual
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

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import uuid

import treq
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from cyme.workers import ProcessTable
from tests.test_daemon import DaemonTestCase, deferred, free_port

HOST, PORT = "127.0.0.1", 5672
VHOST = "cyme-it"  # each run has its own: cyme-it-<pid of the run>
RABBITMQCTL = shutil.which("rabbitmqctl")
HOSTNAME = socket.gethostname()

#: Seconds of the branch's supervisor tick and of its TERM → KILL escalation.
INTERVAL = 1
KILL_TIMEOUT = 3
#: How long creating an instance waits for its worker's first pong.
READY_TIMEOUT = 8
#: The client's timeout of the calls that wait for a worker.
SLOW = KILL_TIMEOUT + READY_TIMEOUT + 2

processes = ProcessTable()


def unreachable():
    try:
        socket.create_connection((HOST, PORT), timeout=0.5).close()
    except OSError as e:
        return f"RabbitMQ is not reachable at {HOST}:{PORT}: {e}"
    return None


async def rabbitmqctl(*args):
    """C{(exit code, output)} of C{rabbitmqctl args}."""
    out, err, code = await getProcessOutputAndValue(
        RABBITMQCTL, list(args), env=os.environ
    )
    return code, (out + err).decode("utf-8", "replace")


_vhost = None


async def run_vhost():
    """
    The virtual host of this run: C{cyme-it-<pid>}, made at the first use
    and deleted at exit (and the ones of runs that died are deleted here),
    so that concurrent runs on one broker never share a queue; C{/} when
    there is no C{rabbitmqctl} to make it.
    """
    global _vhost
    if _vhost is not None:
        return _vhost
    if RABBITMQCTL is None:
        _vhost = "/"
        return _vhost
    code, out = await rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers")
    if code != 0:
        raise AssertionError(f"rabbitmqctl list_vhosts failed:\n{out}")
    for name in out.split():
        match = re.fullmatch(re.escape(VHOST) + r"-(\d+)", name)
        if match and not processes.alive(int(match.group(1))):
            await rabbitmqctl("delete_vhost", name)
    vhost = f"{VHOST}-{os.getpid()}"
    if vhost not in out.split():
        code, out = await rabbitmqctl("add_vhost", vhost)
        if code != 0 and "already exists" not in out:
            raise AssertionError(f"rabbitmqctl add_vhost {vhost} failed:\n{out}")
        atexit.register(delete_vhost, vhost)
    code, out = await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    if code != 0:
        raise AssertionError(f"rabbitmqctl set_permissions failed:\n{out}")
    _vhost = vhost
    return _vhost


def delete_vhost(vhost):
    subprocess.run(
        [RABBITMQCTL, "delete_vhost", vhost],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False,
    )


def broker_url(vhost):
    return f"amqp://guest:guest@{HOST}:{PORT}/{'%2F' if vhost == '/' else vhost}"


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


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class Branch:
    """A running branch: its process, root directory and base URL."""

    def __init__(self, process, root, port):
        self.process = process
        self.root = root
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path):
        return self.base + path

    def instance_dir(self, name):
        return os.path.join(self.root, "instances", name)


class WorkerTestCase(DaemonTestCase):
    timeout = 60

    def setUp(self):
        reason = unreachable()
        if reason:
            raise SkipTest(reason)
        super().setUp()
        # Cleanups run last-in first-out: the branches (spawned later) are
        # killed first, so nothing restarts a worker killed here.
        self.addCleanup(lambda: defer.ensureDeferred(self.kill_leftovers()))
        self.branches = 0
        # "tasks" in this run's own virtual host; in the shared "/" (no
        # rabbitmqctl) a name no other worker consumes.
        self.queue = "tasks" if RABBITMQCTL else f"tasks-{uuid.uuid4().hex[:8]}"

    # Processes

    def worker_processes(self, under=None):
        """Pids of live processes whose command line names C{under}."""
        marker = (under or self.cwd).encode()
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

    def group(self, pgid):
        """Live processes of process group C{pgid} (a worker and its pool)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == pgid and processes.alive(int(entry)):
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    async def kill_leftovers(self):
        """Kill every worker (and pool child) this test caused; wait for them."""
        deadline = reactor.seconds() + 5
        while True:
            pids = self.worker_processes()
            if not pids:
                return
            for pid in pids:
                for signum in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.kill(pid, signum)
                    except OSError:
                        pass
            if reactor.seconds() > deadline:
                self.fail(f"worker processes still alive after SIGKILL: {pids}")
            await sleep(0.05)

    # The branch

    async def start_branch(self, root=None, port=None, *options):
        root = root or self.path("root")
        port = port or free_port()
        vhost = await run_vhost()
        # Registered before the spawn, so it runs after the branch was reaped.
        self.branches += 1
        spawned = []
        self.addCleanup(self.save_output, spawned, self.branches)
        process = self.twistd(
            f"127.0.0.1:{port}", "-i", "it", "-D", root,
            "-b", broker_url(vhost),
            "--sup-interval", str(INTERVAL),
            "--kill-timeout", str(KILL_TIMEOUT),
            "--ready-timeout", str(READY_TIMEOUT),
            *options,
        )
        spawned.append(process)
        await self.wait_ping(process, port)
        return Branch(process, root, port)

    def save_output(self, spawned, number):
        """Keep a branch's output in the test's directory, for post-mortems."""
        for process in spawned:
            with open(self.path(f"branch-{number}.log"), "w") as f:
                f.write(process.describe())

    async def poll(self, probe, timeout, what, branch=None, interval=0.1):
        """
        Call the coroutine function C{probe} until it returns something
        other than None; that value.  Fails after C{timeout} seconds with
        the last value seen.
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
                output = f"\nbranch:\n{branch.process.describe()}" if branch else ""
                self.fail(f"{what}: not within {timeout} s (last: {last!r}){output}")
            await sleep(interval)

    async def request(self, method, url, timeout=None, **kwargs):
        """
        L{DaemonTestCase.request}, with a longer client timeout for the
        calls that wait on a worker (restart: the old one stops, up to the
        kill timeout, then the new one answers, up to the ready timeout).
        """
        if timeout is None:
            return await super().request(method, url, **kwargs)
        response = await treq.request(method, url, pool=self.pool, timeout=timeout, **kwargs)
        content = await treq.content(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"],
            f"{method} {url}: {content[:200]!r}",
        )
        return response.code, json.loads(content)

    async def get_json(self, branch, path):
        return await self.request("GET", branch.url(path))

    async def show(self, branch, name, app="foo"):
        code, body = await self.get_json(branch, f"/{app}/instances/{name}/")
        self.assertEqual(code, 200, body)
        return body

    async def wait_instance(self, branch, name, check, timeout, what, app="foo"):
        """Poll the instance's JSON until C{check(instance)}; the instance."""
        seen = []

        async def probe():
            body = await self.show(branch, name, app)
            seen[:] = [body]
            return body if check(body) else None

        try:
            return await self.poll(probe, timeout, what, branch)
        except self.failureException as e:
            raise self.failureException(f"{e}\nlast instance: {seen}") from None

    async def live_queues(self, branch, name, app="foo"):
        code, body = await self.get_json(branch, f"/{app}/instances/{name}/queues/")
        return body if code == 200 else None

    async def stats(self, branch, name, app="foo"):
        code, body = await self.get_json(branch, f"/{app}/instances/{name}/stats/")
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

        return await self.poll(probe, timeout, f"{name} consuming {queue}", branch)

    async def echo(self, queue, args, timeout=15.0):
        url = broker_url(await run_vhost())
        return await threads.deferToThread(run_echo, url, queue, args, timeout)

    async def wait_gone(self, pid, timeout, what):
        async def probe():
            return True if not processes.alive(pid) else None

        await self.poll(probe, timeout, what, interval=0.05)


class WorkerTests(WorkerTestCase):
    @deferred
    async def test_create_consume_task_and_autoscale(self):
        """
        A created instance is a running worker answering stats; a queue it
        is told to consume shows in its live queues and a task published to
        it runs there; autoscale bounds are applied to the live worker.
        """
        branch = await self.start_branch()
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

        stats = await self.poll(scaled, 5, "autoscaler max 3 min 2", branch)
        self.assertEqual(stats["pid"], pid)  # applied live, no restart
        shown = await self.show(branch, name)
        self.assertEqual((shown["pid"], shown["restarts"]), (pid, 0))

    @deferred
    async def test_kill_9_restarts(self):
        """A worker killed with SIGKILL is replaced at once by a new process."""
        branch = await self.start_branch()
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
            lambda: defer.succeed(None if self.group(pid) else True),
            3, f"the pool children of the killed worker {pid} gone", branch,
        )

    @deferred
    async def test_sigstop_replaced(self):
        """
        A worker frozen with SIGSTOP stops answering pings: it is killed
        and replaced within about three ticks plus the kill timeout.
        """
        branch = await self.start_branch()
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
        branch = await self.start_branch()
        instance = await self.create(branch)
        name, pid = instance["name"], instance["pid"]
        directory = branch.instance_dir(name)
        self.assertTrue(os.path.isdir(directory))
        code, body = await self.request("DELETE", branch.url(f"/foo/instances/{name}/"))
        self.assertEqual((code, body), (200, {"ok": "ok"}))
        await self.wait_gone(pid, KILL_TIMEOUT + 3, f"worker {pid} gone after DELETE")

        async def removed():
            return True if not os.path.exists(directory) else None

        await self.poll(removed, 3, f"{directory} removed", branch)
        self.assertEqual(self.worker_processes(directory), [])
        code, _ = await self.get_json(branch, f"/foo/instances/{name}/")
        self.assertEqual(code, 404)

    @deferred
    async def test_branch_restart_adopts_workers(self):
        """
        A branch stopped with SIGTERM leaves its workers running; started
        again on the same root it adopts them: same pids, not restarted.
        """
        branch = await self.start_branch()
        first = await self.create(branch)
        second = await self.create(branch)
        await self.stop(branch.process)
        for instance in (first, second):
            self.assertTrue(processes.alive(instance["pid"]))

        again = await self.start_branch(branch.root, branch.port)
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
        branch = await self.start_branch()
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
        branch = await self.start_branch()
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
        self.assertEqual(self.worker_processes(branch.instance_dir(name)), [])
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
        if RABBITMQCTL is None:
            raise SkipTest("rabbitmqctl is not installed: cannot restart the broker")
        branch = await self.start_branch(None, None, "--wait-after-broker-revived", "5")
        first = await self.create(branch)
        second = await self.create(branch)
        await self.consume(branch, first["name"], self.queue)
        await self.wait_consuming(branch, first["name"], self.queue)

        # Whatever happens, the broker is started again.
        self.addCleanup(lambda: defer.ensureDeferred(self.start_broker()))
        code, out = await rabbitmqctl("stop_app")
        self.assertEqual(code, 0, out)
        down = reactor.seconds()

        # While it is down a live query is a 503 (not a 500), and no
        # worker is judged: a tick later both are still running as before.
        async def unavailable():
            code, body = await self.get_json(branch, f"/foo/instances/{first['name']}/queues/")
            return body if code == 503 else None

        body = await self.poll(unavailable, 5, "503 from live queues, broker down", branch)
        self.assertIn("not connected", body["error"])
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

            await self.poll(consuming, 30, f"{name} consuming {wanted} again", branch, 0.2)

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

    async def start_broker(self):
        """
        C{rabbitmqctl start_app} (retried: it can fail while the node is
        still stopping), then wait for port 5672 to accept connections.
        """
        deadline = reactor.seconds() + 45
        outputs = []
        while True:
            code, out = await rabbitmqctl("start_app")
            outputs.append(f"start_app: exit {code}\n{out}")
            if code == 0 or reactor.seconds() > deadline:
                break
            await sleep(1)
        while unreachable():
            if reactor.seconds() > deadline:
                self.fail(
                    f"RabbitMQ not back on {HOST}:{PORT}:\n" + "\n".join(outputs)
                )
            await sleep(0.1)
