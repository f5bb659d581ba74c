"""Rolling restarts on real branches, real workers and the real RabbitMQ.

Two ``twistd -n cyme-branch`` processes form one cluster (the helpers of
L{tests.integration}) in a virtual host of this module's own
(``cyme-it-rolling-<pid>``), so that the Celery pings this test sends
itself reach its own workers only.  Its workers use the threads pool: a
worker running a task still answers pings, so a worker that does not
answer is one that is down.

The first test restarts four instances (two per branch) while a steady
stream of queued URLs goes to them, and watches how many answer, with
pings of its own (six watchers side by side, each look waiting half a
second for answers, one beginning every eighth of a second); the second
changes an allowed task module on disk between two restarts and sees the
replacements run the new code, forked by a new fork server.  Skipped, with
the reason, only when nothing listens on 127.0.0.1:5672 for 20 s.
"""

import os
import uuid

from twisted.internet import defer, reactor, threads

from tests.integration import (
    IntegrationTestCase, broker_url, command_lines, processes, run_vhost, sleep,
)
from tests.supervision.test_integration_settings import run_task
from tests.tasks.test_integration_tasks import Target, delete_queues
from tests.test_daemon import deferred

VHOST = "cyme-it-rolling"
QUEUE = "tasks"


def ping_nodes(url, timeout):
    """In a thread: the node names that answered one Celery ping within C{timeout} s."""
    pinger = Pinger(url)
    try:
        return pinger.ping(timeout)
    finally:
        pinger.close()


class Pinger:
    """
    A Celery client kept connected between its pings (each from a thread),
    so that a look costs its timeout and little more.
    """

    def __init__(self, url):
        from celery import Celery

        self.client = Celery("cyme-it-rolling-pinger", broker=url)
        self.client.conf.broker_connection_retry_on_startup = True

    def ping(self, timeout):
        """The node names that answered one ping within C{timeout} s."""
        # A late answer to an earlier ping carries that ping's ticket: not counted.
        return sorted(name for reply in self.client.control.ping(timeout=timeout)
                      for name in reply)

    def close(self):
        self.client.close()


#: Watchers pinging side by side, seconds each look waits for answers,
#: and seconds between the beginnings of two looks (of two watchers).
WATCHERS = 6
LOOK = 0.5
STEP = 0.125


def parent_of(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def fork_servers(branch_pid):
    """The pids of the fork servers the branch C{branch_pid} started (alive)."""
    found = []
    for pid, argv in command_lines():
        try:
            if (b"cyme.supervision.forkserver" in argv and parent_of(pid) == branch_pid
                    and processes.alive(pid)):
                found.append(pid)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return sorted(found)


class RollingTestCase(IntegrationTestCase):
    timeout = 240
    broker_wait = 20
    vhost_prefix = VHOST
    http_timeout = 20
    branch_options = ("--ready-timeout", "15")

    async def set_up(self):
        await super().set_up()
        self.tag = uuid.uuid4().hex[:6]

    async def clear_broker(self):
        url = broker_url(await run_vhost(VHOST))
        await threads.deferToThread(delete_queues, url, [QUEUE, "jobs"])

    async def start_cluster(self, *options, env=None):
        """Branches a and b of this test, seeing each other."""
        # The queued URLs go to the test's target on loopback: opened as an operator does.
        options = ("--webhook-allow", "127.0.0.1", *options)
        nodes = [await self.spawn_branch(f"{n}-{self.tag}", *options, env=env)
                 for n in ("a", "b")]
        for node in nodes:
            await self.wait_ping(node.process, node.port)
        ids = sorted(n.id for n in nodes)
        for node in nodes:
            await self.poll_get(node, "/branches/", lambda code, body: body == ids, 15,
                                f"{node.id} sees both branches")
        return nodes

    async def create(self, via, name, branch, **params):
        """A running instance (threads pool) on C{branch}, created through C{via}."""
        code, body = await self.request(
            "PUT", via.url(f"/foo/instances/{name}/?branch={branch.id}"),
            data={"pool": "threads", "max_concurrency": "2", **params}, timeout=30)
        self.assertEqual(code, 201, body)
        if body["state"] != "running":
            body = await self.poll_get(
                via, f"/foo/instances/{name}/",
                lambda code, body: code == 200 and body["state"] == "running", 20,
                f"{name} running")
        self.assertEqual(body["branch"], branch.id)
        return body

    async def restart(self, via, coordinator, **params):
        """C{POST /foo/restart/} on C{coordinator}; its progress, once done, read on C{via}."""
        code, body, headers = await self.call(
            "POST", coordinator.url("/foo/restart/"), data=params or None)
        self.assertEqual(code, 202, body)
        self.assertEqual(headers.getRawHeaders(b"location"),
                         [f"/restarts/{body['id']}/".encode()])
        return await self.poll_get(
            via, f"/restarts/{body['id']}/",
            lambda code, body: code == 200 and body["state"] != "running", 120,
            "the rolling restart finished", )


class RollingRestartTests(RollingTestCase):
    @deferred
    async def test_four_instances_under_a_stream_of_queued_urls(self):
        """
        Four instances on two branches are restarted one at a time while
        URLs are queued every 0.1 s, each taking 0.3 s to answer: no task
        is lost, at least three workers answer every look (at least five,
        beginning about 0.125 s apart) throughout, and every instance has
        a new worker.
        """
        target = Target()
        port = target.listen()
        self.addCleanup(lambda: defer.ensureDeferred(target.close()))
        a, b = await self.start_cluster()
        await self.ok("PUT", a, "/foo/", data={"allowed_hosts": "127.0.0.1"})
        await self.ok("PUT", b, f"/foo/queues/{QUEUE}/")
        names = [f"r{i}-{self.tag}" for i in range(1, 5)]
        before = {}
        for name, owner in zip(names, (a, a, b, b)):
            before[name] = await self.create(a, name, owner, queues=QUEUE)
        url = broker_url(await run_vhost(VHOST))
        nodes = sorted(i["node"] for i in before.values())
        self.assertEqual(await threads.deferToThread(ping_nodes, url, 2.0), nodes)

        queued, answering, streaming = [], [], [True]

        async def stream():
            n = 0
            while streaming[0]:
                via = (a, b)[n % 2]
                target_url = f"http://127.0.0.1:{port}/slow?delay=0.3&n={n}"
                code, body = await self.request(
                    "GET", via.url(f"/foo/queue/{QUEUE}/{target_url}"))
                self.assertEqual(code, 202, body)
                queued.append((n, body["uuid"], reactor.seconds()))
                n += 1
                await sleep(0.1)

        first = reactor.seconds() + 0.2

        async def watch(n):
            # Watcher n takes slots n, n + WATCHERS, ... of a grid of STEP
            # seconds (skipping one it is well past), so that looks begin
            # about STEP apart however long each one takes.
            pinger = Pinger(url)
            try:
                slot = n
                while streaming[0]:
                    await sleep(max(0, first + slot * STEP - reactor.seconds()))
                    start = reactor.seconds()
                    answered = await threads.deferToThread(pinger.ping, LOOK)
                    answering.append((start, reactor.seconds(),
                                      len(set(answered) & set(nodes))))
                    slot += WATCHERS
                    while first + slot * STEP < reactor.seconds() - STEP / 2:
                        slot += WATCHERS
            finally:
                await threads.deferToThread(pinger.close)

        running = [defer.ensureDeferred(stream())]
        running += [defer.ensureDeferred(watch(n)) for n in range(WATCHERS)]
        await sleep(1)
        began = reactor.seconds()
        done = await self.restart(b, a)
        ended = reactor.seconds()
        await sleep(1)
        streaming[0] = False
        await defer.gatherResults(running)

        self.assertEqual(done["state"], "done", done)
        self.assertEqual(done["fork_servers"], {a.id: "replaced", b.id: "replaced"})
        self.assertEqual([i["name"] for i in done["instances"]], names)
        for step in done["instances"]:
            self.assertEqual(step["state"], "done", step)
            self.assertEqual(step["old_pid"], before[step["name"]]["pid"])
            self.assertNotEqual(step["pid"], step["old_pid"])
            self.assertFalse(processes.alive(step["old_pid"]))
            self.assertTrue(processes.alive(step["pid"]))
        # Every look that overlapped the restart saw at least three of the
        # four answer.  A look samples the workers when its ping goes out,
        # so looks must begin close together for a second worker out at
        # once to show: they begin about STEP apart as a rule (the median
        # gap; a loaded machine may stall every watcher at once now and
        # then, which the median allows).
        during = sorted((start, end, count) for start, end, count in answering
                        if start <= ended and end >= began)
        self.assertGreaterEqual(len(during), 5, (began, ended, answering))
        self.assertGreaterEqual(min(count for _, _, count in during), 3,
                                (began, ended, during))
        starts = [start for start, _, _ in during]
        gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
        self.assertLessEqual(gaps[len(gaps) // 2], 0.3, (began, ended, during))

        # Not one queued URL lost: every task succeeded, and the target saw
        # each request (a task redelivered after a stop may come twice).
        # URLs kept coming while workers were replaced (one each 0.1 s plus
        # the request's own time; the restart lasts a second or more).
        self.assertGreaterEqual(
            len([n for n, _, when in queued if began <= when <= ended]), 5, queued)
        for n, task_id, _ in queued:
            code, body = await self.request(
                "GET", a.url(f"/foo/query/{task_id}/wait/?timeout=30"), timeout=40)
            self.assertEqual((code, body["state"]), (200, "SUCCESS"), (n, body))
            self.assertEqual(body["result"]["status_code"], 200)
        seen = {int(r["args"]["n"][0]) for r in target.find("/slow")}
        self.assertEqual(seen, {n for n, _, _ in queued})
        # The restart of each took its warm stop and its start.
        self.assertTrue(all(0 < s["seconds"] < 30 for s in done["instances"]), done)


TASKS = '''
from celery import shared_task


@shared_task(name="cymeit.version")
def version():
    return {version!r}
'''


class CodeOnDiskTests(RollingTestCase):
    def write_tasks(self, package, version):
        with open(os.path.join(self.code_dir, package, "tasks.py"), "w") as f:
            f.write(TASKS.format(version=version))

    @deferred
    async def test_replacements_run_the_task_code_on_disk_now(self):
        """
        An allowed task module changed on disk between two rolling
        restarts: after each, every task runs the code written before it,
        in workers forked by a fork server started after it.
        """
        self.code_dir = self.path("taskcode")
        package = f"cymeroll{self.tag}"
        os.makedirs(os.path.join(self.code_dir, package))
        with open(os.path.join(self.code_dir, package, "__init__.py"), "w"):
            pass
        self.write_tasks(package, "first")
        a, b = await self.start_cluster("--task-module", f"{package}.tasks",
                                        env={"PYTHONPATH": self.code_dir})
        await self.ok("PUT", a, "/foo/", json={"imports": [f"{package}.tasks"]})
        await self.ok("PUT", a, "/foo/queues/jobs/")
        for name, owner in ((f"v1-{self.tag}", a), (f"v2-{self.tag}", b)):
            await self.create(a, name, owner, queues="jobs")
        url = broker_url(await run_vhost(VHOST))

        async def versions():
            return {await threads.deferToThread(run_task, url, "cymeit.version", "jobs", [], 20)
                    for _ in range(6)}

        self.assertEqual(await versions(), {"first"})
        servers = {n.id: fork_servers(n.process.transport.pid) for n in (a, b)}
        self.assertEqual([len(s) for s in servers.values()], [1, 1], servers)

        for version in ("second, longer", "third"):
            self.write_tasks(package, version)
            done = await self.restart(a, b)
            self.assertEqual(done["state"], "done", done)
            self.assertEqual(await versions(), {version})
            for node, step in zip((a, b), done["instances"]):
                [server] = await self.poll(
                    lambda: fork_servers(node.process.transport.pid) or None
                    if len(fork_servers(node.process.transport.pid)) == 1 else None,
                    10, f"one fork server on {node.id}")
                # A new server, parent of the new worker; the old one ended
                # with its last worker.
                self.assertNotIn(server, servers[node.id])
                self.assertEqual(parent_of(step["pid"]), server)
                servers[node.id] = [server]
