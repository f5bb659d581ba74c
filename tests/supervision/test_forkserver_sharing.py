"""What a worker forked by the fork server shares with it (memory).

A worker shares the fork server's pages until either writes to them, so
the server imports before forking whatever a worker and its pool child
import as they start, and the garbage collectors skip what they inherited.
The real fork server forks a real prefork worker on the real RabbitMQ,
whose app (L{tests.supervision.importprobe}) tells what it found.
"""

import json
import os
import signal
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from cyme.supervision.launcher import ForkServerLauncher
from tests.integration import broker_back, run_vhost
from tests.supervision.test_launcher import Recorder
from tests.vhosts import broker_url

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ForkedWorkerSharingTests(TestCase):
    timeout = 120

    async def until(self, predicate, seconds):
        for _ in range(int(seconds / 0.1)):
            if predicate():
                return True
            await deferLater(reactor, 0.1, lambda: None)
        return predicate()

    async def reports(self):
        """The probe's reports, by role, of a prefork worker the fork server forked."""
        reason = await broker_back(30)
        if reason is not None:
            raise SkipTest(reason)
        broker = broker_url(await run_vhost("cyme-forkserver"))
        launcher = ForkServerLauncher(reactor)
        launcher.startService()
        self.addCleanup(launcher.stopService)
        if not await self.until(lambda: launcher.standbys, 15):
            self.fail("no standby from the fork server")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        out = os.path.join(directory, "probe.jsonl")
        argv = [sys.executable, "-m", "cyme.supervision.workerexec",
                "-A", "tests.supervision.importprobe", "-b", broker, "worker",
                "-n", f"probe{os.getpid()}@h", "-P", "prefork", "--autoscale=1,1",
                "--without-mingle", "--without-gossip", "-E",
                "--statedb", os.path.join(directory, "worker.state"), "-l", "info"]
        env = {"PATH": os.environ["PATH"], "CYME_PROBE_OUT": out}
        # From the repository's root, where Celery finds the probe's module.
        process = launcher.spawn(Recorder(), argv, env, REPO,
                                 os.path.join(directory, "worker.log"))
        self.addCleanup(_kill_group, process.pid)

        def lines():
            try:
                with open(out) as f:
                    return [json.loads(line) for line in f]
            except OSError:
                return []

        if not await self.until(lambda: len(lines()) >= 2, 60):
            with open(os.path.join(directory, "worker.log"), errors="replace") as f:
                self.fail(f"the probe did not report: {lines()}\n{f.read()[-3000:]}")
        return {line["role"]: line for line in lines()}

    async def test_a_forked_worker_imports_nothing_the_server_did_not(self):
        """
        Neither the worker nor its pool child imports a module as it starts
        (but its app module): each would be a private copy in every worker.
        """
        reports = await self.reports()
        self.assertEqual(reports["worker"]["imported"], [],
                         "imported by the worker: add them to forkserver.PRELOAD")
        self.assertEqual(reports["pool child"]["imported"], [],
                         "imported by the pool child: add them to forkserver.PRELOAD")

    async def test_inherited_objects_are_left_out_of_garbage_collections(self):
        """
        The worker's collector skips the fork server's objects, and its pool
        child's skips the worker's too: collections write into every object
        they look at, which would copy the pages they share.
        """
        reports = await self.reports()
        frozen_by_server = reports["worker"]["frozen_at_import"]
        self.assertGreater(frozen_by_server, 10000)
        self.assertGreater(reports["pool child"]["frozen"], frozen_by_server)

    def test_the_preload_never_imports_the_workers_app(self):
        """
        The app module reads each worker's configuration at import, and a
        rolling restart's new task code must reach the workers it starts.
        """
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from cyme.supervision import forkserver; "
             "forkserver.preload(); print(sorted(m for m in sys.modules if m.startswith("
             "'cyme.tasks.worker')))"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        self.assertEqual(done.stdout.strip(), "[]")

    def test_the_warming_leaves_nothing_a_worker_would_inherit_and_use(self):
        """
        The server runs a throwaway app's start-up before forking: it must
        not import the workers' app, start a thread, open a socket, make
        its app the current one or set kombu's event loop, which every
        forked worker would then share with the others.
        """
        done = subprocess.run(
            [sys.executable, "-c", _WARM_PROBE], capture_output=True, text=True,
            timeout=60, check=True,
        )
        self.assertEqual(json.loads(done.stdout), {
            "app module": [], "threads": 1, "sockets": 0, "current app": False,
            "event loop": False,
        })

    def test_a_server_whose_warming_fails_still_forks_workers(self):
        """
        The warming runs Celery's own start-up code, which a new Celery may
        change: failing, it costs memory, never the fork server.
        """
        done = subprocess.run(
            [sys.executable, "-c", "import celery; celery.Celery = None; "
             "from cyme.supervision import forkserver; forkserver.main()"],
            input="", capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("standby", json.loads(done.stdout.splitlines()[0]))
        self.assertIn("TypeError", done.stderr)


_WARM_PROBE = """
import json, os, sys, threading
from cyme.supervision import forkserver
forkserver.preload()
forkserver.warm()
from celery import _state
from kombu.asynchronous import get_event_loop
fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
       if os.path.exists(f"/proc/self/fd/{fd}")]
print(json.dumps({
    "app module": sorted(m for m in sys.modules if m.startswith("cyme.tasks.worker")),
    "threads": threading.active_count(),
    "sockets": sum(f.startswith("socket:") for f in fds),
    "current app": getattr(_state._tls, "current_app", None) is not None,
    "event loop": get_event_loop() is not None,
}))
"""


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass  # gone already
