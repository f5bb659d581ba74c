"""The event stream and drift on a real branch with a real worker: created,
started, ready; killed (SIGKILL): stopped and restarted; stopped (SIGSTOP):
unresponsive, replaced; and ``cyme events`` tailing the same stream.
Skipped, with the reason, when nothing listens on 127.0.0.1:5672."""

import json
import os
import signal

import treq
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN, deferred


class EventReader(Protocol):
    """A real client's stream: its messages as they arrive (C{close} leaves)."""

    def __init__(self):
        self.buffer = b""
        self.events = []
        self.ids = []

    def close(self):
        if self.transport is not None:
            self.transport.stopProducing()  # the response's: closes the connection

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                          if line and not line.startswith(":") and ": " in line)
            if "data" in fields:
                self.events.append(json.loads(fields["data"]))
                self.ids.append(fields.get("id"))


class EventStreamTests(IntegrationTestCase):
    timeout = 150
    vhost_prefix = "cyme-events"

    async def open_stream(self, branch, path="/events/"):
        return await self.stream(branch.url(path))

    async def stream(self, url, headers=None):
        reader = EventReader()
        response = await treq.get(url, unbuffered=True, timeout=10, headers=headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        response.deliverBody(reader)
        self.addCleanup(reader.close)
        return reader

    async def until_event(self, reader, instance, kind, timeout=30):
        def probe():
            for event in reader.events:
                if event["instance"] == instance and event["type"] == kind:
                    return event
            return None
        return await self.poll(probe, timeout, f"{kind} event of {instance}: "
                                                f"{[(e['type'], e['instance']) for e in reader.events]}")

    @deferred
    async def test_a_killed_and_a_stopped_worker_on_the_stream(self):
        branch = await self.start_branch("ev")
        reader = await self.open_stream(branch)
        filtered = await self.open_stream(branch, "/events/?type=unresponsive,restarted")
        await self.ok("PUT", branch, "/foo/")
        await self.until_event(reader, None, "app")

        # Created, started, ready.
        code, body, _ = await self.call("PUT", branch.url("/foo/instances/w1/"),
                                        data={"pool": "solo"}, timeout=30)
        self.assertIn(code, (201,), body)
        await self.until_event(reader, "w1", "created")
        started = await self.until_event(reader, "w1", "started")
        ready = await self.until_event(reader, "w1", "ready")
        self.assertEqual((ready["app"], ready["branch"]), ("foo", "ev"))
        self.assertLessEqual(started["time"], ready["time"])
        shown = await self.poll_get(branch, "/foo/instances/w1/",
                                    lambda c, b: c == 200 and b["drift"] == [], 20,
                                    "w1 without drift")
        self.assertGreaterEqual(shown["uptime"], 0)
        self.assertIsInstance(shown["last_pong"], float)

        # Killed: stopped (died), restarted, ready again.
        pid = shown["pid"]
        # Counted before the kill: a forked replacement may be ready within
        # milliseconds, before the test reads the restart.
        count = len(reader.events)
        os.kill(pid, signal.SIGKILL)
        stopped = await self.until_event(reader, "w1", "stopped")
        self.assertIn(f"pid {pid} died", stopped["reason"])
        restarted = await self.until_event(reader, "w1", "restarted")
        self.assertNotIn(str(pid), restarted["reason"].split()[1])
        await self.poll(lambda: [e for e in reader.events[count:] if e["type"] == "ready"]
                        or None, 30, "ready again")

        # Stopped (SIGSTOP): unresponsive, then replaced.
        shown = await self.poll_get(branch, "/foo/instances/w1/",
                                    lambda c, b: c == 200 and b["state"] == "running", 20,
                                    "w1 running")
        pid = shown["pid"]
        count = len(reader.events)
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: _signal(pid, signal.SIGCONT))
        unresponsive = await self.poll(
            lambda: [e for e in reader.events[count:] if e["type"] == "unresponsive"] or None,
            30, "unresponsive")
        self.assertEqual(unresponsive[0]["reason"], f"pid {pid} did not answer ping")
        code, drift = await self.get(branch, "/drift/")
        self.assertEqual(code, 200)
        self.assertIn("w1", [i["name"] for i in drift])
        await self.poll(lambda: [e for e in reader.events[count:] if e["type"] == "ready"]
                        or None, 40, "ready after the stopped worker was replaced")
        after = [e["type"] for e in reader.events[count:] if e["instance"] == "w1"]
        self.assertEqual(after[:2], ["unresponsive", "stopping"], after)
        self.assertIn("restarted", after)

        # The filtered stream had only those types.
        self.assertEqual({e["type"] for e in filtered.events}, {"unresponsive", "restarted"})

        # Ids are per branch and grow; resuming after one gives what followed.
        ids = [int(i.split(":")[1]) for i in reader.ids]
        self.assertEqual(ids, sorted(ids))
        resumed = await self.stream(branch.url("/events/"),
                                    headers={"Last-Event-ID": reader.ids[-3]})
        await self.poll(lambda: len(resumed.events) >= 2 or None, 10, "resumed")
        self.assertEqual(resumed.events[:2], reader.events[-2:])
        resumed.close()

        # The command tails the same stream.
        out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "cyme"),
            ["--url", branch.base, "-F", "json", "events", "--last", "3", "--count", "3"],
            env=dict(os.environ), path=self.cwd)
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual(lines, reader.events[-3:])
        out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "cyme"),
            ["--url", branch.base, "events", "-t", "ready", "--last", "1", "--count", "1"],
            env=dict(os.environ), path=self.cwd)
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  ev  ready  foo/w1  "
                                       r"pid \d+ answered ping\n$")


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass
