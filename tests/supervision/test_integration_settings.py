"""Vetted worker settings, kept secrets and bad records, with real workers.

Real branches (``twistd -n cyme-branch``) and real ``celery worker``
processes on the RabbitMQ of 127.0.0.1:5672, in a virtual host of this
module's own: a task of a module the operator allowed runs in a worker,
a module outside the patterns is refused; ``ps`` of a worker shows no
broker password (its broker user is one made for the test, with a password
of its own); the branch's files are 0600 and its directories 0700; and a
state file holding values no API of this version would write (arguments
that are no command line, a broker host no URL can carry, on an instance
or on an app, whose results the task service then skips) leaves the
branch starting, supervising its other instances and restarting cleanly.
"""

import os
import socket
import stat
import subprocess
import uuid

from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from cyme.state.models import App, Broker, Instance, Queue
from cyme.state.store import JSONFileStore
from tests.integration import (
    IntegrationTestCase, broker_url, processes, run_vhost,
)
from tests.test_daemon import deferred

VHOST = "cyme-it-settings"
SLOW = 20

TASKS = '''
from celery import shared_task


@shared_task(name="cymeit.double")
def double(x):
    return {"double": 2 * x}
'''


def run_task(url, name, queue, args, timeout):
    """In a thread: C{name(*args)} sent to C{queue}, its result through rpc://."""
    from celery import Celery

    client = Celery("cyme-it-settings-client", broker=url, backend="rpc://")
    client.conf.broker_connection_retry_on_startup = True
    try:
        return client.send_task(name, args=args, queue=queue).get(timeout=timeout)
    finally:
        client.close()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class SettingsTestCase(IntegrationTestCase):
    timeout = 90
    vhost_prefix = VHOST
    branch_options = ("--ready-timeout", "8")

    async def create(self, branch, app, name, **params):
        code, body = await self.request(
            "PUT", branch.url(f"/{app}/instances/{name}/"), data=params or None, timeout=SLOW)
        self.assertEqual(code, 201, body)
        self.assertEqual(body["state"], "running", body)
        return body

    async def state_file(self, name):
        """A root directory C{name} for a branch, with its state file written
        by the test: C{(root, its store, the run's broker URL)}."""
        url = broker_url(await run_vhost(VHOST))
        root = self.path(name)
        os.makedirs(root)
        return root, JSONFileStore(os.path.join(root, "state.json")), url


class TaskModuleTests(SettingsTestCase):
    @deferred
    async def test_a_task_of_an_allowed_module_runs_and_others_are_refused(self):
        # The operator installs the task code where the workers import it:
        # here a directory on the branch's PYTHONPATH, which workers inherit.
        code_dir = self.path("taskcode")
        package = f"cymeit{uuid.uuid4().hex[:6]}"
        os.makedirs(os.path.join(code_dir, package))
        with open(os.path.join(code_dir, package, "__init__.py"), "w"):
            pass
        with open(os.path.join(code_dir, package, "tasks.py"), "w") as f:
            f.write(TASKS)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = code_dir + (os.pathsep + old if old else "")
        self.addCleanup(
            lambda: os.environ.__setitem__("PYTHONPATH", old) if old is not None
            else os.environ.pop("PYTHONPATH", None))
        branch = await self.start_branch("it", "--task-module", f"{package}.tasks*")

        code, body = await self.request("PUT", branch.url("/evil/"), json={"imports": ["os"]})
        self.assertEqual(code, 400, body)
        self.assertEqual(body["option"], "os")
        self.assertIn(f"{package}.tasks*", body["error"])
        code, body = await self.request(
            "PUT", branch.url("/evil/"), json={"imports": [f"{package}.other"]})
        self.assertEqual(code, 400, body)
        code, _ = await self.get(branch, "/evil/")
        self.assertEqual(code, 404)

        code, body = await self.request(
            "PUT", branch.url("/foo/"), json={"imports": [f"{package}.tasks"]})
        self.assertEqual(code, 201, body)
        self.assertEqual(body["imports"], [f"{package}.tasks"])
        code, body = await self.request("PUT", branch.url("/foo/queues/jobs/"))
        self.assertEqual(code, 201, body)
        await self.create(branch, "foo", "w1", queues="jobs")
        url = broker_url(await run_vhost(VHOST))
        result = await threads.deferToThread(run_task, url, "cymeit.double", "jobs", [21], 20)
        self.assertEqual(result, {"double": 42})


class SecretTests(SettingsTestCase):
    async def user_url(self):
        """A broker user of this test with a password of its own; its URL."""
        vhost = await run_vhost(VHOST)
        user, password = await self.broker_user(vhost)
        return password, f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"

    @deferred
    async def test_ps_shows_no_password_and_files_are_the_branchs_alone(self):
        password, url = await self.user_url()
        branch = await self.start_branch("it")
        code, body = await self.request("PUT", branch.url("/sec/"), data={"broker": url})
        self.assertEqual(code, 201, body)
        instance = await self.create(branch, "sec", "w1", max_concurrency="2",
                                     min_concurrency="2")
        pid = instance["pid"]
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                                 check=True).stdout
        workers = [line for line in listing.splitlines()
                   if line.split(None, 1)[0] == str(pid) or "w1@" in line]
        self.assertTrue(workers, listing)
        for line in workers:
            self.assertNotIn(password, line)
            self.assertNotIn("amqp://", line)
        self.assertNotIn(password, listing)
        # Yet it reached its broker with it (running: it answered a ping
        # sent there), from its environment.
        self.assertTrue(processes.alive(pid))

        root = branch.root
        directory = os.path.join(root, "instances", "w1")
        self.assertEqual(mode(root), 0o700)
        self.assertEqual(mode(os.path.join(root, "instances")), 0o700)
        self.assertEqual(mode(directory), 0o700)
        files = [os.path.join(root, n) for n in os.listdir(root)
                 if os.path.isfile(os.path.join(root, n))]
        files += [os.path.join(directory, n) for n in os.listdir(directory)]
        self.assertIn(os.path.join(root, "state.json"), files)
        self.assertIn(os.path.join(directory, "worker.log"), files)
        for path in files:
            with self.subTest(path=path):
                self.assertEqual(mode(path), 0o600, path)
        # Nor is it in what the branch and the worker wrote in their logs.
        with open(os.path.join(directory, "worker.log"), encoding="utf-8",
                  errors="replace") as f:
            self.assertNotIn(password, f.read())
        for spawned in self.spawned:
            self.assertNotIn(password, spawned.process.describe())


