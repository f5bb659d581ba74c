"""systemd's service notifications from the branch: READY, STATUS, WATCHDOG, STOPPING.

Under a ``Type=notify`` unit systemd names a datagram socket in
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace); a
message is one datagram of ``KEY=value`` lines (sd_notify(3)).
L{SystemdNotify} says ``READY=1`` once every service of the branch started
(its state loaded, its workers adopted, its API listening) and the reactor
runs, ``STATUS=`` with its readiness and instance counts whenever they
change, ``WATCHDOG=1`` from the reactor at half of ``$WATCHDOG_USEC`` (a
reactor that hangs is restarted by systemd), and ``STOPPING=1`` as the
branch stops.

The protocol is written here rather than taken from a library: sdnotify
0.3.2 (the pure-Python client, last released in 2017) connects its socket
once, when it is made; measured with the same calls on this machine, once
the notification socket is bound anew (``systemctl daemon-reexec``) every
later send fails with ECONNREFUSED, which sdnotify swallows, so the watchdog
would kill a healthy branch.  A socket per message, as libsystemd's own
sd_notify does, has no such state.  systemd-python needs libsystemd's
headers and a compiler to install.
"""

import os
import socket

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cyme import logs

#: What the environment tells a service of systemd (unset once read: the
#: fork server and the workers are not systemd's to notify).
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notifications to systemd's socket at C{address}."""

    def __init__(self, address):
        #: As given: a path, or C{@name} in the abstract namespace.
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address

    def notify(self, *assignments):
        """
        Send C{assignments} (C{"READY=1"}, C{"STATUS=..."}) as one message;
        OSError if it cannot be sent.  A newline within one would start
        another assignment: it is a space.
        """
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            # A full queue on systemd's side loses this message, never
            # blocks the reactor.
            s.setblocking(False)
            s.sendto(message, self._target)


def from_environment(environ=None, pid=None):
    """
    C{(Notifier, watchdog seconds)} from systemd's variables, each None when
    not set (the watchdog also when it watches another pid); the variables
    are removed from C{environ} (the process's by default).
    """
    environ = os.environ if environ is None else environ
    values = {name: environ.pop(name, None) for name in ENVIRONMENT}
    address = values["NOTIFY_SOCKET"]
    if not address or address in ("@", "/"):
        return None, None
    watchdog = None
    watched = values["WATCHDOG_PID"]
    if values["WATCHDOG_USEC"] and (not watched or watched == str(pid or os.getpid())):
        try:
            usec = int(values["WATCHDOG_USEC"])
        except ValueError:
            usec = 0
        watchdog = usec / 1e6 if usec > 0 else None
    return Notifier(address), watchdog


class SystemdNotify(service.Service):
    """
    The branch's notifications to systemd: added last to the branch, so
    started once everything else started and stopped first.

    C{status} gives the text of C{STATUS=} (asked every C{status_interval}
    seconds, sent when it changed); C{watchdog} is C{$WATCHDOG_USEC} in
    seconds, or None.
    """

    name = "systemd"
    log = Logger(observer=logs.observer)

    def __init__(self, notifier, clock, status=None, watchdog=None, status_interval=5.0):
        self.notifier = notifier
        self._clock = clock
        self._status = status
        self.watchdog = watchdog
        self.status_interval = status_interval
        self._ready_call = None
        self._loops = []
        self._last_status = None
        self._failures = logs.Occasional(clock, 60.0)

    def startService(self):
        super().startService()
        # At the reactor's first turn: twistd starts the services before it
        # runs the reactor, which serves nothing until then.
        self._ready_call = self._clock.callLater(0, self._ready)

    def stopService(self):
        super().stopService()
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._send("STOPPING=1", "STATUS=stopping")

    def _ready(self):
        self._ready_call = None
        self._send("READY=1", *self._status_assignment())
        self._every(self.status_interval, self.update_status)
        if self.watchdog is not None:
            self._every(self.watchdog / 2, self._send, "WATCHDOG=1")
        self.log.info("told systemd the branch is ready ({socket}){watchdog}",
                      socket=self.notifier.address,
                      watchdog="" if self.watchdog is None
                      else f"; watchdog every {self.watchdog / 2:g} s")

    def _every(self, seconds, f, *args):
        loop = LoopingCall(f, *args)
        loop.clock = self._clock
        loop.start(seconds, now=False)
        self._loops.append(loop)

    def update_status(self):
        """Send C{STATUS=} if it changed since it was last sent."""
        assignment = self._status_assignment()
        if assignment:
            self._send(*assignment)

    def _status_assignment(self):
        if self._status is None:
            return []
        try:
            text = self._status()
        except Exception:
            self.log.failure("cannot tell systemd the branch's status")
            return []
        if text == self._last_status:
            return []
        self._last_status = text
        return [f"STATUS={text}"]

    def _send(self, *assignments):
        try:
            self.notifier.notify(*assignments)
        except OSError as e:
            held = self._failures.due()
            if held is not None:
                self.log.warn("cannot notify systemd at {socket}: {error}{held}",
                              socket=self.notifier.address, error=e,
                              held=f" ({held} more since the last line)" if held else "")
