"""How the supervisor starts a worker process: exec it, or ask the fork server.

``ExecLauncher`` spawns ``python -m cyme.supervision.workerexec …`` with the reactor.
``ForkServerLauncher`` (a Service) runs ``python -m cyme.supervision.forkserver``,
which has Celery imported already and a standby child waiting: the worker
starts without paying for Python's imports (see L{cyme.supervision.forkserver}).  It
falls back to exec while the fork server is not ready, and for the pools
that must patch the standard library before anything is imported
(eventlet, gevent).  Many workers at once (a fleet created after a deploy)
wait for standbys rather than being exec'd: the launcher asks the server
for as many as were held back (L{ForkServerLauncher.can_start}), which
forks them in milliseconds, where each exec'd worker would import Celery
again, a second of CPU or more on a machine that is busy already.  Both
hand the supervisor a process transport with the worker's pid at once
and call its protocol's C{processEnded} when the worker ends, so the
supervisor does not know which one it has.
"""

import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cyme import logs
from cyme.listeners import Listeners
from cyme.supervision.interfaces import ILauncher


@implementer(ILauncher)
class ExecLauncher:
    """Each worker a new Python process, its output appended to its log."""

    def __init__(self, reactor):
        self.reactor = reactor

    def add_orphan_listener(self, listener):
        """Nothing to tell: the reactor's children stay its children."""

    def can_start(self, argv):
        """Always: nothing faster is to come."""
        return True

    def add_ready_listener(self, listener):
        """Nothing holds a worker back, so nothing is told."""

    def renew(self):
        """Nothing to replace: every worker is a new Python process already."""
        return defer.succeed(False)

    def spawn(self, protocol, argv, env, path, log_path):
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            return self.reactor.spawnProcess(
                protocol, argv[0], argv, env=env, path=path,
                childFDs={0: "w", 1: log_fd, 2: log_fd},
            )
        finally:
            os.close(log_fd)


@implementer(IProcessTransport)
class InertProcessTransport:
    """
    A process transport with no pipes: a worker's output goes to its log
    file and it reads nothing, so there is nothing to write or close.
    """

    def closeStdin(self):
        pass

    def closeStdout(self):
        pass

    def closeStderr(self):
        pass

    def closeChildFD(self, descriptor):
        pass

    def writeToChild(self, childFD, data):
        pass

    def loseConnection(self):
        pass

    def write(self, data):
        pass

    def writeSequence(self, data):
        pass

    def getPeer(self):
        return None

    def getHost(self):
        return None


class ForkedProcess(InertProcessTransport):
    """A worker the fork server started; signals go straight to its pid."""

    def __init__(self, pid, protocol):
        self.pid = pid
        self.proto = protocol
        self.ended = False

    def signalProcess(self, signalID):
        if self.ended:
            raise error.ProcessExitedAlready()
        signum = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL,
                  "INT": signal.SIGINT}.get(signalID, signalID)
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            raise error.ProcessExitedAlready() from None

    def end(self, status, signum):
        if self.ended:
            return
        self.ended = True
        if signum is None and status == 0:
            reason = error.ProcessDone(0)
        else:
            reason = error.ProcessTerminated(status, signum)
        self.proto.processEnded(Failure(reason))


class _ServerProtocol(ProcessProtocol):
    """
    A fork server's pipes: a JSON message a line on its stdout.  Its
    callbacks are told which server (its process transport) spoke: a
    retired server still tells of its workers' ends.
    """

    def __init__(self, message, ended, log):
        self._on_message = message
        self._on_ended = ended
        self._log = log
        self.buffer = b""

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    message = json.loads(line)
                except ValueError:
                    self._log.warn("fork server said {line!r}", line=line[:200])
                    continue
                self._on_message(self.transport, message)

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self._log.warn("fork server: {line}", line=line)

    def processEnded(self, reason):
        self._on_ended(self.transport, reason)


@implementer(ILauncher)
class ForkServerLauncher(service.Service):
    """
    Workers forked from a process that imported Celery already.

    L{renew} replaces that process with a new one, which imports the code
    on disk now; the old one forks no more and ends with its last worker.
    """

    log = Logger(observer=logs.observer)
    name = "forkserver"
    exec_only_pools = ("eventlet", "gevent")

    def __init__(self, reactor, python=sys.executable, restart_delay=1.0,
                 standby_patience=10.0):
        self.reactor = reactor
        self.python = python
        self.restart_delay = restart_delay
        #: Seconds workers are held back for standbys while none comes (a
        #: server stuck) before they are exec'd.  A new server's first
        #: standby comes after its imports, which an exec'd worker would
        #: pay for as well.
        self.standby_patience = standby_patience
        self.fallback = ExecLauncher(reactor)
        self._orphans = Listeners("orphaned worker")
        self._ready_listeners = Listeners("launcher ready")
        #: The current server's process transport, and its standbys' pids.
        self._server = None
        self._standbys = []
        #: Standbys the server forks and has not told of yet; workers held
        #: back since the last ask; since when standbys are awaited (the
        #: last one that came, or the ask).
        self._coming = self._held = 0
        self._waiting_since = None
        self._ask = None
        self._impatient = False
        #: Server (current or retired) -> {pid: ForkedProcess} it forked.
        self._children = {}
        #: Server (current or retired) -> a Deferred fired when it ends.
        self._ends = {}
        #: Who waits for the current server's standby (L{renew}).
        self._ready = []
        self._restart = None

    def startService(self):
        super().startService()
        self._start_server()

    def _start_server(self):
        self._restart = None
        self._forget_standbys()
        self._await(1)  # its first standby, once it imported Celery
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._server = self.reactor.spawnProcess(
            _ServerProtocol(self._message, self._server_ended, self.log), self.python,
            [self.python, "-m", "cyme.supervision.forkserver"], env=env,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self._children[self._server] = {}
        self._ends[self._server] = defer.Deferred()

    def add_orphan_listener(self, listener):
        """
        Call C{listener(pid)} for each worker left running when the fork
        server, its parent, ends: from then on only its pid tells of it.
        """
        self._orphans.add(listener)

    @property
    def standbys(self):
        """The pids of the current server's standbys, next to be used first."""
        return tuple(self._standbys)

    def add_ready_listener(self, listener):
        """Call C{listener()} when standbys came for workers held back."""
        self._ready_listeners.add(listener)

    def can_start(self, argv):
        """
        Whether to start a worker of C{argv} now: yes with a standby
        waiting, or when none is to come (no server, or one silent for
        C{standby_patience} s: exec'd); else no, and the server is asked
        for one more standby.
        """
        if self._standbys or self._server is None or _pool(argv) in self.exec_only_pools:
            return True
        if (self._waiting_since is not None
                and self.reactor.seconds() - self._waiting_since > self.standby_patience):
            if not self._impatient:
                self._impatient = True
                self.log.warn("no standby from the fork server for {seconds:g} s: "
                              "starting workers as new processes meanwhile",
                              seconds=self.standby_patience)
            return True
        self._held += 1
        if self._ask is None or not self._ask.active():
            # One message for every worker a converge round holds back.
            self._ask = self.reactor.callLater(0, self._ask_standbys)
        return False

    def _ask_standbys(self):
        self._ask = None
        held, self._held = self._held, 0
        more = held - self._coming
        if more <= 0 or self._server is None:
            return
        self._await(more)
        try:
            self._server.write(json.dumps({"standbys": more}).encode("utf-8") + b"\n")
        except Exception:
            pass  # it is ending: its end is reported, and workers are exec'd

    def _await(self, more):
        if not self._coming:
            self._waiting_since = self.reactor.seconds()
        self._coming += more

    def _forget_standbys(self):
        self._standbys = []
        self._coming = self._held = 0
        self._waiting_since = None
        self._impatient = False

    def stopService(self):
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self._ask is not None and self._ask.active():
            self._ask.cancel()
        self._release_ready(False)
        ends = list(self._ends.items())
        # End of input: each server lets its standby go and exits; workers,
        # in their own sessions, keep running.
        for server, _ in ends:
            server.closeStdin()
        return defer.DeferredList([d for _, d in ends], consumeErrors=True)

    def renew(self):
        """
        Replace the fork server by a new one, so that every worker started
        from now on runs the code on disk now (a new Celery, new task
        code); fires once the new server's standby is ready (workers are
        exec'd until then).  The old server forks no more: it stays the
        parent of the workers it forked, telling of their ends, and exits
        after the last one.
        """
        if not self.running:
            return defer.succeed(False)
        old = self._server
        if old is not None:
            self.log.info("replacing the fork server (pid {pid}): it ends with its "
                          "last worker", pid=old.pid)
            try:
                old.write(b'{"retire": true}\n')
            except Exception:
                pass  # it is ending anyway: its end is reported as any
        elif self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._start_server()
        d = defer.Deferred(self._ready.remove)
        self._ready.append(d)
        return d

    def _release_ready(self, ready=True):
        waiting, self._ready = self._ready, []
        for d in waiting:
            d.callback(ready)

    def spawn(self, protocol, argv, env, path, log_path):
        if not self._standbys or self._server is None or _pool(argv) in self.exec_only_pools:
            return self.fallback.spawn(protocol, argv, env, path, log_path)
        pid = self._standbys.pop(0)
        if not self._standbys and not self._coming:
            self._await(1)  # the server forks the next one at once
        request = {"spawn": pid, "argv": argv, "env": env, "cwd": path, "log": log_path}
        self._server.write(json.dumps(request).encode("utf-8") + b"\n")
        process = ForkedProcess(pid, protocol)
        self._children[self._server][pid] = process
        protocol.makeConnection(process)
        return process

    def _message(self, server, message):
        current = server is self._server
        if "standby" in message:
            if current:  # a retired server's last standby is going anyway
                self._standbys.append(message["standby"])
                self._coming = max(0, self._coming - 1)
                self._waiting_since = self.reactor.seconds() if self._coming else None
                self._impatient = False
                self._release_ready()
                self._ready_listeners.notify()
        elif "exit" in message:
            if current and message["exit"] in self._standbys:
                # Died unused: the server forks another.
                self._standbys.remove(message["exit"])
                self._await(1)
            process = self._children.get(server, {}).pop(message["exit"], None)
            if process is not None:
                process.end(message.get("status"), message.get("signal"))
        if "error" in message:
            self.log.error("fork server: {error}", error=message["error"])

    def _server_ended(self, server, reason):
        # Its workers run on, no longer anyone's children here: the
        # supervisor watches them by pid from now on.
        for pid in self._children.pop(server, {}):
            self._orphans.notify(pid)
        ended = self._ends.pop(server, None)
        if ended is not None:
            ended.callback(None)
        if server is not self._server:
            return  # a retired server, gone after its last worker
        self._server = None
        self._forget_standbys()
        if self.running:
            self.log.warn("fork server ended ({reason}); restarting it",
                          reason=reason.getErrorMessage())
            self._restart = self.reactor.callLater(self.restart_delay, self._start_server)


def _pool(argv):
    return argv[argv.index("-P") + 1] if "-P" in argv else "prefork"