class BadRecordTests(SettingsTestCase):
    @deferred
    async def test_bad_values_in_the_state_file_do_not_stop_the_branch(self):
        root, store, url = await self.state_file("branch-bad")
        good = Broker.from_url(url)
        # What an older version let through its API.
        store.put_app(App("good", broker=good))
        store.put_app(App("quote", broker=good, arguments='"'))
        store.put_app(App("bracket", broker=good))
        # On the app: the task service's start-up skips it, with a log line.
        store.put_app(App("badbroker", broker=Broker(hostname="[", password="pw-of-bad")))
        store.put_queue("good", Queue("jobs"))
        store.put_instance(Instance("ok", "good"))
        store.put_instance(Instance("bad1", "quote"))
        store.put_instance(Instance("bad2", "bracket", broker=Broker(hostname="[")))
        store.put_instance(Instance("bad3", "good", arguments="--logfile=/tmp/x"))
        store.put_instance(Instance("bad4", "badbroker"))
        del store

        branch = await self.start_branch("it", root=root)
        ok = await self.poll_get(branch, "/good/instances/ok/",
                                 lambda code, body: code == 200 and body["state"] == "running",
                                 15, "the good instance running")
        for app, name, reason in (("quote", "bad1", "command line"),
                                  ("bracket", "bad2", "host name"),
                                  ("good", "bad3", "--logfile"),
                                  ("badbroker", "bad4", "host name")):
            body = await self.poll_get(
                branch, f"/{app}/instances/{name}/",
                lambda code, body: code == 200 and body["last_error"], 10,
                f"{name} failed with its reason")
            self.assertIn(body["state"], ("failed", "quarantined"), body)
            self.assertIn(reason, body["last_error"])
            self.assertIsNone(body["pid"])
        self.assertIn("app badbroker: cannot consume its results", branch.process.output)
        self.assertNotIn("pw-of-bad", branch.process.output)
        # Still supervised: a killed good worker is replaced.
        os.kill(ok["pid"], 9)
        await self.poll_get(
            branch, "/good/instances/ok/",
            lambda code, body: code == 200 and body["state"] == "running"
            and body["pid"] not in (None, ok["pid"]), 10, "the good worker replaced")
        code, replaced = await self.get(branch, "/good/instances/ok/")

        # And it restarts cleanly: the good worker adopted, the bad ones failing alone.
        await self.stop(branch.process)
        again = await self.start_branch("it", root=root, port=branch.port)
        body = await self.poll_get(
            again, "/good/instances/ok/",
            lambda code, body: code == 200 and body["state"] == "running", 10,
            "the good worker adopted")
        self.assertEqual(body["pid"], replaced["pid"])
        code, body = await self.get(again, "/quote/instances/bad1/")
        self.assertEqual(code, 200)
        # Fixed through the API, the bad one starts.
        code, body = await self.request("POST", again.url("/quote/"),
                                         data={"arguments": "-O fair"})
        self.assertEqual(code, 200, body)
        code, body = await self.request("POST", again.url("/quote/instances/bad1/restart/"),
                                         timeout=SLOW)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["state"], "running", body)


class UnrecordedWorkerTests(SettingsTestCase):
    @deferred
    async def test_a_worker_whose_pid_file_cannot_be_written_is_stopped_not_leaked(self):
        root, store, url = await self.state_file("branch-unrecorded")
        store.put_app(App("good", broker=Broker.from_url(url)))
        store.put_instance(Instance("ok", "good"))
        store.put_instance(Instance("unrec", "good"))
        del store
        # Where its pid file goes, a directory: each worker spawned for it
        # cannot be recorded.
        os.makedirs(os.path.join(root, "instances", "unrec", "worker.pid"))

        branch = await self.start_branch("it", root=root)
        await self.poll_get(branch, "/good/instances/ok/",
                            lambda code, body: code == 200 and body["state"] == "running",
                            15, "the good instance running")
        body = await self.poll_get(
            branch, "/good/instances/unrec/",
            lambda code, body: code == 200 and body["state"] == "quarantined", 40,
            "unrec quarantined after its failed starts")
        self.assertIn("cannot start: [Errno 21] Is a directory", body["last_error"])
        self.assertIsNone(body["pid"])
        # Every worker spawned for it was stopped: none runs untracked.
        node = f"unrec@{socket.gethostname()}"
        await deferLater(reactor, 2, lambda: None)
        leaked = [int(p) for p in os.listdir("/proc")
                  if p.isdigit() and processes.is_worker(int(p), node)]
        self.assertEqual(leaked, [])
        code, body = await self.get(branch, "/good/instances/ok/")
        self.assertEqual(body["state"], "running", body)
