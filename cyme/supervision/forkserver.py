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
"""

import gc
import json
import os
import selectors
import signal
import sys


def preload():
    """Import what every worker imports, before any fork."""
    import celery.app.utils  # noqa: F401
    import celery.apps.worker  # noqa: F401
    import celery.backends.rpc  # noqa: F401
    import celery.bin.base  # noqa: F401
    import celery.bin.worker  # noqa: F401
    import celery.concurrency.prefork  # noqa: F401
    import celery.concurrency.solo  # noqa: F401
    import celery.concurrency.thread  # noqa: F401
    import celery.events  # noqa: F401
    import celery.worker.consumer  # noqa: F401
    import celery.worker.control  # noqa: F401
    import celery.worker.strategy  # noqa: F401
    import kombu.transport.pyamqp  # noqa: F401

    # What every prefork worker imported after the fork, found by listing
    # its modules once it answered: its pool, autoscaler, event and log
    # set-up, and the dbm behind --statedb.
    import billiard.heap  # noqa: F401
    import billiard.popen_fork  # noqa: F401
    import billiard.sharedctypes  # noqa: F401
    import billiard.synchronize  # noqa: F401
    import celery.app.events  # noqa: F401
    import celery.app.log  # noqa: F401
    import celery.worker.autoscale  # noqa: F401
    import celery.worker.components  # noqa: F401
    import celery.worker.consumer.delayed_delivery  # noqa: F401
    import dbm.dumb  # noqa: F401
    import encodings.latin_1  # noqa: F401

    import setproctitle  # noqa: F401

    import cyme.tasks.webhook  # noqa: F401
    import cyme.supervision.workerexec  # noqa: F401


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

        workerexec.run(request["argv"][3:] if request["argv"][1:3] == ["-m", "cyme.supervision.workerexec"]
                       else request["argv"])
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
    # What is imported now is never garbage: out of the collector's sight,
    # a worker's collections neither walk it nor write to its pages.  Each
    # prefork worker runs a full collection before it forks its pool
    # (Celery's AsynPool), which would otherwise walk every object imported
    # here: a tenth of a second of CPU per worker, and the pages it writes
    # copied into the worker.
    gc.collect()
    gc.freeze()
    Server(sys.stdin.fileno(), sys.stdout.fileno()).serve()


if __name__ == "__main__":
    main()
