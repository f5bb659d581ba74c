"""Health and logs on real branches and workers: ``GET /health/`` turning 503
for a branch whose broker is out of reach and staying 200 beside an app's,
the log as JSON lines, and a real worker's output relayed at its levels,
its broker refusal once.
"""

import datetime
import json
import uuid

from tests.integration import INTERVAL, sleep
from tests.supervision.test_integration_workers import READY_TIMEOUT, WorkerTestCase
from tests.test_daemon import deferred, free_port

#: Celery's own time stamp at the start of a log line it wrote.
CELERY_TIME = "%Y-%m-%d %H:%M:%S,%f"


class HealthLogTestCase(WorkerTestCase):
    timeout = 90
    branch_options = WorkerTestCase.branch_options + ("--log-format", "json")

    def log(self, branch):
        """Every line the branch wrote, each one a JSON object."""
        lines = [line for line in branch.process.output.splitlines() if line.strip()]
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail(f"not a JSON line: {line!r}")
        return records

    def relayed(self, branch, instance):
        return [r for r in self.log(branch)
                if r["namespace"] == "cyme.worker" and r.get("instance") == instance]

    async def health(self, branch, check, what, timeout=15):
        return await self.poll_get(branch, "/health/", check, timeout, what)


class HealthTests(HealthLogTestCase):
    @deferred
    async def test_ready_then_a_branch_whose_broker_is_away(self):
        branch = await self.start_branch("h1")
        body = await self.health(branch, lambda code, body: code == 200, "ready")
        self.assertEqual((body["ready"], body["failing"], body["instances"]),
                         (True, {}, {"running": 0, "total": 0}))

        # A branch whose -b names a port nothing listens on (the shared
        # RabbitMQ goes on serving the others).
        away = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
        other = await self.start_branch("h2", "-b", away)
        body = await self.health(
            other, lambda code, body: code == 503 and "bus" in body["failing"],
            "503 naming the bus broker")
        self.assertEqual(body["ready"], False)
        self.assertTrue(body["failing"]["bus"].startswith("bus broker unreachable: "),
                        body)
        self.assertEqual(list(body["failing"]), ["bus"])
        self.assertNotIn("guest:guest", json.dumps(body))
        # Its log says why too, with no password: JSON lines all of it.
        lost = [r for r in self.log(other) if "cannot connect to AMQP broker" in r["message"]]
        self.assertTrue(lost)
        self.assertEqual(lost[0]["level"], "warn")
        self.assertNotIn("guest:guest", other.process.output)
        # The first branch was ready all along.
        code, _ = await self.get(branch, "/health/")
        self.assertEqual(code, 200)

    @deferred
    async def test_an_apps_broker_is_its_own(self):
        """
        An app whose broker is out of reach is listed under its name and
        the branch stays ready; its worker's refusals (Celery retries every
        few seconds) are relayed as one warning.
        """
        branch = await self.start_branch("h3")
        away = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
        code, body = await self.request("PUT", branch.url("/far/"), data={"broker": away})
        self.assertEqual(code, 201, body)
        name = f"far{uuid.uuid4().hex[:8]}"
        code, body = await self.request("PUT", branch.url(f"/far/instances/!/{name}/"))
        self.assertEqual(code, 202, body)
        body = await self.health(
            branch, lambda code, body: body.get("apps", {}).get("far", {}).get("broker")
            == "unreachable", "far's broker listed as unreachable")
        self.assertEqual(body["ready"], True)
        self.assertEqual(body["failing"], {})
        self.assertNotIn("guest:guest", json.dumps(body))
        code, _ = await self.get(branch, "/health/")
        self.assertEqual(code, 200)

        await self.wait_instance(branch, name, lambda i: i["state"] == "failed",
                                 READY_TIMEOUT, f"{name} failed", app="far")
        # Three refusals written (Celery waits 2, then 4 s between them)...
        directory = branch.instance_dir(name)

        def refusals_written():
            with open(f"{directory}/worker.log", encoding="utf-8", errors="replace") as f:
                count = f.read().count("Cannot connect to")
            return count if count >= 3 else None

        await self.poll(refusals_written, 20, "three refusals in worker.log")
        await sleep(0.5)
        # ... one warning in the branch's log.
        refusals = [r for r in self.relayed(branch, name) if "Cannot connect to" in r["message"]]
        self.assertEqual([r["level"] for r in refusals], ["warn"], refusals)
        self.assertNotIn("guest:guest", branch.process.output)


class RelayTests(HealthLogTestCase):
    @deferred
    async def test_a_real_workers_lines_at_their_levels(self):
        branch = await self.start_branch("r1", "--webhook-allow", "127.0.0.1")
        code, body = await self.request("PUT", branch.url("/foo/"),
                                         data={"allowed_hosts": "127.0.0.1"})
        self.assertIn(code, (200, 201), body)
        name = (await self.create(branch))["name"]
        await self.consume(branch, name, self.queue)
        await self.wait_consuming(branch, name, self.queue, timeout=INTERVAL + 3)
        # A queued URL nothing answers: the task fails, Celery logs an error.
        code, task = await self.request(
            "GET", branch.url(f"/foo/queue/{self.queue}/http://127.0.0.1:{free_port()}/x"))
        self.assertEqual(code, 202, task)
        code, result = await self.request(
            "GET", branch.url(f"/foo/query/{task['uuid']}/wait/?timeout=20"), timeout=25)
        self.assertEqual(result["state"], "FAILURE", result)

        def error_relayed():
            lines = self.relayed(branch, name)
            return lines if any(r["level"] == "error" for r in lines) else None

        lines = await self.poll(error_relayed, 5, "the task's error relayed")
        levels = {r["message"].split("] ", 1)[-1][:40]: r["level"] for r in lines}
        connected = [r for r in lines if "Connected to amqp://" in r["message"]]
        self.assertEqual([r["level"] for r in connected], ["info"])
        ready = [r for r in lines if f"{name}@" in r["message"] and "ready." in r["message"]]
        self.assertEqual([r["level"] for r in ready], ["info"], levels)
        failed = [r for r in lines if task["uuid"] in r["message"]
                  and r["level"] == "error"]
        self.assertTrue(failed, levels)
        # The traceback under it, at its level too.
        after = lines[lines.index(failed[0]) + 1:]
        self.assertTrue(after and after[0]["level"] == "error", after[:3])
        # No banner: the worker's configuration is the instance's JSON.
        self.assertFalse([r for r in lines if "[queues]" in r["message"]
                          or ".> transport:" in r["message"] or "[tasks]" in r["message"]])
        # Relayed as it came: within a second of Celery writing it.
        for r in lines:
            stamp = r["message"].split("| [", 1)[-1][:23]
            try:
                written = datetime.datetime.strptime(stamp, CELERY_TIME)
            except ValueError:
                continue
            logged = datetime.datetime.fromisoformat(r["time"]).astimezone().replace(
                tzinfo=None)
            self.assertLess((logged - written).total_seconds(), 1.0, r)
