"""The event types L{tests.api.test_integration_events} does not reach, on
real branches and workers: a worker that cannot start (``failed``,
``quarantined``) and its instance ``deleted``, one app's events
(``?app=``); a queue declared, a consumer added and removed, autoscale
changed (``queue``, ``consumer``, ``changed``); a ``Last-Event-ID`` no
longer held (``reset``); one branch stopped and started again as the other
sees it (``offline``, ``online``); and ``cyme drift`` while a worker is
stopped (SIGSTOP).  Skipped, with the reason, when nothing listens on
127.0.0.1:5672.
"""

import json
import os
import re
import signal
import uuid

from tests.api.eventstream import EventsTestCase
from tests.test_daemon import deferred


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass


class EventTypesTests(EventsTestCase):
    vhost_prefix = "cyme-evtypes"

    def setUp(self):
        # Branches of one test only see each other: ids of their own.
        self.tag = uuid.uuid4().hex[:6]
        return super().setUp()

    async def running(self, branch, name, app="foo", **params):
        """An instance with the solo pool on C{branch}, running: its JSON."""
        await self.ok("PUT", branch, f"/{app}/instances/{name}/",
                      data={"pool": "solo", **params}, timeout=30)
        return await self.poll_get(branch, f"/{app}/instances/{name}/",
                                   lambda c, b: c == 200 and b["state"] == "running", 20,
                                   f"{name} running")

    @deferred
    async def test_a_worker_that_cannot_start_is_quarantined_then_deleted(self):
        """
        A worker that exits at once (its app imports a task module, allowed
        by the branch, that does not exist) fails,
        is restarted with backoff and quarantined; deleted, its instance
        says so; a stream of its app alone has its events and none of
        another app.
        """
        branch = await self.start_branch(f"q-{self.tag}", "--task-module", "cymenothere.*")
        everything = await self.open_stream(branch)
        bar = await self.open_stream(branch, "/events/?app=bar")
        await self.ok("PUT", branch, "/foo/")
        await self.ok("PUT", branch, "/bar/", json={"imports": ["cymenothere.tasks"]})
        # The ! form answers at once: the worker will never answer a ping.
        await self.ok("PUT", branch, "/bar/instances/!/q1/", expected=(202,),
                      data={"pool": "solo"})
        quarantined = await self.until_event(everything, "q1", "quarantined", timeout=35)
        self.assertEqual(quarantined["app"], "bar")
        self.assertRegex(quarantined["reason"], r"^failing too often \(last: .+\)$")
        kinds = [e["type"] for e in everything.events if e["instance"] == "q1"]
        self.assertEqual(kinds[:2], ["created", "started"], kinds)
        self.assertIn("restarted", kinds)
        self.assertGreaterEqual(kinds.count("stopped"), 5, kinds)
        code, body = await self.get(branch, "/bar/instances/q1/")
        self.assertEqual((code, body["state"]), (200, "quarantined"), body)
        self.assertGreater(body["quarantined_until"], quarantined["time"])
        self.assertEqual([d["kind"] for d in body["drift"]], ["worker"], body)

        await self.ok("DELETE", branch, "/bar/instances/q1/")
        deleted = await self.until_event(everything, "q1", "deleted")
        self.assertEqual((deleted["app"], deleted["reason"]), ("bar", "instance deleted"))

        # ?app=bar: bar's events (the app, then the instance's), in the
        # same order and with the same ids, and nothing of foo.
        await self.until_event(bar, "q1", "deleted", timeout=5)
        self.assertEqual(bar.events, [e for e in everything.events if e["app"] == "bar"])
        self.assertEqual(bar.events[0]["type"], "app")
        self.assertIn("foo", [e["app"] for e in everything.events])

    @deferred
    async def test_queues_consumers_changes_and_a_reset(self):
        """
        A queue declared, an instance consuming it then no longer, its
        autoscale and its enabled flag changed: each is an event of the
        branch the change went through; a Last-Event-ID older than every
        event held, or of no run of the branch, is a reset.
        """
        branch = await self.start_branch(f"c-{self.tag}")
        reader = await self.open_stream(branch)
        await self.ok("PUT", branch, "/foo/")
        await self.ok("PUT", branch, "/foo/queues/jobs/")
        declared = await self.until(reader, "queue declared", type="queue")
        self.assertEqual((declared["app"], declared["reason"]), ("foo", "queue jobs declared"))
        await self.ok("PUT", branch, "/foo/queues/jobs/", data={"routing_key": "other"})
        await self.until(reader, "queue changed", type="queue", reason="queue jobs changed")

        await self.running(branch, "w1", max_concurrency="2", min_concurrency="1")
        await self.ok("PUT", branch, "/foo/instances/w1/queues/jobs/")
        await self.until(reader, "consumer added", type="consumer", instance="w1",
                         reason="consumes jobs")
        await self.ok("DELETE", branch, "/foo/instances/w1/queues/jobs/")
        await self.until(reader, "consumer cancelled", type="consumer", instance="w1",
                         reason="no longer consumes jobs")
        await self.ok("POST", branch, "/foo/instances/w1/autoscale/",
                      data={"max": "4", "min": "2"})
        await self.until(reader, "autoscale changed", type="changed", instance="w1",
                         reason="autoscale max=4 min=2")
        await self.ok("POST", branch, "/foo/instances/w1/disable/", timeout=30)
        await self.until(reader, "disabled", type="changed", instance="w1", reason="disabled")
        self.assertEqual({e["branch"] for e in reader.events}, {branch.id})

        # Ids far behind the oldest held, or of no run of this branch: a
        # reset (no id), then what comes next.
        n = int(reader.ids[0].split(":")[1])
        for stale in (n - 10_000, n + 10_000_000):
            resumed = await self.stream(branch.url("/events/"),
                                        headers={"Last-Event-ID": f"{branch.id}:{stale}"})
            await self.poll(lambda: resumed.events or None, 10, "a reset")
            reset = resumed.events[0]
            self.assertEqual((reset["type"], reset["branch"], resumed.ids[0]),
                             ("reset", branch.id, None), resumed.events)
            resumed.close()
        # An id still held is no reset.
        resumed = await self.stream(branch.url("/events/"),
                                    headers={"Last-Event-ID": reader.ids[-2]})
        await self.poll(lambda: resumed.events or None, 10, "resumed")
        self.assertEqual(resumed.events, reader.events[-1:])

    @deferred
    async def test_a_branch_stopped_and_started_as_the_other_sees_it(self):
        """
        Branch b stopped (SIGTERM) is offline on a's stream, and online
        again once started; a's stream shows a's view, not b's own.
        """
        a = await self.start_branch(f"a-{self.tag}")
        reader = await self.open_stream(a)
        b = await self.start_branch(f"b-{self.tag}")
        first = await self.until(reader, "b online", type="online", peer=b.id, branch=a.id)
        self.assertIn(f"branch {b.id} at {b.advertised}", first["reason"])

        await self.stop(b.process)
        offline = await self.until(reader, "b offline", type="offline", peer=b.id, timeout=20)
        self.assertEqual(offline["branch"], a.id)
        self.assertRegex(offline["reason"], rf"^branch {b.id}: last heartbeat [\d.]+ s ago$")

        count = len(reader.events)
        await self.start_branch(b.id, root=b.root, port=b.port)
        await self.poll(lambda: [e for e in reader.events[count:]
                                 if (e["type"], e["peer"]) == ("online", b.id)] or None,
                        20, "b online again")
        presence = [(e["branch"], e["type"]) for e in reader.events
                    if e["type"] in ("online", "offline") and e["peer"] == b.id]
        self.assertEqual(presence, [(a.id, "online"), (a.id, "offline"), (a.id, "online")],
                         reader.events)

    @deferred
    async def test_cyme_drift_lists_a_stopped_worker(self):
        """
        A worker stopped (SIGSTOP) is asked to consume a queue: until the
        next round of pings (a minute here) finds it stopped, its instance
        drifts, and C{cyme drift} says so, as text and as JSON; before, it
        said there was no drift.  (A stopped worker found by a round is
        replaced within a fraction of a second: too short to look at.)
        """
        branch = await self.start_branch(f"d-{self.tag}", "--sup-interval", "60")
        await self.ok("PUT", branch, "/foo/")
        await self.ok("PUT", branch, "/foo/queues/jobs/")
        shown = await self.running(branch, "w1")
        await self.poll_get(branch, "/drift/", lambda c, b: (c, b) == (200, []), 20, "no drift")
        code, out, err = await self.cyme(branch, "drift")
        self.assertEqual((code, out), (0, "no drift: every worker is as asked\n"), err)

        os.kill(shown["pid"], signal.SIGSTOP)
        self.addCleanup(_signal, shown["pid"], signal.SIGCONT)
        # The ! form: the stopped worker never answers add_consumer.
        await self.ok("PUT", branch, "/foo/instances/w1/queues/!/jobs/", expected=(202,))
        await self.poll_get(branch, "/drift/",
                            lambda c, b: c == 200 and [i["name"] for i in b] == ["w1"], 20,
                            "w1 drifting")
        code, out, err = await self.cyme(branch, "-F", "json", "drift")
        self.assertEqual(code, 0, err)
        [instance] = json.loads(out)
        self.assertEqual((instance["name"], instance["app"], instance["branch"],
                          instance["state"], instance["pid"], instance["queues"]),
                         ("w1", "foo", branch.id, "running", shown["pid"], ["jobs"]))
        self.assertEqual(instance["drift"], [
            {"kind": "queues", "detail": "not consuming jobs yet",
             "since": instance["drift"][0]["since"]}])
        code, out, err = await self.cyme(branch, "drift")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, rf"^w1  foo  {re.escape(branch.id)}  queues: not consuming jobs "
                              r"yet \(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\)\n$")
