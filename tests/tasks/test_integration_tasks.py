"""Queued URLs end to end: real branches, real workers, a real HTTP target.

Every test starts ``twistd -n --pidfile= cyme-branch`` processes (the
helpers of L{tests.integration}, each test with a ``--cluster`` of its own)
on the RabbitMQ at 127.0.0.1:5672, in a virtual host of this run
(``cyme-tasks-it-<pid>``, made with ``rabbitmqctl``, deleted at exit), and
real ``celery worker`` instances (solo pool) consuming the declared queue
C{tasks}.  Branch ids are unique per test, so that each test has result
queues of its own, and the C{tasks} queue is deleted after each test.

The target of the queued URLs is a Twisted HTTP server in the test process
(L{Target}), on 127.0.0.1 and a port of its own (which the branches'
operator opens to the apps' C{allowed_hosts}: C{--webhook-allow
127.0.0.1:<its port>}, and no other loopback port), which records every
request it gets (method, path, query arguments, headers, body) and answers
per path: 200 text, 201 JSON, 404, 500, binary, slow, or held until the
test releases it.

The tests are skipped, with the reason, only when nothing listens on
127.0.0.1:5672 for 20 s (others may be restarting it).  Branches are killed in the cleanups, then every worker of
the test (workers outlive their branch by design), then the C{tasks} queue
is deleted.  The broker restart test always starts RabbitMQ again in a
cleanup.
"""

import base64
import json
import os
import shutil
import signal
import socket
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import treq
from twisted.internet import defer, reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web import resource, server

from tests.integration import (
    INTERVAL,
    IntegrationTestCase,
    broker_back,
    broker_url,
    made_vhost,
    need_rabbitmqctl,
    rabbitmqctl,
    sleep,
)
from tests.test_daemon import deferred, free_port

VHOST = "cyme-tasks-it"  # each run has its own: cyme-tasks-it-<pid>
CURL = shutil.which("curl")
QUEUE = "tasks"

VERBS = ("HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "PATCH", "CONNECT")
BINARY = bytes(range(256)) * 4
JSON_BODY = '{"name": "Kramer", "tags": ["é", "\\u2603"], "n": 1.50}\n'.encode("utf-8")
RESULT_KEYS = {"status_code", "url", "headers", "content", "encoding"}
#: The query string of a queued request; as the worker sends it on; as parsed.
QUERY = "x=1&x=2&y=&name=George%20Costanza&u=%C3%A9%E2%98%83"
FORWARDED = "x=1&x=2&y=&name=George+Costanza&u=%C3%A9%E2%98%83"
ARGS = {"x": ["1", "2"], "y": [""], "name": ["George Costanza"], "u": ["é\u2603"]}


def delete_queues(url, names):
    """In a thread: delete C{names} on the broker (missing ones are fine)."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as connection:
        for name in names:
            try:
                connection.channel().queue_delete(name)
            except Exception:
                pass


def publish_raw(url, queue, bodies):
    """In a thread: publish C{bodies} (bytes) to C{queue} as any broker user could."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as connection:
        producer = connection.Producer()
        for body in bodies:
            producer.publish(body, exchange="", routing_key=queue,
                             content_type="application/json", content_encoding="utf-8")


# The target of the queued URLs


class Target(resource.Resource):
    """
    An HTTP server that records what it gets and answers per path:

      - C{/text}: 200, UTF-8 text;
      - C{/json}: 201, JSON;
      - C{/missing}: 404; C{/error}: 500;
      - C{/binary}: 200, L{BINARY} as application/octet-stream;
      - C{/slow?delay=S}: 200 after S seconds (default 60);
      - C{/block}: held until L{release} (answered at once after it);
      - anything else: 200, C{"<METHOD> <path>"} as text.

    Each request is recorded as a dict (C{method}, C{path}, C{args} as
    lists of str, C{headers} lowercased, C{body} bytes) that gets C{done}
    once its answer was written whole, or C{lost} if its connection went
    first.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.calls = []
        self.held = []
        self.released = False
        self.channels = []

    # Serving

    def render(self, request):
        query = urlsplit(request.uri).query.decode("latin-1")
        record = {
            "method": request.method.decode("ascii"),
            "path": request.path.decode("latin-1"),
            "args": parse_qs(query, keep_blank_values=True),
            "headers": {
                name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            "body": request.content.read(),
            "done": False,
            "lost": False,
        }
        self.requests.append(record)
        request.notifyFinish().addCallbacks(
            lambda _: record.update(done=True), lambda _: record.update(lost=True)
        )
        path = record["path"]
        if path == "/text":
            return self.answer(request, 200, "text/plain; charset=utf-8",
                               "hello, wörld".encode("utf-8"))
        if path == "/json":
            return self.answer(request, 201, "application/json",
                               json.dumps({"created": True}).encode("ascii"))
        if path == "/missing":
            return self.answer(request, 404, "text/plain", b"no such thing")
        if path == "/error":
            return self.answer(request, 500, "text/plain", b"it broke")
        if path == "/binary":
            return self.answer(request, 200, "application/octet-stream", BINARY)
        if path == "/slow":
            delay = float(record["args"].get("delay", ["60"])[0])
            self.later(request, record, delay, b"slow and steady")
            return server.NOT_DONE_YET
        if path == "/redirect":
            request.setHeader(b"Location", record["args"]["to"][0].encode("latin-1"))
            return self.answer(request, 302, "text/plain", b"moved")
        if path == "/block":
            if self.released:
                return self.answer(request, 200, "text/plain", b"released")
            self.held.append((request, record))
            return server.NOT_DONE_YET
        text = f"{record['method']} {path}".encode("utf-8")
        return self.answer(request, 200, "text/plain; charset=utf-8", text)

    @staticmethod
    def answer(request, code, content_type, body):
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return body

    def later(self, request, record, delay, body):
        def finish():
            if not record["lost"]:
                request.write(self.answer(request, 200, "text/plain", body))
                request.finish()

        call = reactor.callLater(delay, finish)
        self.calls.append(call)
        request.notifyFinish().addBoth(lambda _: call.active() and call.cancel())

    def release(self):
        """Answer the held C{/block} requests, and every later one at once."""
        self.released = True
        held, self.held = self.held, []
        for request, record in held:
            if not record["lost"]:
                request.write(self.answer(request, 200, "text/plain", b"released"))
                request.finish()

    # Looking at what came

    def find(self, path=None, method=None):
        return [
            r for r in self.requests
            if (path is None or r["path"] == path) and (method is None or r["method"] == method)
        ]

    # Life

    def listen(self, interface="127.0.0.1"):
        site = server.Site(self, timeout=None)
        build = site.buildProtocol

        def buildProtocol(addr):
            channel = build(addr)
            self.channels.append(channel)
            return channel

        site.buildProtocol = buildProtocol
        self.port = reactor.listenTCP(0, site, interface=interface)
        return self.port.getHost().port

    async def close(self):
        for call in self.calls:
            if call.active():
                call.cancel()
        await self.port.stopListening()
        for channel in self.channels:
            transport = getattr(channel, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()
        await sleep(0.05)


class TaskTestCase(IntegrationTestCase):
    timeout = 90
    broker_wait = 20
    vhost_prefix = VHOST
    http_timeout = 10

    async def set_up(self):
        await super().set_up()
        self.target = Target()
        self.target_port = self.target.listen()
        self.addCleanup(lambda: defer.ensureDeferred(self.target.close()))
        # Branch ids of the test's own: its result queues are its own too.
        self.tag = uuid.uuid4().hex[:6]

    async def clear_broker(self):
        """No task of this test is left for the next one's workers."""
        vhost = made_vhost(VHOST)
        if vhost is None:
            return
        for attempt in range(3):
            # Others may be restarting the broker: wait for it.
            await broker_back(20)
            try:
                await threads.deferToThread(delete_queues, broker_url(vhost), [QUEUE])
                return
            except Exception:
                if attempt == 2:
                    raise
                await sleep(1)

    # Branches

    async def start_branch(self, name, *options, root=None, port=None):
        """Branch C{name} of this test: its id is C{<name>-<the test's tag>};
        its operator opens the target's port on loopback (C{--webhook-allow}),
        where an app's C{allowed_hosts} may then reach it."""
        return await super().start_branch(
            f"{name}-{self.tag}", "--webhook-allow", f"127.0.0.1:{self.target_port}", *options,
            root=root, port=port,
        )

    async def restart_branch(self, branch):
        """The same branch again: same id, root and port."""
        name = branch.id.rsplit("-", 1)[0]
        return await self.start_branch(name, root=branch.root, port=branch.port)

    # HTTP

    def target_url(self, path, port=None):
        return f"http://127.0.0.1:{port or self.target_port}{path}"

    def queue_url(self, branch, target, app="foo", queue=QUEUE, query=""):
        return branch.url(f"/{app}/queue/{queue}/{target}") + (f"?{query}" if query else "")

    async def queue(self, branch, method, target, query="", expected=202, **kwargs):
        """Queue C{method target}: the 202's body (the uuid from HEAD's header)."""
        url = self.queue_url(branch, target, query=query)
        # The branch waits up to 10 s for a broker being restarted by others.
        code, body, headers = await self.call(method, url, timeout=20, **kwargs)
        self.assertEqual(code, expected, f"{method} {url}: {body}")
        location = headers.getRawHeaders(b"location")
        if method == "HEAD":
            # No body for HEAD: the task is found by its Location.
            self.assertIsNotNone(location, f"HEAD {url}: no Location header")
            task_id = location[0].decode("ascii").split("/")[3]
            return {"uuid": task_id, "url": target, "queue": QUEUE, "method": "HEAD"}
        self.assertEqual(set(body), {"uuid", "url", "queue", "method"}, body)
        self.assertEqual((body["url"], body["queue"], body["method"]), (target, QUEUE, method))
        self.assertEqual(len(body["uuid"]), 36)
        self.assertEqual(location, [f"/foo/query/{body['uuid']}/result/".encode("ascii")])
        return body

    async def query(self, branch, task_id, what, expected=200, params="", app="foo"):
        """C{GET /<app>/query/<uuid>/<what>/[?params]}: the body."""
        url = branch.url(f"/{app}/query/{task_id}/{what}/") + (f"?{params}" if params else "")
        code, body, _ = await self.call("GET", url)
        self.assertEqual(code, expected, f"{what} of {task_id} on {branch.id}: {body}")
        return body

    async def wait(self, branch, task_id, timeout=20, state="SUCCESS"):
        """C{…/wait/?timeout=}: the task once done, in C{state}."""
        code, body, _ = await self.call(
            "GET", branch.url(f"/foo/query/{task_id}/wait/?timeout={timeout}"),
            timeout=timeout + 5,
        )
        self.assertEqual(code, 200, f"wait for {task_id} on {branch.id}: {body}{self.outputs()}")
        self.assertEqual(body["uuid"], task_id)
        self.assertEqual(body["state"], state, body)
        return body

    async def wait_result(self, branch, task_id, timeout=20, status_code=200):
        """Wait for a SUCCESS with C{status_code}; its result."""
        body = await self.wait(branch, task_id, timeout)
        result = body["result"]
        self.assertEqual(set(result), RESULT_KEYS, result)
        self.assertEqual(result["status_code"], status_code, result)
        return result

    # Set-up through the API

    async def declare(self, branch, app="foo"):
        """C{PUT /<app>/} and C{PUT /<app>/queues/tasks/}.

        The target listens on loopback, which the webhook fence refuses
        unless the app's C{allowed_hosts} lists it where the branch's
        operator opened it (L{FenceTests} test the fence itself).
        """
        await self.ok("PUT", branch, f"/{app}/", data={"allowed_hosts": "127.0.0.1"})
        await self.ok("PUT", branch, f"/{app}/queues/{QUEUE}/")

    async def create_worker(self, via, name=None, consume=True, **params):
        """An instance with the solo pool, running (and consuming C{tasks})."""
        name = name or f"w{uuid.uuid4().hex[:8]}"
        code, instance, _ = await self.call(
            "PUT", via.url(f"/foo/instances/{name}/"),
            data={"pool": "solo", **params}, timeout=30,
        )
        self.assertIn(code, (200, 201), instance)
        if instance["state"] != "running":
            # Not up within the ready timeout (a busy machine, a broker
            # restarted by someone else): it must come up all the same.
            instance = await self.poll(
                lambda: self.running(via, name), 30, f"{name} running"
            )
        if consume:
            await self.ok("PUT", via, f"/foo/instances/{name}/queues/{QUEUE}/")

            async def consuming():
                code, queues, _ = await self.call(
                    "GET", via.url(f"/foo/instances/{name}/queues/")
                )
                return queues if code == 200 and QUEUE in queues else None

            await self.poll(consuming, 15, f"{name} consuming {QUEUE}", interval=0.2)
        return instance

    async def restarted(self, branch, instance):
        """C{instance} (as it was) running again, with another process."""
        async def again():
            found = await self.running(branch, instance["name"])
            return found if found and found["pid"] != instance["pid"] else None

        return await self.poll(again, 30, f"{instance['name']} restarted")

    async def running(self, branch, name):
        code, instance, _ = await self.call("GET", branch.url(f"/foo/instances/{name}/"))
        if code == 200 and instance["state"] == "running" and instance["pid"]:
            return instance
        return None

    async def one_branch(self, *options):
        """A branch with app C{foo}, queue C{tasks} and a worker consuming it."""
        branch = await self.start_branch("a", *options)
        await self.declare(branch)
        await self.create_worker(branch)
        return branch


class QueueTests(TaskTestCase):
    @deferred
    async def test_every_verb(self):
        """
        Every verb queued through the branch reaches the target as the same
        verb, with the query data and the body (a form stays a form, a raw
        body arrives byte for byte with its content type); wait, state and
        result agree on a SUCCESS with the whole answer of the target.
        """
        branch = await self.one_branch()
        form = {"username": ["George Costanza"], "company": ["Vandelay Industries"]}
        bodies = {
            "POST": ({"Content-Type": ["application/x-www-form-urlencoded"]},
                     b"username=George+Costanza&company=Vandelay+Industries"),
            "PUT": ({"Content-Type": ["application/json; charset=utf-8"]}, JSON_BODY),
            "PATCH": ({"Content-Type": ["application/merge-patch+json"]}, JSON_BODY),
            "DELETE": ({"Content-Type": ["application/octet-stream"]}, BINARY),
        }
        queued = {}
        for verb in VERBS:
            headers, data = bodies.get(verb, ({}, None))
            queued[verb] = await self.queue(
                branch, verb, self.target_url(f"/echo/{verb.lower()}"), QUERY,
                headers=headers, data=data,
            )
        # The original Cyme's examples, as curl sends them.
        original = {}
        if CURL:
            out, err, code = await getProcessOutputAndValue(CURL, [
                "-sS", self.queue_url(branch, self.target_url("/import_contacts"),
                                      query="user=133"),
            ])
            self.assertEqual(code, 0, err)
            original["GET"] = json.loads(out)
            out, err, code = await getProcessOutputAndValue(CURL, [
                "-sS", "-X", "POST", self.queue_url(branch, self.target_url("/import_user")),
                "-d", "username=George Costanza", "-d", "company=Vandelay Industries",
            ])
            self.assertEqual(code, 0, err)
            original["POST"] = json.loads(out)
        # Each kind of answer of the target.
        answers = {
            path: await self.queue(branch, "GET", self.target_url(path))
            for path in ("/text", "/json", "/binary")
        }

        for verb, accepted in queued.items():
            task_id = accepted["uuid"]
            result = await self.wait_result(branch, task_id)
            self.assertEqual(await self.query(branch, task_id, "state"),
                             {"uuid": task_id, "state": "SUCCESS"})
            self.assertEqual(await self.query(branch, task_id, "result"),
                             {"uuid": task_id, "state": "SUCCESS", "result": result})
            if verb == "CONNECT":
                # Authority form: the target sees host:port, nothing more.
                self.assertEqual(result["url"], self.target_url(f"/echo/connect?{FORWARDED}"))
                continue
            path = f"/echo/{verb.lower()}"
            self.assertEqual(result["url"], self.target_url(f"{path}?{FORWARDED}"))
            self.assertEqual(result["headers"]["Content-Type"], "text/plain; charset=utf-8")
            self.assertEqual(result["encoding"], "text")
            self.assertEqual(result["content"], "" if verb == "HEAD" else f"{verb} {path}")
            [got] = self.target.find(path)
            self.assertEqual(got["method"], verb)
            # A proxy's header: no cyme branch takes it for its machine's own.
            self.assertEqual(got["headers"]["via"], "1.1 cyme-webhook")
            self.assertEqual(got["args"], ARGS)
            if verb in bodies:
                headers, data = bodies[verb]
                self.assertEqual(got["headers"]["content-type"], headers["Content-Type"][0])
                if verb == "POST":
                    self.assertEqual(parse_qs(got["body"].decode("ascii")), form)
                else:
                    self.assertEqual(got["body"], data)
            else:
                self.assertEqual(got["body"], b"")
                self.assertNotIn("content-type", got["headers"])
        [connect] = self.target.find(method="CONNECT")
        self.assertEqual(connect["path"], f"127.0.0.1:{self.target_port}")

        for verb, accepted in original.items():
            result = await self.wait_result(branch, accepted["uuid"])
            self.assertEqual(accepted["method"], verb)
        if original:
            [contacts] = self.target.find("/import_contacts")
            self.assertEqual((contacts["method"], contacts["args"]), ("GET", {"user": ["133"]}))
            [user] = self.target.find("/import_user")
            self.assertEqual(user["method"], "POST")
            self.assertEqual(user["headers"]["content-type"], "application/x-www-form-urlencoded")
            self.assertEqual(parse_qs(user["body"].decode("ascii")), form)

        text = await self.wait_result(branch, answers["/text"]["uuid"])
        self.assertEqual((text["content"], text["encoding"]), ("hello, wörld", "text"))
        created = await self.wait_result(branch, answers["/json"]["uuid"], status_code=201)
        self.assertEqual(json.loads(created["content"]), {"created": True})
        self.assertEqual(created["headers"]["Content-Type"], "application/json")
        binary = await self.wait_result(branch, answers["/binary"]["uuid"])
        self.assertEqual(binary["encoding"], "base64")
        self.assertEqual(base64.b64decode(binary["content"]), BINARY)
        # Every task ran once.
        self.assertEqual(len(self.target.requests), len(VERBS) + len(original) + 3)

    @deferred
    async def test_first_tasks_queued_at_once(self):
        """
        Tasks queued all at once, before the branch has its channel to the
        app's broker, all wait for it and are all accepted, then performed.
        """
        branch = await self.start_branch("a")
        await self.declare(branch)
        accepted = await defer.gatherResults([
            defer.ensureDeferred(
                self.queue(branch, "GET", self.target_url(f"/echo/{n}"), f"n={n}")
            )
            for n in range(16)
        ])
        self.assertEqual(len({a["uuid"] for a in accepted}), 16)
        await self.create_worker(branch)
        for n, a in enumerate(accepted):
            result = await self.wait_result(branch, a["uuid"])
            self.assertEqual(result["content"], f"GET /echo/{n}")

    @deferred
    async def test_failures_and_bad_requests(self):
        """
        404 and 500 answers are SUCCESS results with their status; a refused
        connection is a FAILURE saying so; an unknown uuid is PENDING; a
        wait on a task that does not finish ends in a 202 with its state; bad URLs, unknown
        apps and queues are refused before anything is queued.
        """
        nobody = free_port()
        branch = await self.one_branch("--webhook-allow", f"127.0.0.1:{nobody}")
        missing = await self.queue(branch, "GET", self.target_url("/missing"))
        error = await self.queue(branch, "POST", self.target_url("/error"), data={"a": "b"})
        closed = self.target_url("/nobody", port=nobody)
        refused = await self.queue(branch, "GET", closed)
        # A timeout of the request's own (the app's is 60 s).
        late = await self.queue(branch, "GET", self.target_url("/slow"), "delay=5",
                                headers={"Cyme-Timeout": ["1"]})

        result = await self.wait_result(branch, missing["uuid"], status_code=404)
        self.assertEqual(result["content"], "no such thing")
        result = await self.wait_result(branch, error["uuid"], status_code=500)
        self.assertEqual(result["content"], "it broke")
        failed = await self.wait(branch, refused["uuid"], state="FAILURE")
        self.assertEqual(failed["result"]["exc_type"], "WebhookError", failed)
        self.assertIn(f"connection refused: {closed}", str(failed["result"]["exc_message"]))
        self.assertIn("traceback", failed)
        timed_out = await self.wait(branch, late["uuid"], state="FAILURE")
        self.assertEqual(timed_out["result"]["exc_type"], "WebhookError", timed_out)
        self.assertIn("timed out after 1 s", str(timed_out["result"]["exc_message"]))
        self.assertEqual(await self.query(branch, refused["uuid"], "state"),
                         {"uuid": refused["uuid"], "state": "FAILURE"})
        self.assertEqual(await self.query(branch, refused["uuid"], "result"), failed)

        # Nobody knows this one.
        unknown = str(uuid.uuid4())
        self.assertEqual(await self.query(branch, unknown, "state"),
                         {"uuid": unknown, "state": "PENDING"})
        self.assertEqual(await self.query(branch, unknown, "result"),
                         {"uuid": unknown, "state": "PENDING", "result": None})
        # Nor does another app know foo's tasks.
        await self.ok("PUT", branch, "/bar/")
        done = missing["uuid"]
        self.assertEqual(await self.query(branch, done, "state", app="bar"),
                         {"uuid": done, "state": "PENDING"})
        self.assertEqual(await self.query(branch, done, "result", app="bar"),
                         {"uuid": done, "state": "PENDING", "result": None})
        body = await self.query(branch, done, "wait", 202, "timeout=0.5", app="bar")
        self.assertEqual((body["uuid"], body["state"]), (done, "PENDING"))

        # A task that will not finish in time: the wait ends in a 202.
        slow = await self.queue(branch, "GET", self.target_url("/slow"), "delay=60")
        await self.poll(
            lambda: [r for r in self.target.find("/slow") if r["args"]["delay"] == ["60"]]
            or None, 10, "the slow request",
        )
        started = reactor.seconds()
        body = await self.query(branch, slow["uuid"], "wait", 202, "timeout=1")
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual((body["uuid"], body["state"]), (slow["uuid"], "STARTED"))
        self.assertNotIn("error", body)
        self.assertEqual(await self.query(branch, slow["uuid"], "state"),
                         {"uuid": slow["uuid"], "state": "STARTED"})
        for bad in ("0", "301", "soon"):
            body = await self.query(branch, slow["uuid"], "wait", 400, f"timeout={bad}")
            self.assertEqual(body["field"], "timeout")

        # Refused before they are queued.
        before = len(self.target.requests)
        for target in ("ftp://127.0.0.1/file", "file:///etc/passwd",
                       self.target_url("/" + "x" * 5000)):
            code, body, _ = await self.call("GET", self.queue_url(branch, target))
            self.assertEqual(code, 400, body)
            self.assertEqual(body["field"], "url")
        code, body, _ = await self.call(
            "GET", branch.url(f"/nosuchapp/queue/{QUEUE}/{self.target_url('/text')}")
        )
        self.assertEqual(code, 404, body)
        code, body, _ = await self.call(
            "GET", branch.url(f"/foo/queue/nosuchqueue/{self.target_url('/text')}")
        )
        self.assertEqual(code, 404, body)
        code, body, _ = await self.call("GET", branch.url(f"/nosuchapp/query/{unknown}/state/"))
        self.assertEqual(code, 404, body)
        self.assertEqual(len(self.target.requests), before)


class ForgedResultTests(TaskTestCase):
    @deferred
    async def test_forged_and_malformed_results_change_nothing(self):
        """
        Anyone who may publish on the app's broker can publish to a branch's
        result queue: what is no result of a task the branch waits for is
        dropped and counted, and queued URLs go on working.
        """
        branch = await self.one_branch()
        slow = await self.queue(branch, "GET", self.target_url("/slow"), "delay=1.5")
        forged = [json.dumps(body).encode("utf-8") for body in (
            {"task_id": str(uuid.uuid4()), "status": "SUCCESS", "result": "forged"},
            {"task_id": ["a", "list"], "status": "SUCCESS"},
            {"task_id": slow["uuid"], "status": {"not": "a state"}},
            [slow["uuid"], "SUCCESS"],
        )] + [b"\xff not json"]
        await threads.deferToThread(publish_raw, broker_url(made_vhost(VHOST)),
                                    f"cyme.results.{branch.id}", forged)

        async def dropped():
            response = await treq.get(branch.url("/metrics"), pool=self.pool, timeout=5)
            text = (await treq.content(response)).decode()
            line = [l for l in text.splitlines() if l.startswith("cyme_results_dropped_total")]
            return float(line[0].split()[1]) >= len(forged) or None

        await self.poll(dropped, 10, "the forged results dropped and counted")
        # The real result still comes, and new tasks are queued and done.
        result = await self.wait_result(branch, slow["uuid"])
        self.assertEqual(result["content"], "slow and steady")
        more = await self.queue(branch, "GET", self.target_url("/text"))
        await self.wait_result(branch, more["uuid"])
        self.assertFalse([l for l in branch.journal() if l["state"] == "SUCCESS"
                          and l.get("result") == "forged"])


class FenceTests(TaskTestCase):
    async def test_queued_urls_fenced_by_the_branch_and_the_worker(self):
        """
        With the default policy the branch refuses (400, naming the host and
        the rule) every form of a loopback, unspecified or metadata address,
        and a name that resolves to loopback; a worker refuses a redirect
        from an allowed address to loopback; the app's allow-list opens
        what it lists; no answer or result names a broker password; the
        results journal is the branch user's alone.  The app's list opens a
        loopback port only where the branch's operator did (here, the
        target's): the branch's own API stays closed to it.
        """
        outside = outside_address()
        branch = await self.start_branch("a")
        await self.ok("PUT", branch, "/foo/")  # no allowed_hosts: the default policy
        await self.ok("PUT", branch, f"/foo/queues/{QUEUE}/")
        port = self.target_port
        for host, rule in [("127.0.0.1", "loopback"), ("2130706433", "loopback"),
                           ("0x7f.1", "loopback"), ("[::ffff:127.0.0.1]", "loopback"),
                           ("[::1]", "loopback"), ("localhost", "loopback"),
                           ("0.0.0.0", "unspecified"), ("169.254.169.254", "link-local"),
                           ("[fd00:ec2::254]", "cloud metadata"), ("224.0.0.1", "multicast")]:
            url = f"http://{host}:{port}/text"
            code, body = await raw_get(branch, f"/foo/queue/{QUEUE}/{url}")
            self.assertEqual(code, 400, body)
            self.assertEqual((body["field"], body.get("host")), ("url", host.strip("[]").lower()), body)
            self.assertIn(rule, body["rule"])
            self.assertIn(f"host {host.strip('[]')}", body["error"])
        # A URL the parser rejects is a 400 too, not a 500.
        code, body = await raw_get(branch, f"/foo/queue/{QUEUE}/http://[::1/x")
        self.assertEqual((code, body["field"]), (400, "url"), body)
        self.assertIn("invalid URL", body["error"])
        self.assertEqual(self.target.requests, [])

        # The app's list opens a loopback port only where the operator did:
        # not the branch's own (an app without workers: no restarts).
        for listed in ("127.0.0.1", f"127.0.0.1:{branch.port}"):
            await self.ok("PUT", branch, "/bar/", data={"allowed_hosts": listed})
            await self.ok("PUT", branch, f"/bar/queues/{QUEUE}/")
            code, body = await raw_get(
                branch, f"/bar/queue/{QUEUE}/http://127.0.0.1:{branch.port}/tokens/")
            self.assertEqual(code, 400, body)
            self.assertEqual((body["host"], body["rule"]),
                             ("127.0.0.1", "a loopback address, not opened by the branch "
                                           "(--webhook-allow)"), body)

        # The worker judges every hop: a redirect to loopback is refused.
        worker = await self.create_worker(branch)
        if outside is not None:
            first = Target()
            first_port = first.listen(interface=outside)
            self.addCleanup(lambda: defer.ensureDeferred(first.close()))
            start = f"http://{outside}:{first_port}/redirect"
            task = await self.queue(branch, "GET", start,
                                    query="to=" + quote(self.target_url("/text"), safe=""))
            failed = await self.wait(branch, task["uuid"], state="FAILURE")
            self.assertEqual(failed["result"]["exc_type"], "HostRefused", failed)
            self.assertIn("redirect refused: host 127.0.0.1 refused (a loopback address",
                          str(failed["result"]["exc_message"]))
            self.assertEqual(len(first.find("/redirect")), 1)
            self.assertEqual(self.target.requests, [])

        # Listed, loopback is open to this app, where the operator opened it:
        # the app's workers restart with its new list.
        await self.ok("PUT", branch, "/foo/", data={"allowed_hosts": "127.0.0.1"})
        await self.restarted(branch, worker)
        task = await self.queue(branch, "GET", self.target_url("/text"))
        await self.wait_result(branch, task["uuid"])
        self.assertEqual(len(self.target.find("/text")), 1)
        code, body, _ = await self.call("GET", self.queue_url(branch, f"http://localhost:{port}/"))
        self.assertEqual(code, 400, body)  # a name needs an entry of its own
        self.assertEqual(
            os.stat(os.path.join(branch.root, "results.jsonl")).st_mode & 0o777, 0o600)

        # A broker that does not answer: its password is in no answer.
        await self.ok("PUT", branch, "/nobroker/",
                      data={"broker": f"amqp://u:s3cret@127.0.0.1:{free_port()}//",
                            "allowed_hosts": "127.0.0.1"})
        await self.ok("PUT", branch, f"/nobroker/queues/{QUEUE}/")
        code, body, _ = await self.call(
            "GET", branch.url(f"/nobroker/queue/{QUEUE}/{self.target_url('/text')}"), timeout=30)
        self.assertEqual(code, 503, body)
        self.assertIn("amqp://u:**@127.0.0.1", body["error"])
        self.assertNotIn("s3cret", json.dumps(body))
        task_id = body.get("uuid")
        if task_id:
            _, result, _ = await self.call("GET", branch.url(f"/nobroker/query/{task_id}/result/"))
            self.assertNotIn("s3cret", json.dumps(result))
        # Nor in the task's recorded failure, nor in the branch's log.
        failures = [line for line in branch.journal() if line.get("state") == "FAILURE"]
        self.assertIn("amqp://u:**@127.0.0.1", json.dumps(failures))
        self.assertNotIn("s3cret", json.dumps(branch.journal()))
        self.assertNotIn("s3cret", branch.process.output)

    async def test_deny_private(self):
        """--webhook-deny-private: private ranges are refused too, unless
        listed where the operator opened them (--webhook-allow)."""
        branch = await self.start_branch("a", "--webhook-deny-private",
                                         "--webhook-allow", "10.1.0.0/16")
        await self.ok("PUT", branch, "/foo/")
        await self.ok("PUT", branch, f"/foo/queues/{QUEUE}/")
        for host in ("10.1.2.3", "192.168.0.1", "[fd00::1]"):
            code, body = await raw_get(branch, f"/foo/queue/{QUEUE}/http://{host}/x")
            self.assertEqual(code, 400, body)
            self.assertIn("private", body["rule"])
        await self.ok("PUT", branch, "/foo/", data={"allowed_hosts": "10.0.0.0/8"})
        await self.queue(branch, "GET", "http://10.1.2.3/x")
        code, body = await raw_get(branch, f"/foo/queue/{QUEUE}/http://10.2.0.1/x")
        self.assertEqual(code, 400, body)
        self.assertEqual(body["rule"], "a private address, not opened by the branch "
                                       "(--webhook-allow)")

    async def test_a_worker_is_never_the_branchs_trusted_caller(self):
        """
        An operator who opens all of loopback (C{--webhook-allow
        127.0.0.1}) lets an app that lists the branch's port reach its
        API, but every request a worker makes says it was forwarded
        (C{Via}), and a forwarded request is never loopback-trusted: no
        token is minted, nothing is read.
        """
        branch = await self.start_branch("a", "--webhook-allow", "127.0.0.1")
        await self.ok("PUT", branch, "/foo/", data={"allowed_hosts": f"127.0.0.1:{branch.port}"})
        await self.ok("PUT", branch, f"/foo/queues/{QUEUE}/")
        await self.create_worker(branch)
        api = f"http://127.0.0.1:{branch.port}"
        minted = await self.queue(branch, "POST", f"{api}/tokens/",
                                  data={"name": "stolen", "scope": "admin"})
        listed = await self.queue(branch, "GET", f"{api}/foo/")
        for task in (minted, listed):
            result = await self.wait_result(branch, task["uuid"], status_code=401)
            self.assertNotIn("cyme_", result["content"])
        tokens = await self.ok("GET", branch, "/tokens/")
        self.assertEqual([t["name"] for t in tokens], [])


async def raw_get(branch, path):
    """C{(code, JSON body)} of C{GET path} sent as written, brackets and
    all, as curl sends it (treq would percent-encode them)."""
    import http.client

    def get():
        conn = http.client.HTTPConnection("127.0.0.1", branch.port, timeout=20)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    return await threads.deferToThread(get)


def outside_address():
    """This machine's IPv4 address towards the world (no packet sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("203.0.113.1", 9))
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


class ClusterTaskTests(TaskTestCase):
    @deferred
    async def test_result_through_another_branch(self):
        """
        Two branches of one cluster: a task queued on one is answered
        (state, result, wait) through the other, both ways.
        """
        a = await self.start_branch("a")
        b = await self.start_branch("b")
        ids = sorted([a.id, b.id])
        for branch in (a, b):
            await self.poll(
                lambda branch=branch: self.listed(branch, ids), 15,
                f"{branch.id} lists {ids}",
            )
        await self.declare(a)
        self.assertEqual(await self.ok("GET", b, "/foo/queues/"), [QUEUE])
        await self.create_worker(a, branch=b.id)

        slow = await self.queue(a, "GET", self.target_url("/slow"), "delay=1")
        self.assertIn(
            (await self.query(b, slow["uuid"], "state"))["state"], ("PENDING", "STARTED")
        )
        # Waited for through b while it runs: answered when it is done.
        result = await self.wait_result(b, slow["uuid"])
        self.assertEqual(result["content"], "slow and steady")
        self.assertEqual(await self.query(b, slow["uuid"], "state"),
                         {"uuid": slow["uuid"], "state": "SUCCESS"})
        self.assertEqual(await self.query(b, slow["uuid"], "result"),
                         {"uuid": slow["uuid"], "state": "SUCCESS", "result": result})
        # a published it, and keeps it.
        self.assertIn(slow["uuid"], {line["id"] for line in a.journal()})
        self.assertNotIn(slow["uuid"], {line["id"] for line in b.journal()})

        # The other way round.
        text = await self.queue(b, "PUT", self.target_url("/text"), data=b"hi",
                                headers={"Content-Type": ["text/plain"]})
        result = await self.wait_result(a, text["uuid"])
        self.assertEqual(result["content"], "hello, wörld")
        self.assertEqual(await self.query(a, text["uuid"], "result"),
                         {"uuid": text["uuid"], "state": "SUCCESS", "result": result})
        self.assertEqual(self.target.find("/text")[0]["body"], b"hi")

        unknown = str(uuid.uuid4())
        self.assertEqual(await self.query(b, unknown, "state"),
                         {"uuid": unknown, "state": "PENDING"})
        body = await self.query(b, unknown, "wait", 202, "timeout=1")
        self.assertEqual(body["state"], "PENDING")

        # A wait through b for a task of a that does not finish in time.
        slow = await self.queue(a, "GET", self.target_url("/slow"), "delay=60")
        await self.poll(lambda: len(self.target.find("/slow")) == 2 or None, 10,
                        "the second slow request")
        started = reactor.seconds()
        body = await self.query(b, slow["uuid"], "wait", 202, "timeout=1")
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual((body["uuid"], body["state"]), (slow["uuid"], "STARTED"))

    async def listed(self, branch, ids):
        code, body, _ = await self.call("GET", branch.url("/branches/"))
        return body if (code, body) == (200, ids) else None


class RestartTests(TaskTestCase):
    @deferred
    async def test_branch_restarted(self):
        """
        A result is still answered after the branch restarted, and so is one
        that came while the branch was down: it waited in the branch's
        durable result queue.
        """
        branch = await self.one_branch()
        done = await self.queue(branch, "GET", self.target_url("/text"))
        result = await self.wait_result(branch, done["uuid"])
        await self.stop(branch.process)
        branch = await self.restart_branch(branch)
        self.assertEqual(await self.query(branch, done["uuid"], "result"),
                         {"uuid": done["uuid"], "state": "SUCCESS", "result": result})
        self.assertEqual((await self.wait(branch, done["uuid"]))["result"], result)

        # Queued, then the branch stops before the answer (1.5 s) comes.
        slow = await self.queue(branch, "GET", self.target_url("/slow"), "delay=1.5")
        await self.stop(branch.process)
        await self.poll(
            lambda: [r for r in self.target.find("/slow") if r["done"]] or None,
            15, "the slow request answered",
        )
        await sleep(0.5)  # the worker sends the result to the broker
        self.assertNotIn(
            "SUCCESS", [l["state"] for l in branch.journal() if l["id"] == slow["uuid"]],
            "the result came before the branch stopped",
        )
        branch = await self.restart_branch(branch)
        result = await self.wait_result(branch, slow["uuid"], timeout=10)
        self.assertEqual(result["content"], "slow and steady")
        self.assertEqual(await self.query(branch, slow["uuid"], "state"),
                         {"uuid": slow["uuid"], "state": "SUCCESS"})
        self.assertEqual(len(self.target.find("/slow")), 1)


    @deferred
    async def test_results_expire(self):
        """Past C{--result-expires} a result is forgotten: PENDING again."""
        branch = await self.start_branch("a", "--result-expires", "2")
        await self.declare(branch)
        await self.create_worker(branch)
        done = await self.queue(branch, "GET", self.target_url("/text"))
        await self.wait_result(branch, done["uuid"])
        recorded = reactor.seconds()
        self.assertEqual(await self.query(branch, done["uuid"], "state"),
                         {"uuid": done["uuid"], "state": "SUCCESS"})
        await sleep(max(0, recorded + 2.5 - reactor.seconds()))
        self.assertEqual(await self.query(branch, done["uuid"], "result"),
                         {"uuid": done["uuid"], "state": "PENDING", "result": None})
        body = await self.query(branch, done["uuid"], "wait", 202, "timeout=0.2")
        self.assertEqual(body["state"], "PENDING")


class WorkerKilledTests(TaskTestCase):
    @deferred
    async def test_worker_killed_mid_task(self):
        """
        A worker killed with SIGKILL in the middle of a task: the task goes
        back to the queue and another worker (or the restarted one) performs
        it; it completes exactly once.
        """
        branch = await self.one_branch()
        first = (await self.ok("GET", branch, "/foo/instances/"))[0]
        task = await self.queue(branch, "POST", self.target_url("/block"), data={"n": "1"})
        await self.poll(lambda: self.target.find("/block") or None, 15, "the task started")
        # A second worker, idle, to take the task over.
        await self.create_worker(branch)
        pid = (await self.ok("GET", branch, f"/foo/instances/{first}/"))["pid"]
        os.kill(pid, signal.SIGKILL)
        [killed] = self.target.find("/block")
        await self.poll(lambda: killed["lost"] or None, 10, "the killed worker's request lost")
        self.target.release()

        result = await self.wait_result(branch, task["uuid"], timeout=30)
        self.assertEqual(result["content"], "released")
        await self.poll(lambda: self.running(branch, first), 20, f"{first} running again")
        await sleep(2 * INTERVAL)  # nothing else comes
        runs = self.target.find("/block")
        self.assertEqual(len(runs), 2, runs)
        self.assertEqual([(r["lost"], r["done"]) for r in runs], [(True, False), (False, True)])
        for run in runs:
            self.assertEqual((run["method"], parse_qs(run["body"].decode())),
                             ("POST", {"n": ["1"]}))
        self.assertEqual(await self.query(branch, task["uuid"], "state"),
                         {"uuid": task["uuid"], "state": "SUCCESS"})


class ZBrokerRestartTests(TaskTestCase):
    """Last in the module (trial runs classes by name): it restarts RabbitMQ."""

    timeout = 120

    @deferred
    async def test_broker_restarted_with_tasks_queued(self):
        """
        Tasks queued where no worker consumes yet survive a restart of the
        broker; a worker told to consume the queue afterwards performs them
        all, and their results are answered.
        """
        need_rabbitmqctl()
        # Workers are judged again 5 s after the broker came back (not 30).
        branch = await self.start_branch("a", "--wait-after-broker-revived", "5")
        await self.declare(branch)
        queued = [
            await self.queue(branch, "GET", self.target_url(f"/echo/{n}"), f"n={n}")
            for n in range(3)
        ]
        await self.stop_broker()
        await self.start_broker()
        # They waited in the durable queue through the restart.
        code, out = await rabbitmqctl(
            "list_queues", "-p", made_vhost(VHOST), "--quiet", "--no-table-headers", "name", "messages"
        )
        self.assertEqual(code, 0, out)
        self.assertIn([QUEUE, "3"], [line.split() for line in out.splitlines()], out)

        await self.create_worker(branch)
        for n, accepted in enumerate(queued):
            result = await self.wait_result(branch, accepted["uuid"], timeout=30)
            self.assertEqual(result["content"], f"GET /echo/{n}")
            self.assertEqual(len(self.target.find(f"/echo/{n}")), 1)
        # And a new one, published after the restart.
        after = await self.queue(branch, "GET", self.target_url("/text"))
        await self.wait_result(branch, after["uuid"])
