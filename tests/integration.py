"""Helpers of the integration tests: real branches, real workers, the real
RabbitMQ on 127.0.0.1:5672.

Shared by L{tests.supervision.test_integration_workers}, L{tests.tasks.test_integration_tasks}
and L{tests.operations.test_integration_cluster}, on top of the processes and HTTP of
L{tests.test_daemon}.  Not a test module (trial loads only C{test_*}):

  - the broker: whether it listens (L{unreachable}, L{broker_back}),
    L{rabbitmqctl}, the run's own virtual host of a module (L{run_vhost},
    from L{tests.vhosts}) and L{broker_url};
  - processes: the live workers whose command line names a directory
    (L{worker_processes}) and the members of a process group (L{group});
  - L{Branch}, a running branch, and L{IntegrationTestCase}: skipped
    without a broker, starts branches with these tests' supervisor
    settings, requests and polls over HTTP, stops and starts the broker,
    and kills every worker of the test (workers outlive their branch by
    design) in its cleanups.
"""

import json
import os
import signal
import socket
import uuid

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from cyme.supervision.workers import ProcessTable
from tests import systemtools, vhosts
from tests.test_daemon import DaemonTestCase, free_port
from tests.vhosts import HOST, PORT, RABBITMQCTL, broker_url, made_vhost  # noqa: F401


#: Seconds of the branches' supervisor tick and of a worker's TERM → KILL.
INTERVAL = 1
KILL_TIMEOUT = 3

processes = ProcessTable()


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


# The broker


def unreachable():
    """None if something listens on the broker's port, else why not."""
    try:
        socket.create_connection((HOST, PORT), timeout=0.5).close()
    except OSError as e:
        return f"RabbitMQ is not reachable at {HOST}:{PORT}: {e}"
    return None


async def broker_back(timeout):
    """
    None once RabbitMQ accepts connections (within C{timeout} seconds: others
    may be restarting it; 0: asked once), else why not.
    """
    deadline = reactor.seconds() + timeout
    while True:
        reason = unreachable()
        if reason is None or reactor.seconds() >= deadline:
            return reason
        await sleep(0.5)


def need_rabbitmqctl():
    """
    The path of rabbitmqctl, for a test that restarts the broker or makes
    users on it; else a skip (a failure in CI: L{tests.systemtools.need}).
    """
    return systemtools.need("rabbitmqctl", "rabbitmq-server")


async def rabbitmqctl(*args):
    """C{(exit code, output)} of C{rabbitmqctl args}."""
    out, err, code = await getProcessOutputAndValue(RABBITMQCTL, list(args), env=os.environ)
    return code, (out + err).decode("utf-8", "replace")


async def run_vhost(prefix):
    """L{tests.vhosts.run_vhost}, for the tests written with C{await}."""
    return vhosts.run_vhost(prefix)


# Processes


def command_lines():
    """C{(pid, argv)} of every process whose command line can be read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                yield int(entry), f.read().split(b"\0")
        except OSError:
            continue


def worker_processes(under):
    """Pids of the live workers whose command line names C{under}."""
    marker = under.encode()
    return [pid for pid, argv in command_lines()
            if b"cyme.supervision.workerexec" in argv and any(marker in a for a in argv)
            and processes.alive(pid)]


def group(pgid):
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


# Branches


class Branch:
    """A running branch: its id, process, root directory, port and URLs."""

    def __init__(self, branch_id, process, root, port, url=None):
        self.id = branch_id
        self.process = process
        self.root = root
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        #: The URL it gives the others: its C{--url}, else its own.
        self.advertised = url or f"{self.base}/"

    def url(self, path):
        return self.base + path

    def instance_dir(self, name):
        return os.path.join(self.root, "instances", name)

    def journal(self):
        """The lines of the branch's results journal."""
        try:
            with open(os.path.join(self.root, "results.jsonl"), "rb") as f:
                # A line being written may not be whole yet: not read.
                return [json.loads(line) for line in f if line.endswith(b"\n")]
        except FileNotFoundError:
            return []


