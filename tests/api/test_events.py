"""GET /events/ (Server-Sent Events) and GET /drift/ through the in-memory
client: a branch whose supervisor runs on the fake process reactor and
remote control, with its events wired as makeService wires them."""

import json

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from cyme.api.events import MAX_QUEUED, Stream, frame
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.drift import DriftWatch
from cyme.operations.eventfeeds import EventFeeds
from cyme.operations.eventhub import EventHub
from cyme.operations.events import EventLog
from cyme.operations.local import LocalOperations
from cyme.state.models import App, Queue
from cyme.state.store import MemoryStore
from cyme.supervision.fakes import FakeControl, FakeProcessReactor, FakeProcessTable
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy


def messages(chunks):
    """The SSE messages in C{chunks}: C{(fields, data)} each, comments left out."""
    found = []
    for block in b"".join(chunks).decode("utf-8").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
        if "data" in fields:
            found.append((fields, json.loads(fields["data"])))
    return found


class EventsTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.reactor.advance(1000)
        self.store = MemoryStore()
        self.store.put_app(App("foo"))
        self.store.put_queue("foo", Queue("tasks"))
        self.log = EventLog("b1", self.reactor)
        feeds = EventFeeds(self.log, self.store)
        self.store.subscribe(feeds.store_changed)
        self.control = FakeControl(self.reactor)
        self.supervisor = Supervisor(
            self.store, self.control, self.reactor, self.mktemp(), hostname="h",
            python="/py", processes=FakeProcessTable(), transition=feeds.transition,
            policy=Policy(interval=5.0))
        self.store.subscribe(self.supervisor.reconcile)
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        drift = DriftWatch(self.reactor)
        self.log.subscribe(drift.seen)
        self.hub = EventHub(self.log, self.reactor)
        self.ops = LocalOperations(self.store, branch_id="b1", supervisor=self.supervisor,
                                   control=self.control, clock=self.reactor, events=self.hub,
                                   drift=drift, ready_timeout=1.0)
        self.resource = BranchAPI(self.ops, clock=self.reactor).resource()
        self.client = APIClient(self.resource)

    def stream(self, path="/events/", client=None, headers=None):
        """Open a stream: C{(responses, chunks)}, filled as it goes."""
        client = client or self.client
        responses, chunks = [], []

        def opened(response):
            responses.append(response)
            if response.code == 200:
                return client.treq.collect(response, chunks.append)
            return client.treq.content(response).addCallback(chunks.append)

        d = client.treq.request("GET", client.base + path, headers=headers)
        # A stream ends only when the client leaves (the end of a test).
        d.addCallback(opened).addErrback(lambda f: f.trap(ResponseFailed))
        client.flush()
        return responses, chunks

    def pump(self, seconds, step=0.05):
        target = self.reactor.seconds() + seconds + 1e-9
        while self.reactor.seconds() + step < target:
            self.reactor.advance(step)
            self.client.flush()
        self.reactor.advance(target - self.reactor.seconds())
        self.client.flush()

    def create(self, name="w1", **values):
        d = defer.ensureDeferred(self.ops.put_instance("foo", name, values, wait=False))
        self.successResultOf(d)
        self.reactor.advance(0)
        self.client.flush()

    def said(self, chunks):
        found = [(d["type"], d["instance"]) for _, d in messages(chunks)]
        chunks[:] = []
        return found


class StreamTests(EventsTestCase):
    def test_a_stream_of_the_branch_events(self):
        responses, chunks = self.stream()
        [response] = responses
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"),
                         ["text/event-stream; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders("Cache-Control"), ["no-store"])
        self.assertTrue(b"".join(chunks).startswith(b"retry: 2000\n"))
        self.assertEqual(messages(chunks), [])
        self.create(queues="tasks")
        self.control.up("w1@h", queues=["dq.w1", "tasks"])
        self.pump(0.3)
        [(fields, created), (_, started), (_, ready)] = messages(chunks)
        self.assertEqual(fields["id"], created["id"])
        self.assertEqual(created["id"], f"b1:{self.log.buffer.last - 2}")
        self.assertEqual((created["type"], created["app"], created["instance"], created["branch"]),
                         ("created", "foo", "w1", "b1"))
        self.assertEqual(created["time"], 1000.0)
        self.assertEqual((started["type"], ready["type"]), ("started", "ready"))
        self.assertNotIn("event", fields)  # EventSource.onmessage sees it

    def test_latest_and_filters(self):
        self.create("w1")
        self.create("w2")
        _, chunks = self.stream("/events/?last=2")
        self.assertEqual(self.said(chunks), [("created", "w2"), ("started", "w2")])
        _, chunks = self.stream("/events/?type=created,deleted&app=foo&last=10")
        self.assertEqual(self.said(chunks), [("created", "w1"), ("created", "w2")])
        self.successResultOf(defer.ensureDeferred(self.ops.delete_instance("foo", "w1")))
        self.client.flush()
        self.assertEqual(self.said(chunks), [("deleted", "w1")])
        _, chunks = self.stream("/events/?app=bar&last=10")
        self.assertEqual(self.said(chunks), [])

    def test_resumes_after_its_last_event_id(self):
        self.create("w1")
        last = self.log.buffer.last
        self.create("w2")
        _, chunks = self.stream(headers={"Last-Event-ID": [f"b1:{last}"]})
        self.assertEqual(self.said(chunks)[0], ("created", "w2"))

    def test_an_id_no_longer_held_is_a_reset(self):
        _, chunks = self.stream(headers={"Last-Event-ID": ["b1:3"]})
        [(fields, reset)] = messages(chunks)
        self.assertEqual(fields["event"], "reset")
        self.assertNotIn("id", fields)
        self.assertEqual((reset["type"], reset["branch"]), ("reset", "b1"))
        self.create("w1")
        self.assertEqual(self.said(chunks)[1:3], [("created", "w1"), ("started", "w1")])

    def test_bad_requests_are_json_errors_and_watch_nothing(self):
        for path, headers in [
            ("/events/?type=nope", None), ("/events/?last=-1", None),
            ("/events/?last=1001", None), ("/events/?app=../x", None),
            ("/events/", {"Last-Event-ID": ["nothing"]}),
            ("/events/", {"Last-Event-ID": ["b1:1," * 100]}),
        ]:
            response = self.successResultOf(self.client.request("GET", path, headers=headers))
            self.assertEqual(response.code, 400, (path, response.body))
            self.assertEqual(response.header("Content-Type"), "application/json")
            self.assertIsInstance(response.json["error"], str)
        self.assertEqual(self.hub.watches(), 0)

    def test_keep_alive_comments(self):
        _, chunks = self.stream()
        chunks[:] = []
        self.pump(15)
        self.assertEqual(b"".join(chunks), b": keep-alive\n\n")

    def test_a_stream_ends_after_its_lifetime(self):
        self.resource = BranchAPI(self.ops, clock=self.reactor, max_stream=60).resource()
        self.client = APIClient(self.resource)
        responses, chunks = self.stream()
        self.assertEqual(self.hub.watches(), 1)
        self.pump(59)
        self.assertEqual(self.hub.watches(), 1)
        self.pump(1)
        # Ended by the branch: nothing watched, no timer left; the client
        # resumes with its Last-Event-ID like after any cut.
        self.assertEqual(self.hub.watches(), 0)
        self.assertEqual(responses[0].code, 200)
        self.create("w1")
        self.assertFalse([c for c in chunks if b"created" in c])

    def test_a_client_that_leaves_is_forgotten(self):
        responses, chunks = self.stream()
        self.assertEqual(self.hub.watches(), 1)
        # The client closes its connection.
        for pump in self.client.treq._agent._pumps:
            pump.client.transport.loseConnection()
            pump.flush()
        self.client.flush()
        self.assertEqual(self.hub.watches(), 0)
        self.create("w1")  # nothing to write to

    def test_a_stranger_needs_a_token_with_read(self):
        stranger = APIClient(self.resource, peer="203.0.113.7")
        responses, chunks = self.stream(client=stranger)
        self.assertEqual(responses[0].code, 401)
        self.assertEqual(self.hub.watches(), 0)

    def test_too_many_streams(self):
        hub = EventHub(self.log, self.reactor, max_watches=1)
        ops = LocalOperations(self.store, branch_id="b1", events=hub)
        client = APIClient(BranchAPI(ops, clock=self.reactor).resource())
        self.stream(client=client)
        response = self.successResultOf(client.request("GET", "/events/"))
        self.assertEqual(response.code, 503, response.body)


class SlowClientTests(SynchronousTestCase):
    def test_a_slow_client_is_dropped_holding_nothing(self):
        channel = DummyChannel()
        aborted = []
        # Twisted's dummy TCP transport has no abortConnection; a real one has.
        channel.transport.abortConnection = lambda: aborted.append(True)
        request = Request(channel)
        request.method, request.clientproto = b"GET", b"HTTP/1.1"
        stopped = []

        class Watch:
            def stop(self):
                stopped.append(True)

        from twisted.internet.task import Clock
        stream = Stream(request, Clock(), max_queued=3)
        stream.watch = Watch()
        stream.start()
        event = {"id": "b1:1", "type": "created", "instance": "w1"}
        stream.send(event)
        written = channel.transport.written.getvalue()
        self.assertEqual(written.count(frame(event)), 1)
        stream.pauseProducing()  # its connection's buffer is full
        for _ in range(3):
            stream.send(event)
        self.assertEqual(channel.transport.written.getvalue(), written)
        stream.resumeProducing()
        self.assertEqual(channel.transport.written.getvalue().count(frame(event)), 4)
        stream.pauseProducing()
        for _ in range(MAX_QUEUED):
            stream.send(event)
        self.assertEqual(stopped, [True])
        self.assertEqual(aborted, [True])
        self.assertEqual(len(stream._queue), 0)


class DriftRouteTests(EventsTestCase):
    def test_instances_carry_their_drift(self):
        self.create("w1", queues="tasks")
        shown = self.successResultOf(self.client.request("GET", "/foo/instances/w1/")).json
        self.assertEqual(shown["drift"], [
            {"kind": "worker", "detail": "worker starting", "since": 1000.0}])
        self.assertIsNone(shown["last_pong"])
        self.control.up("w1@h", queues=["dq.w1"])
        self.pump(0.3)
        shown = self.successResultOf(self.client.request("GET", "/foo/instances/w1/")).json
        self.assertEqual(shown["state"], "running")
        self.assertGreater(shown["last_pong"], 1000)
        self.assertAlmostEqual(shown["uptime"], 0.3, places=1)
        # Told to consume tasks, not yet seen doing it.
        self.assertEqual(shown["drift"], [
            {"kind": "queues", "detail": "not consuming tasks yet", "since": 1000.05}])
        self.pump(5)  # the next tick asks again: it does now
        shown = self.successResultOf(self.client.request("GET", "/foo/instances/w1/")).json
        self.assertEqual(shown["live"]["queues"], ["dq.w1", "tasks"])
        self.assertEqual(shown["drift"], [])

    def test_drift_lists_the_instances_that_differ(self):
        self.create("w1")
        self.create("w2")
        self.control.up("w1@h", queues=["dq.w1"])
        self.pump(0.3)
        response = self.successResultOf(self.client.request("GET", "/drift/"))
        self.assertEqual(response.code, 200)
        self.assertEqual([i["name"] for i in response.json], ["w2"])
        self.assertEqual(response.json[0]["drift"][0]["kind"], "worker")
