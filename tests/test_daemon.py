"""A real branch: ``twistd -n cyme-branch`` and ``cyme-branch`` processes
started by the tests and spoken to over real HTTP.

Every process is killed (if still running) and waited for in a cleanup.
"""

import json
import os
import signal
import socket
import sys
import uuid
from functools import wraps

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool
from twisted.trial.unittest import TestCase

from tests.vhosts import broker_url, run_vhost

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
CYME_BRANCH = os.path.join(BIN, "cyme-branch")

START_TIMEOUT = 15.0
EXIT_TIMEOUT = 10.0


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deferred(f):
    """Run an C{async def} test method as the Deferred trial waits for."""

    @wraps(f)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(f(*args, **kwargs))

    return wrapper


class BranchProcess(protocol.ProcessProtocol):
    """A child process: its merged output and how it ended."""

    def __init__(self, argv):
        self.argv = argv
        self.chunks = []
        self.status = None
        self._waiters = []

    @property
    def output(self):
        return b"".join(self.chunks).decode("utf-8", "replace")

    @property
    def running(self):
        return self.status is None

    def outReceived(self, data):
        self.chunks.append(data)

    def errReceived(self, data):
        self.chunks.append(data)

    def processEnded(self, reason):
        self.status = reason.value
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.status)

    def ended(self):
        """A Deferred firing with ProcessDone/ProcessTerminated at the end."""
        if self.status is not None:
            return defer.succeed(self.status)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def signal(self, name):
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def describe(self):
        return f"{' '.join(self.argv)}\nstatus: {self.status!r}\noutput:\n{self.output}"


class DaemonTestCase(TestCase):
    timeout = 60
    #: The client's timeout of a request that does not say otherwise.
    http_timeout = 5

    def setUp(self):
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        self.addCleanup(self.pool.closeCachedConnections)
        self.addCleanup(self.kill_workers)
        self.cluster = f"test-{uuid.uuid4().hex[:10]}"

    def kill_workers(self):
        """Workers outlive their branch by design: end the ones tests left."""
        for directory, _, files in os.walk(self.cwd):
            if "worker.pid" in files:
                try:
                    with open(os.path.join(directory, "worker.pid")) as f:
                        pid = int(f.read().strip())
                    os.killpg(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    pass

    def path(self, *names):
        return os.path.join(self.cwd, *names)

    def spawn(self, *argv, env=None):
        """
        Start C{argv}, in the test's directory, with the test's own home
        for cyme's configuration (so the branches of one test share a
        default cluster key, and no test writes to the user's), and
        C{env}'s variables (None: unset).
        """
        env = {"PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": self.path("config"), **(env or {})}
        env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
        process = BranchProcess(list(argv))
        reactor.spawnProcess(process, argv[0], list(argv), env=env, path=self.cwd)
        self.addCleanup(lambda: defer.ensureDeferred(self.reap(process)))
        return process

    async def reap(self, process):
        if process.running:
            process.signal("KILL")
            await self.wait_exit(process)

    async def wait_exit(self, process, timeout=EXIT_TIMEOUT):
        """Wait for C{process} to end; its status (ProcessDone or ProcessTerminated)."""
        d = process.ended()
        timer = reactor.callLater(timeout, d.cancel)
        try:
            status = await d
        except defer.CancelledError:
            self.fail(f"process still running after {timeout} s:\n{process.describe()}")
        timer.cancel()
        return status

    async def stop(self, process):
        """SIGTERM, as an init system would; the exit must be clean."""
        process.signal("TERM")
        status = await self.wait_exit(process)
        # twistd re-raises the signal it stopped on, so a clean stop ends
        # either with status 0 or by SIGTERM itself.
        clean = isinstance(status, ProcessDone) or (
            isinstance(status, ProcessTerminated) and status.signal == signal.SIGTERM
        )
        self.assertTrue(clean, process.describe())
        self.assertNotIn("Traceback", process.output)

    async def exit_status(self, process):
        """The exit code of a process that must end on its own."""
        status = await self.wait_exit(process)
        self.assertIsNone(getattr(status, "signal", None), process.describe())
        return status.exitCode

    async def call(self, method, url, timeout=None, **kwargs):
        """
        C{(code, JSON body, headers)} of a request, within C{timeout}
        seconds (L{http_timeout} if None); every answer must be JSON (no
        body at all for HEAD: None).
        """
        if timeout is None:
            timeout = self.http_timeout
        response = await treq.request(method, url, pool=self.pool, timeout=timeout, **kwargs)
        content = await treq.content(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"application/json"],
            f"{method} {url}: {response.code} {content[:300]!r}",
        )
        if method == "HEAD":
            self.assertEqual(content, b"")
            return response.code, None, response.headers
        # Framed by a length, not chunks: one write per answer.
        self.assertEqual(response.length, len(content), f"{method} {url}")
        return response.code, json.loads(content), response.headers

    async def request(self, method, url, timeout=None, **kwargs):
        """C{(code, json body)}: L{call} without the headers."""
        code, body, _ = await self.call(method, url, timeout, **kwargs)
        return code, body

    async def wait_ping(self, process, port, timeout=START_TIMEOUT):
        """Poll C{GET /ping/} until the branch answers pong."""
        url = f"http://127.0.0.1:{port}/ping/"
        deadline = reactor.seconds() + timeout
        last = None
        while True:
            if not process.running:
                self.fail(f"branch exited before answering:\n{process.describe()}")
            try:
                response = await treq.get(url, pool=self.pool, timeout=2)
                body = await treq.json_content(response)
                if response.code == 200 and body == {"ok": "pong"}:
                    return
                last = (response.code, body)
            except Exception as e:
                last = e
            if reactor.seconds() > deadline:
                self.fail(
                    f"no pong within {timeout} s (last: {last!r}):\n"
                    f"{process.describe()}"
                )
            await deferLater(reactor, 0.1, lambda: None)

    def _isolated(self, options):
        # Every test is a cluster of its own: branches of other tests (or
        # of anyone else on this broker) must not join it.  And its
        # workers, queues and bus live in the run's virtual host, not in
        # the broker's "/".
        options = list(options)
        if not any(o.startswith("--cluster") for o in options):
            options += ["--cluster", self.cluster]
        if not any(o in ("-b", "--broker") or o.startswith("--broker=") for o in options):
            options += ["-b", broker_url(run_vhost("cyme-test"))]
        return options

    def twistd(self, address, *options, env=None):
        return self.spawn(
            TWISTD, "-n", "--pidfile=", "cyme-branch", address, *self._isolated(options),
            env=env,
        )

    def cyme_branch(self, address, *options, env=None):
        return self.spawn(CYME_BRANCH, address, *self._isolated(options), env=env)


class TwistdBranchTests(DaemonTestCase):
    @deferred
    async def test_round_trip_too_large_and_restart(self):
        """
        A real C{twistd -n cyme-branch} serves the API, refuses a body over
        1 MiB and keeps answering, stops on SIGTERM and, started again on the
        same root directory, serves the same state.
        """
        root = self.path("root")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        branch = self.twistd(f"127.0.0.1:{port}", "-i", "t1", "-D", root)
        await self.wait_ping(branch, port)
        self.assertTrue(os.path.isdir(root))

        code, app = await self.request("PUT", f"{base}/foo/")
        self.assertEqual(code, 201)
        self.assertEqual(app["name"], "foo")
        self.assertEqual(app["broker"]["hostname"], "127.0.0.1")

        code, instance = await self.request("POST", f"{base}/foo/instances/")
        self.assertEqual(code, 201)
        name = instance["name"]
        self.assertEqual(len(name), 36)  # a UUID
        self.assertEqual(instance["queues"], [])

        code, queue = await self.request(
            "PUT", f"{base}/foo/queues/tasks/",
            data={"exchange_type": "topic", "routing_key": "tasks.#"},
        )
        self.assertEqual(code, 201)
        self.assertEqual(
            (queue["name"], queue["exchange"], queue["exchange_type"],
             queue["routing_key"]),
            ("tasks", "tasks", "topic", "tasks.#"),
        )

        code, body = await self.request(
            "PUT", f"{base}/foo/instances/{name}/queues/tasks/"
        )
        self.assertEqual((code, body), (201, {"ok": "ok"}))

        code, shown = await self.request("GET", f"{base}/foo/instances/{name}/")
        self.assertEqual(code, 200)
        self.assertEqual(shown["name"], name)
        self.assertEqual(shown["queues"], ["tasks"])
        self.assertEqual(shown["branch"], "t1")
        self.assertEqual(await self.request("GET", f"{base}/"), (200, ["foo"]))
        self.assertEqual(
            await self.request("GET", f"{base}/foo/instances/"), (200, [name])
        )
        self.assertEqual(
            await self.request("GET", f"{base}/foo/queues/"), (200, ["tasks"])
        )

        # A body over 1 MiB: 413 in JSON, nothing stored, the branch lives on.
        code, body = await self.request(
            "PUT", f"{base}/toolarge/",
            data=b"hostname=" + b"x" * (1 << 20),
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
        )
        self.assertEqual(code, 413)
        self.assertIn("error", body)
        self.assertEqual(await self.request("GET", f"{base}/ping/"), (200, {"ok": "pong"}))
        self.assertEqual(await self.request("GET", f"{base}/"), (200, ["foo"]))

        await self.stop(branch)
        with open(os.path.join(root, "state.json")) as f:
            self.assertIn(name, json.load(f)["instances"])

        # The same root again (and the same port): the same state.
        again = self.twistd(f"127.0.0.1:{port}", "-i", "t1", "-D", root)
        await self.wait_ping(again, port)
        self.assertEqual(await self.request("GET", f"{base}/"), (200, ["foo"]))
        code, shown_again = await self.request("GET", f"{base}/foo/instances/{name}/")
        self.assertEqual(code, 200)
        live = ("state", "pid", "restarts", "last_error", "quarantined_until", "live",
                "uptime", "last_pong", "drift")
        self.assertEqual(
            {k: v for k, v in shown_again.items() if k not in live},
            {k: v for k, v in shown.items() if k not in live},
        )
        # The worker outlived the branch and was adopted, not restarted.
        self.assertEqual(
            shown_again["pid"], shown["pid"],
            f"first run:\n{branch.describe()}\nsecond run:\n{again.describe()}",
        )
        code, queue_again = await self.request("GET", f"{base}/foo/queues/tasks/")
        self.assertEqual((code, queue_again), (200, queue))
        code, app_again = await self.request("GET", f"{base}/foo/")
        self.assertEqual((code, app_again), (200, app))
        await self.stop(again)


