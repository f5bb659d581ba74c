"""systemd's notifications, received on a real datagram socket the test binds."""

import os
import socket
import uuid

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme.systemd import Notifier, SystemdNotify, from_environment


class NotifySocket:
    """systemd's side: a datagram socket at a path or in the abstract namespace."""

    def __init__(self, address):
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.socket.setblocking(False)

    def messages(self):
        """Every message received so far, as lists of assignments."""
        found = []
        while True:
            try:
                found.append(self.socket.recv(4096).decode("utf-8").split("\n"))
            except BlockingIOError:
                return found

    def close(self):
        self.socket.close()


class NotifierTests(SynchronousTestCase):
    def bind(self, address):
        server = NotifySocket(address)
        self.addCleanup(server.close)
        return server

    def test_path(self):
        server = self.bind(self.mktemp() + ".sock")
        Notifier(server.address).notify("READY=1", "STATUS=ok")
        self.assertEqual(server.messages(), [["READY=1", "STATUS=ok"]])

    def test_abstract_namespace(self):
        server = self.bind(f"@cyme-test-{uuid.uuid4().hex}")
        Notifier(server.address).notify("WATCHDOG=1")
        self.assertEqual(server.messages(), [["WATCHDOG=1"]])

    def test_a_newline_starts_no_assignment(self):
        # A status made of outside text (an error message) must not be able
        # to say READY=1 or MAINPID=... on its own line.
        server = self.bind(self.mktemp() + ".sock")
        Notifier(server.address).notify("STATUS=broker down\nMAINPID=1")
        self.assertEqual(server.messages(), [["STATUS=broker down MAINPID=1"]])

    def test_socket_bound_anew(self):
        # systemctl daemon-reexec binds the socket again: the next message
        # still arrives (a socket per message).
        path = self.mktemp() + ".sock"
        server = NotifySocket(path)
        notifier = Notifier(path)
        notifier.notify("READY=1")
        server.close()
        os.unlink(path)
        server = self.bind(path)
        notifier.notify("WATCHDOG=1")
        self.assertEqual(server.messages(), [["WATCHDOG=1"]])

    def test_nobody_listening(self):
        with self.assertRaises(OSError):
            Notifier(self.mktemp() + ".sock").notify("READY=1")


class FromEnvironmentTests(SynchronousTestCase):
    def test_nothing_set(self):
        self.assertEqual(from_environment({}, pid=42), (None, None))

    def test_socket_and_watchdog(self):
        environ = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42",
                   "PATH": "/bin"}
        notifier, watchdog = from_environment(environ, pid=42)
        self.assertEqual(notifier.address, "@sd")
        self.assertEqual(watchdog, 3.0)
        # The fork server and the workers are not systemd's to notify.
        self.assertEqual(environ, {"PATH": "/bin"})

    def test_watchdog_of_another_process(self):
        notifier, watchdog = from_environment(
            {"NOTIFY_SOCKET": "/run/sd", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"},
            pid=42)
        self.assertEqual(notifier.address, "/run/sd")
        self.assertIsNone(watchdog)

    def test_bad_watchdog(self):
        for value in ("0", "-5", "soon", ""):
            _, watchdog = from_environment(
                {"NOTIFY_SOCKET": "/run/sd", "WATCHDOG_USEC": value}, pid=42)
            self.assertIsNone(watchdog, value)


class SystemdNotifyTests(SynchronousTestCase):
    def setUp(self):
        self.server = NotifySocket(f"@cyme-test-{uuid.uuid4().hex}")
        self.addCleanup(self.server.close)
        self.clock = Clock()
        self.status = "ready; 1 of 2 instances running"

    def service(self, watchdog=None):
        return SystemdNotify(Notifier(self.server.address), self.clock,
                             status=lambda: self.status, watchdog=watchdog)

    def test_ready_once_the_reactor_runs(self):
        service = self.service()
        service.startService()
        self.assertEqual(self.server.messages(), [])
        self.clock.advance(0)
        self.assertEqual(self.server.messages(),
                         [["READY=1", "STATUS=ready; 1 of 2 instances running"]])

    def test_status_when_it_changes(self):
        service = self.service()
        service.startService()
        self.clock.advance(0)
        self.server.messages()
        self.clock.advance(service.status_interval)
        self.assertEqual(self.server.messages(), [])
        self.status = "not ready: bus broker unreachable; 2 of 2 instances running"
        self.clock.advance(service.status_interval)
        self.assertEqual(self.server.messages(), [[f"STATUS={self.status}"]])

    def test_watchdog_at_half_the_interval(self):
        service = self.service(watchdog=4.0)
        service.startService()
        self.clock.advance(0)
        self.server.messages()
        self.clock.advance(1.9)
        self.assertEqual(self.server.messages(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.server.messages(), [["WATCHDOG=1"]])
        self.clock.advance(2.0)
        self.assertEqual(self.server.messages(), [["WATCHDOG=1"]])

    def test_no_watchdog_unless_asked(self):
        service = self.service()
        service.startService()
        self.clock.advance(0)
        self.server.messages()
        self.clock.pump([1.0] * 30)
        self.assertNotIn(["WATCHDOG=1"], self.server.messages())

    def test_stopping(self):
        service = self.service(watchdog=2.0)
        service.startService()
        self.clock.advance(0)
        self.server.messages()
        service.stopService()
        self.assertEqual(self.server.messages(), [["STOPPING=1", "STATUS=stopping"]])
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.server.messages(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped_before_ready(self):
        service = self.service()
        service.startService()
        service.stopService()
        self.clock.advance(0)
        self.assertEqual(self.server.messages(), [["STOPPING=1", "STATUS=stopping"]])

    def test_systemd_gone(self):
        # A notification that cannot be sent is a warning (one a minute),
        # never an error of the branch.
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = SystemdNotify(Notifier(self.mktemp() + ".sock"), self.clock,
                                watchdog=2.0)
        service.startService()
        self.clock.pump([0] + [1.0] * 30)
        warnings = [e for e in events if e.get("log_namespace") == "cyme.systemd.SystemdNotify"
                    and e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.clock.advance(60)
        warnings = [e for e in events if e.get("log_namespace") == "cyme.systemd.SystemdNotify"
                    and e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertIn("more since the last line", warnings[1]["held"])