class IntegrationTestCase(DaemonTestCase):
    """
    A L{DaemonTestCase} on the real broker: skipped (with the reason) when
    nothing listens on 127.0.0.1:5672; every branch it started is killed in
    a cleanup (by L{DaemonTestCase}), its output saved in the test's
    directory, then every worker the test caused, then L{clear_broker}.
    """

    #: Seconds C{setUp} waits for a broker that does not answer (others
    #: may be restarting it) before the test is skipped.
    broker_wait = 0
    #: The prefix of the run's virtual host of the branches (L{run_vhost});
    #: None: the branches' default broker.
    vhost_prefix = None
    #: Options of every branch of the class, before the ones of the call.
    branch_options = ()
    #: The client's timeout of L{get}; None: L{DaemonTestCase.http_timeout}.
    get_timeout = None
    #: Whether L{ok} also requires a whole answer: no C{Cyme-Missing-Branches}.
    whole_answers = False

    def setUp(self):
        return defer.ensureDeferred(self.set_up())

    async def set_up(self):
        reason = await broker_back(self.broker_wait)
        if reason:
            raise SkipTest(reason)
        # Cleanups run last-in first-out: these two run last, after the
        # branches (spawned later: nothing restarts a worker killed here)
        # and after DaemonTestCase's worker.pid sweep, which misses a
        # worker whose directory a stopping branch already removed.
        self.addCleanup(lambda: defer.ensureDeferred(self.clear_broker()))
        self.addCleanup(lambda: defer.ensureDeferred(self.kill_leftovers()))
        super().setUp()
        self.spawned = []
        self.addCleanup(self.save_output)

    async def broker_user(self, vhost, prefix="cymeit"):
        """
        A broker user of this test, with a password of its own, that may use
        C{vhost} alone (deleted in a cleanup); C{(user, password)}.
        """
        need_rabbitmqctl()
        user, password = f"{prefix}-{os.getpid()}", f"pw-{uuid.uuid4().hex}"
        code, out = await rabbitmqctl("add_user", user, password)
        self.assertEqual(code, 0, out)
        self.addCleanup(lambda: defer.ensureDeferred(rabbitmqctl("delete_user", user)))
        code, out = await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        self.assertEqual(code, 0, out)
        return user, password

    async def clear_broker(self):
        """What the test left on the broker, once its workers are gone: nothing here."""

    # Processes

    async def kill_leftovers(self):
        """
        Kill every worker this test caused (its process group too, stopped
        ones included); wait for them.
        """
        deadline = reactor.seconds() + 5
        while True:
            pids = worker_processes(self.cwd)
            if not pids:
                return
            for pid in pids:
                for kill, signum in (
                    (os.killpg, signal.SIGKILL),
                    (os.kill, signal.SIGKILL),
                    (os.kill, signal.SIGCONT),
                ):
                    try:
                        kill(pid, signum)
                    except OSError:
                        pass
            if reactor.seconds() > deadline:
                self.fail(f"worker processes still alive after SIGKILL: {pids}")
            await sleep(0.05)

    def save_output(self):
        """Each branch's output in the test's directory, for post-mortems."""
        for n, branch in enumerate(self.spawned):
            with open(self.path(f"branch-{branch.id}-{n}.log"), "w") as f:
                f.write(branch.process.describe())

    def outputs(self):
        return "".join(
            f"\n--- branch {b.id}:\n{b.process.describe()[-4000:]}" for b in self.spawned
        )

    # Branches

    async def spawn_branch(self, branch_id, *options, root=None, port=None, url=None,
                           env=None):
        """
        C{twistd -n cyme-branch} with id C{branch_id} (root C{branch-<id>}
        and a free port unless given), on the run's virtual host (if the
        class has one), with the supervisor settings of these tests, its
        C{--url} if given, then L{branch_options} and C{options}, and the
        environment's variables C{env} (L{DaemonTestCase.spawn}).  Not
        waited for: L{start_branch} is.
        """
        root = root or self.path(f"branch-{branch_id}")
        port = port or free_port()
        argv = ["-i", branch_id, "-D", root]
        if self.vhost_prefix is not None:
            argv += ["-b", broker_url(await run_vhost(self.vhost_prefix))]
        argv += ["--sup-interval", str(INTERVAL), "--kill-timeout", str(KILL_TIMEOUT)]
        if url is not None:
            argv += ["--url", url]
        process = self.twistd(f"127.0.0.1:{port}", *argv, *self.branch_options, *options,
                              env=env)
        branch = Branch(branch_id, process, root, port, url)
        self.spawned.append(branch)
        return branch

    async def start_branch(self, branch_id, *options, root=None, port=None, url=None,
                           env=None):
        """L{spawn_branch}, answering C{GET /ping/}."""
        branch = await self.spawn_branch(branch_id, *options, root=root, port=port, url=url,
                                         env=env)
        await self.wait_ping(branch.process, branch.port)
        return branch

    # HTTP

    async def get(self, branch, path):
        """C{(code, JSON body)} of C{GET path} on C{branch}."""
        return await self.request("GET", branch.url(path), timeout=self.get_timeout)

    async def ok(self, method, branch, path, expected=(200, 201), **kwargs):
        """A request that must succeed (completely, if L{whole_answers}): its body."""
        code, body, headers = await self.call(method, branch.url(path), **kwargs)
        self.assertIn(code, expected, f"{method} {path} on {branch.id}: {body}")
        if self.whole_answers:
            self.assertIsNone(
                headers.getRawHeaders(b"cyme-missing-branches"),
                f"{method} {path} on {branch.id}: partial answer",
            )
        return body

    # Waiting

    async def poll(self, probe, timeout, what, interval=0.1):
        """
        Call C{probe} (a coroutine function or a plain one) until it returns
        something other than None; that value.  Fails after C{timeout}
        seconds with the last error seen and the branches' output.
        """
        deadline = reactor.seconds() + timeout
        last = None
        while True:
            try:
                value = probe()
                if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
                    value = await value
            except Exception as e:
                value, last = None, e
            if value is not None:
                return value
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {timeout} s (last: {last!r}){self.outputs()}")
            await sleep(interval)

    async def poll_get(self, branch, path, check, timeout, what):
        """Poll C{GET path} on C{branch} until C{check(code, body)}; the body."""
        seen = []

        async def probe():
            code, body = await self.get(branch, path)
            seen[:] = [(code, body)]
            return body if check(code, body) else None

        try:
            return await self.poll(probe, timeout, what)
        except self.failureException as e:
            raise self.failureException(f"last answer: {seen}\n{e}") from None

    async def wait_gone(self, pid, timeout, what, directory=None):
        """Wait for C{pid} to end (and C{directory} to be removed)."""

        async def probe():
            if processes.alive(pid):
                return None
            if directory is not None and os.path.exists(directory):
                return None
            return True

        await self.poll(probe, timeout, what, interval=0.05)

    # The broker

    async def stop_broker(self):
        """
        C{rabbitmqctl stop_app}, which must succeed; whatever happens next,
        the broker is started again in a cleanup.
        """
        self.addCleanup(lambda: defer.ensureDeferred(self.start_broker()))
        code, out = await rabbitmqctl("stop_app")
        self.assertEqual(code, 0, out)

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
                self.fail(f"RabbitMQ not back on {HOST}:{PORT}:\n" + "\n".join(outputs))
            await sleep(0.1)