class ConsoleScriptTests(DaemonTestCase):
    @deferred
    async def test_original_order(self):
        """C{cyme-branch :port -i id -D dir}: options after the address."""
        root = self.path("root")
        port = free_port()
        branch = self.cyme_branch(f"127.0.0.1:{port}", "-i", "s1", "-D", root)
        await self.wait_ping(branch, port)
        base = f"http://127.0.0.1:{port}"
        self.assertEqual(await self.request("GET", f"{base}/"), (200, []))
        with open(os.path.join(root, "branch.lock")) as f:
            self.assertEqual(f.read().strip(), str(branch.transport.pid))
        # No twistd.pid in the working directory: the root is the lock.
        self.assertNotIn("twistd.pid", os.listdir(self.cwd))
        await self.stop(branch)

    @deferred
    async def test_second_branch_on_same_root(self):
        """A second branch on a root in use exits non-zero, saying so."""
        root = self.path("root")
        port = free_port()
        first = self.twistd(f"127.0.0.1:{port}", "-i", "b1", "-D", root)
        await self.wait_ping(first, port)

        for second in [
            self.cyme_branch(f"127.0.0.1:{free_port()}", "-i", "b2", "-D", root),
            self.twistd(f"127.0.0.1:{free_port()}", "-i", "b2", "-D", root),
        ]:
            code = await self.exit_status(second)
            self.assertNotEqual(code, 0, second.describe())
            self.assertIn(
                f"root directory {root} is in use by another cyme-branch "
                f"(pid {first.transport.pid})",
                second.output,
            )
            self.assertNotIn("Traceback", second.output)

        # The first one is unharmed.
        self.assertEqual(
            await self.request("GET", f"http://127.0.0.1:{port}/ping/"),
            (200, {"ok": "pong"}),
        )
        await self.stop(first)


class StartupErrorTests(DaemonTestCase):
    def corrupt_root(self):
        root = self.path("root")
        os.makedirs(root)
        state = os.path.join(root, "state.json")
        with open(state, "wb") as f:
            f.write(b'{"schema": 1, "apps": ')
        return root, state

    @deferred
    async def test_corrupt_state_console_script(self):
        """One line naming the file, no traceback, exit 1, file untouched."""
        root, state = self.corrupt_root()
        process = self.cyme_branch(f"127.0.0.1:{free_port()}", "-D", root)
        self.assertEqual(await self.exit_status(process), 1)
        lines = [line for line in process.output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, process.describe())
        self.assertIn(f"state file {state} is corrupt", lines[0])
        self.assertTrue(lines[0].startswith("cyme-branch: "), lines[0])
        with open(state, "rb") as f:
            self.assertEqual(f.read(), b'{"schema": 1, "apps": ')

    @deferred
    async def test_corrupt_state_twistd(self):
        root, state = self.corrupt_root()
        process = self.twistd(f"127.0.0.1:{free_port()}", "-D", root)
        self.assertNotEqual(await self.exit_status(process), 0)
        self.assertIn(f"state file {state} is corrupt", process.output)
        self.assertNotIn("Traceback", process.output)
        # Not a usage mistake: no option table under the message.
        self.assertNotIn("--instance-dir", process.output)

    @deferred
    async def test_usage_error(self):
        """
        A bad option value prints one line naming it and a pointer to
        --help (not fifty lines of options above it), exit 1.
        """
        for option, says in [
            (("--sup-interval=never",), "cyme-branch: --sup-interval must be a positive number"),
            (("-b", "notaurl"), "cyme-branch: --broker must be an amqp://"),
            (("--bogus",), "cyme-branch: option --bogus not recognized"),
        ]:
            process = self.cyme_branch(":8001", *option, "-D", self.path("r"))
            self.assertEqual(await self.exit_status(process), 1)
            lines = process.output.splitlines()
            self.assertEqual(len(lines), 2, process.describe())
            self.assertTrue(lines[0].startswith(says), lines[0])
            self.assertEqual(lines[1], "Try 'cyme-branch --help' for the options.")
            self.assertFalse(os.path.exists(self.path("r")))

    @deferred
    async def test_port_in_use(self):
        """A port already taken: one log line and exit 1, no traceback."""
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        process = self.cyme_branch(f"127.0.0.1:{port}", "-D", self.path("root"))
        self.assertEqual(await self.exit_status(process), 1)
        self.assertIn("cannot start", process.output)
        self.assertIn("Address already in use", process.output)
        self.assertNotIn("Traceback", process.output)
