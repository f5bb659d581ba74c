"""The event stream and drift on a real branch with a real worker: created,
started, ready; killed (SIGKILL): stopped and restarted; stopped (SIGSTOP):
unresponsive, replaced; and ``cyme events`` tailing the same stream.
Skipped, with the reason, when nothing listens on 127.0.0.1:5672."""

import json
import os
import signal

from tests.api.eventstream import EventsTestCase
from tests.test_daemon import deferred


class EventStreamTests(EventsTestCase):
    vhost_prefix = "cyme-events"

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
        # The stopped worker is replaced within a fraction of a second of
        # being found unresponsive: /drift/ is read all along to see it.
        drifting, codes = [], set()

        async def read_drift():
            code, drift = await self.get(branch, "/drift/")
            codes.add(code)
            drifting.extend(i["name"] for i in drift)
            return [e for e in reader.events[count:] if e["type"] == "ready"] or None

        await self.poll(read_drift, 40, "ready after the stopped worker was replaced",
                        interval=0.02)
        unresponsive = [e for e in reader.events[count:] if e["type"] == "unresponsive"]
        self.assertEqual(unresponsive[0]["reason"], f"pid {pid} did not answer ping")
        self.assertEqual((codes, "w1" in drifting), ({200}, True))
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
        code, out, err = await self.cyme(branch, "-F", "json", "events", "--last", "3",
                                         "--count", "3")
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(lines, reader.events[-3:])
        code, out, err = await self.cyme(branch, "events", "-t", "ready", "--last", "1",
                                         "--count", "1")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  ev  ready  foo/w1  "
                                       r"pid \d+ answered ping\n$")


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass
