"""The fork server: ``python -m cyme.supervision.forkserver``, started by the branch.

Most of a worker's start-up is Python importing Celery.  This process
imports Celery's worker machinery once, then keeps one forked *standby*
child waiting: the branch knows the standby's pid in advance, so starting
a worker is one message (its argv, environment, directory and log file),
and the standby becomes that worker at once, in its own session, while the
server forks the next standby.

The protocol is JSON lines.  The branch writes ``{"spawn": <standby pid>,
"argv": [...], "env": {...}, "cwd": ..., "log": ...}``; the server writes
``{"standby": pid}`` whenever a new standby is ready and ``{"exit": pid,
"status": code, "signal": signum}`` when one of its children ends (also
for a spawn whose standby was gone by then).  One standby waits at rest;
``{"standbys": n}`` asks for n more (a burst of workers to start), forked
one at a time between the other messages, so that the first ones are used
while the last are forked.  When
the branch goes away (end of input) the server kills its standbys and
exits; workers, in their own sessions, keep running.  ``{"retire": true}``
makes it fork no more (the branch started a new server, which imports the
code on disk now): its standbys go, and it stays the parent of the workers
it forked, telling of their ends, until the last one ended; then it exits.

It imports nothing that starts threads or opens connections, and never the
app module the workers load (``cyme.tasks.worker`` reads its configuration from
the environment at import, which differs per worker).

Memory: a forked worker shares the server's pages until either writes to
them (copy-on-write).  So the server imports everything a worker and its
prefork pool child import as they start (L{preload}; the tests check that a
forked worker imports nothing else but its app module), runs once on a
throwaway app what each of them runs as it starts whatever its app's
configuration (L{warm}), and freezes its objects then (C{gc.freeze()}):
the workers' garbage collections skip what they inherited instead of
writing into every page of it.  A worker freezes its own objects likewise
as it forks its first pool children (L{cyme.supervision.workerexec}).
With 20 idle prefork workers (bench/memory.py), the warming saved about
16 MiB of the 500 they held in all (PSS), a third of it cffi's C parser.
"""

import gc
import json
import os
import selectors
import signal
import sys


#: What a worker imports as it starts, but its app module: its command and
#: Celery's worker, its app's parts, pool, consumer and state db
#: (L{STATE_DB}), the host name encoding of its broker connection...
PRELOAD = (
    "celery.app.amqp", "celery.app.control", "celery.app.events", "celery.app.log",
    "celery.app.routes", "celery.app.utils", "celery.apps.worker", "celery.backends.rpc",
    "celery.bin.base", "celery.bin.worker", "celery.concurrency.prefork",
    "celery.concurrency.solo", "celery.concurrency.thread", "celery.events",
    "celery.fixups.django", "celery.worker.autoscale", "celery.worker.components",
    "celery.worker.consumer", "celery.worker.consumer.delayed_delivery",
    "celery.worker.control", "celery.worker.strategy",
    "kombu.matcher", "kombu.pidbox", "kombu.transport.pyamqp",
    "billiard.popen_fork", "billiard.sharedctypes", "billiard.synchronize",
    "contextvars", "encodings.idna", "encodings.latin_1", "shelve",
    "setproctitle",
    "cyme.tasks.webhook", "cyme.supervision.workerexec",
)
#: The modules C{dbm.open} tries, in its order: the first one present opens
#: a worker's C{--statedb}.
STATE_DB = ("dbm.gnu", "dbm.ndbm", "dbm.dumb")
#: A prefork pool child sets its parent-death signal through cffi when cffi
#: is installed (billiard), which imports cffi's C parser.
POOL_CHILD_OPTIONAL = ("cffi.cparser",)


def preload():
    """Import what every worker and pool child imports, before any fork."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for name in STATE_DB:
        try:
            importlib.import_module(name)
            break
        except ImportError:
            continue
    for name in POOL_CHILD_OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: the pool child does without


def warm():
    """
    Run once, on a throwaway app, what every worker runs as it starts
    whatever its app's configuration: Celery's configuration defaults, the
    app's finalizing (its built-in tasks), its AMQP, control and events
    parts, the broker transport's class, the parsing of the worker's
    command line.  What they build and cache (settings, interned strings,
    classes made on the fly) then lives in pages the workers share, rather
    than being built again in each worker.  Nothing connects, starts a
    thread or touches a global the workers use: the app is not made
    current, and its event loop, pool and logging are never made.
    """
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    app = Celery("cyme-warm", set_as_current=False)
    app.conf.update(broker_url="amqp://guest:guest@localhost:5672//",
                    result_backend="rpc://", accept_content=["json"])
    app.finalize(auto=True)
    app.amqp.queues.select_add("warm")
    app.amqp.router
    app.control.mailbox
    app.events
    app.WorkController
    app.Worker
    with app.connection_for_write() as connection:
        connection.transport_cls
        connection.transport  # the transport's object: no connection is made
    # The worker's options as cyme writes them (the values do not matter).
    context = worker.make_context(
        "worker", ["-n", "warm@localhost", "-Q", "warm", "-P", "prefork",
                   "--autoscale=1,1", "--without-mingle", "--without-gossip", "-E",
                   "-l", "info"],
        obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True),
    )
    context.close()
    # A prefork pool child sets its parent-death signal through cffi, when
    # installed, which builds cffi's C parser (tables of some size) first:
    # built here once, each child only looks it up.
    from billiard.util import get_pdeathsig

    try:
        get_pdeathsig()
    except OSError:
        pass  # not Linux: the pool children do without as well


def _become_worker(read_fd, keep=()):
    """In the standby: wait for the worker's description, then run it."""
    data = b""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read_fd)
    if not data:
        os._exit(0)  # the server went away before using us
    request = json.loads(data)
    code = 0
    try:
        # Named like an exec'd worker (its node name included), so that
        # ps shows what it is and a restarted branch recognises it.
        import setproctitle

        setproctitle.setproctitle(" ".join(request["argv"]))
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from cyme.supervision import workerexec

        argv = request["argv"]
        workerexec.run(argv[3:] if argv[1:3] == ["-m", "cyme.supervision.workerexec"] else argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


class Server:
    def __init__(self, stdin, stdout):
        self.stdin = stdin
        self.stdout = stdout
        #: Standby pid -> the write end of its pipe, oldest first.
        self.standbys = {}
        #: Standbys asked for and not forked yet.
        self.wanted = 0
        self.children = set()
        self.retired = False
        wake_r, self.wake_w = os.pipe()
        self.wake_r = wake_r
        os.set_blocking(wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def say(self, message):
        os.write(self.stdout, json.dumps(message).encode("utf-8") + b"\n")

    def fork_standby(self):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The standby keeps nothing of the server's but its own pipe.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # The server's pipes to the branch are replaced, not closed, so
            # that the descriptors stay taken until the worker's own land.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (self.stdin, self.stdout):
                os.dup2(null, fd)
            os.close(null)
            for fd in (self.wake_r, self.wake_w, write_fd, *self.standbys.values()):
                try:
                    os.close(fd)
                except OSError:
                    pass
            _become_worker(read_fd)
        os.close(read_fd)
        self.children.add(pid)
        self.standbys[pid] = write_fd
        self.say({"standby": pid})

    def handle(self, request):
        if request.get("retire"):
            self.retire()
        elif "standbys" in request:
            if not self.retired:
                self.wanted += max(0, int(request["standbys"]))
        else:
            self.spawn(request)

    def _release_standbys(self):
        for write_fd in self.standbys.values():
            os.close(write_fd)  # the standby reads nothing and exits
        released, self.standbys = list(self.standbys), {}
        return released

    def retire(self):
        """Fork no more; exit once the last child ended."""
        self.retired = True
        self.wanted = 0
        self._release_standbys()

    def spawn(self, request):
        pid = request.get("spawn")
        write_fd = self.standbys.pop(pid, None)
        if write_fd is None:
            # Gone before it was told what to be (killed, and reaped): the
            # branch hears that its worker ended.
            self.say({"exit": pid, "status": 1, "signal": None,
                      "error": "the standby was gone"})
            return
        payload = json.dumps(request).encode("utf-8")
        try:
            while payload:
                payload = payload[os.write(write_fd, payload):]
        except OSError:
            pass  # dying as it was told (a TERM in the same breath): reap tells
        finally:
            os.close(write_fd)
        if not self.standbys and not self.wanted and not self.retired:
            self.fork_standby()

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            write_fd = self.standbys.pop(pid, None)
            if write_fd is not None:
                # A standby died unused (killed by someone): a new one.
                os.close(write_fd)
                if not self.retired:
                    self.wanted += 1
            if os.WIFSIGNALED(status):
                self.say({"exit": pid, "status": None, "signal": os.WTERMSIG(status)})
            else:
                self.say({"exit": pid, "status": os.WEXITSTATUS(status), "signal": None})

    def serve(self):
        self.fork_standby()
        selector = selectors.DefaultSelector()
        selector.register(self.stdin, selectors.EVENT_READ, "input")
        selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        buffer = b""
        while not (self.retired and not self.children):
            # Standbys still wanted are forked one a turn: a spawn that
            # comes meanwhile is not kept waiting for all of them.
            for key, _ in selector.select(0 if self.wanted else None):
                if key.data == "signal":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                chunk = os.read(self.stdin, 65536)
                if not chunk:
                    self.shutdown()
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle(json.loads(line))
            self.reap()
            if self.wanted and not self.retired:
                self.wanted -= 1
                self.fork_standby()

    def shutdown(self):
        for pid in self._release_standbys():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def main():
    preload()
    try:
        warm()
    except Exception:
        # Only memory is at stake: a Celery whose start-up changed must not
        # keep the server from forking (its output is the branch's log).
        import traceback

        traceback.print_exc()
    # Once, after the imports: what every standby inherits is left out of
    # its garbage collections (see the module's docstring).  Frozen objects
    # are never collected, so freezing again at each fork would keep for
    # ever whatever garbage the server had at that moment.
    gc.freeze()
    Server(sys.stdin.fileno(), sys.stdout.fileno()).serve()


if __name__ == "__main__":
    main()
