"""The branch under systemd, for real: the units in contrib/systemd checked
by ``systemd-analyze verify``, a real branch's notifications received on a
datagram socket this test binds, and socket activation through
``systemd-socket-activate``.  A test whose tool is missing is skipped,
saying so (failed under CI: L{tests.systemtools.need}).
"""

import os
import re
import socket
import subprocess
import sys
import uuid

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from tests.systemtools import need
from tests.test_daemon import (
    CYME_BRANCH, BranchProcess, DaemonTestCase, deferred, free_port,
)

UNITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "contrib", "systemd")


def unit_settings(path):
    """C{{key: [values]}} of a unit file (continuation lines joined)."""
    settings = {}
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(" ".join(value.split()))
    return settings


class UnitTests(SynchronousTestCase):
    def setUp(self):
        self.service = unit_settings(os.path.join(UNITS, "cyme-branch.service"))
        self.socket = unit_settings(os.path.join(UNITS, "cyme-branch.socket"))

    def test_systemd_analyze_verify(self):
        analyze = need("systemd-analyze", "systemd")
        # Copies whose ExecStart names this tree's cyme-branch: verify checks
        # that the command exists.
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("cyme-branch.service", "cyme-branch.socket"):
            with open(os.path.join(UNITS, name), encoding="utf-8") as f:
                text = f.read().replace("/opt/cyme/.venv/bin/cyme-branch", CYME_BRANCH)
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text)
        done = subprocess.run(
            [analyze, "verify", os.path.join(directory, "cyme-branch.service"),
             os.path.join(directory, "cyme-branch.socket")],
            capture_output=True, text=True, timeout=60)
        # verify exits 0 on unknown keys and bad values: it only says so.
        self.assertEqual((done.returncode, done.stderr.strip()), (0, ""), done.stdout)

    def test_notify_and_hardened(self):
        s = self.service
        self.assertEqual(s["Type"], ["notify"])
        self.assertEqual(s["WatchdogSec"], ["30"])
        # A restart of the branch leaves its workers to be adopted.
        self.assertEqual(s["KillMode"], ["process"])
        for key in ("NoNewPrivileges", "PrivateTmp"):
            self.assertEqual(s[key], ["yes"], key)
        self.assertEqual(s["ProtectSystem"], ["strict"])

    def test_writable_root_and_cluster_key(self):
        s = self.service
        writable = " ".join(s["ReadWritePaths"]).split()
        environment = dict(v.split("=", 1) for v in " ".join(s["Environment"]).split())
        root = re.search(r" -D (\S+)", s["ExecStart"][0]).group(1)
        for path in (root, os.path.join(environment["HOME"], ".cyme"),
                     os.path.join(environment["XDG_CONFIG_HOME"], "cyme")):
            self.assertTrue(any(path == w or path.startswith(w.rstrip("/") + "/")
                                for w in writable), f"{path} is not writable: {writable}")

    def test_the_socket_is_the_services(self):
        name = self.socket["FileDescriptorName"][0]
        self.assertIn(f"--http systemd:domain=INET6:name={name}", self.service["ExecStart"][0])
        self.assertIn("cyme-branch.socket", self.service["Requires"][0])


class NotifySocket:
    """systemd's end: a datagram socket in the abstract namespace."""

    def __init__(self):
        self.address = f"@cyme-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.address[1:])
        self.socket.setblocking(False)
        self.received = []

    def read(self):
        while True:
            try:
                self.received.append(self.socket.recv(4096).decode("utf-8").split("\n"))
            except BlockingIOError:
                return self.received


class SystemdBranchTests(DaemonTestCase):
    timeout = 90

    def spawn_with(self, argv, **env):
        """A child process with C{env} added to the test's environment."""
        process = BranchProcess(list(argv))
        reactor.spawnProcess(process, argv[0], list(argv), path=self.cwd,
                             env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
        self.addCleanup(lambda: defer.ensureDeferred(self.reap(process)))
        return process

    async def until(self, probe, timeout, what, process):
        deadline = reactor.seconds() + timeout
        while True:
            value = probe()
            if value:
                return value
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {timeout} s\n{process.describe()}")
            await deferLater(reactor, 0.05, lambda: None)

    @deferred
    async def test_notifications(self):
        """
        READY=1 with a STATUS once the branch answers, WATCHDOG=1 at half of
        WATCHDOG_USEC, STOPPING=1 on SIGTERM; the workers' environment has
        no NOTIFY_SOCKET.
        """
        server = NotifySocket()
        self.addCleanup(server.socket.close)
        port = free_port()
        argv = [CYME_BRANCH, f"127.0.0.1:{port}", "-D", self.path("root"),
                *self._isolated(["--sup-interval", "1"])]
        branch = self.spawn_with(argv, NOTIFY_SOCKET=server.address, WATCHDOG_USEC="1000000")
        await self.until(lambda: any("READY=1" in m for m in server.read()), 20,
                         "READY=1", branch)
        ready = next(m for m in server.received if "READY=1" in m)
        # It listens by then.
        await self.wait_ping(branch, port, timeout=2)
        status = [a for a in ready if a.startswith("STATUS=")]
        self.assertEqual(len(status), 1, ready)
        self.assertRegex(status[0], r"^STATUS=(not )?ready.* 0 of 0 instances running$")
        count = len(server.received)
        await deferLater(reactor, 1.6, lambda: None)
        watchdogs = [m for m in server.read()[count:] if m == ["WATCHDOG=1"]]
        self.assertGreaterEqual(len(watchdogs), 2, server.received)
        # The bus connects: the status says the branch is ready.
        await self.until(lambda: any(a == "STATUS=ready; 0 of 0 instances running"
                                     for m in server.read() for a in m), 20,
                         "STATUS=ready", branch)
        await self.stop(branch)
        self.assertIn(["STOPPING=1", "STATUS=stopping"], server.read())

    @deferred
    async def test_socket_activation(self):
        """
        systemd-socket-activate holds the listening socket and starts the
        branch on the first connection; the branch adopts the socket
        (--http systemd:...:name=...) and serves on it.
        """
        activate = need("systemd-socket-activate", "systemd")
        port = free_port()
        argv = [activate, "-l", f"127.0.0.1:{port}", "--fdname=cyme-http",
                "-E", "PYTHONUNBUFFERED=1",
                CYME_BRANCH, "--http", "systemd:domain=INET:name=cyme-http",
                "--url", f"http://127.0.0.1:{port}/", "-D", self.path("root"),
                *self._isolated([])]
        branch = self.spawn_with(argv)
        # It listens before the branch runs: the first request starts it.
        await self.until(lambda: _listening(port), 10, "listening", branch)
        await self.wait_ping(branch, port)
        code, health = await self.request("GET", f"http://127.0.0.1:{port}/health/")
        self.assertIn(code, (200, 503))
        self.assertEqual(health["instances"], {"running": 0, "total": 0})
        # The branch is the process systemd-socket-activate became.
        with open(f"/proc/{branch.transport.pid}/cmdline", "rb") as f:
            self.assertIn(b"cyme-branch", f.read())
        await self.stop(branch)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


if sys.platform != "linux":  # the abstract namespace and systemd are Linux's
    del SystemdBranchTests
