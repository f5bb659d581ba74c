"""GET /metrics of a real branch with a real worker, as Prometheus scrapes it.

A ``twistd -n cyme-branch`` on the RabbitMQ at 127.0.0.1:5672, in a virtual
host of this run (``cyme-prom-it-<pid>``), a real ``celery worker`` that
runs a queued URL against an HTTP target in the test process, and then a
kill: the page follows, and ``promtool check metrics`` finds nothing to
say of it (skipped, saying so, where promtool is not installed).
"""

import os
import signal

import treq
from twisted.internet import reactor
from twisted.web import server

from tests.api.test_prometheus import samples
from tests.integration import IntegrationTestCase
from tests.promtool import check_metrics, promtool
from tests.test_daemon import deferred
from tests.tools import Target

READY_TIMEOUT = 8


class PrometheusTests(IntegrationTestCase):
    timeout = 90
    http_timeout = 20
    vhost_prefix = "cyme-prom-it"
    branch_options = ("--ready-timeout", str(READY_TIMEOUT))

    async def page(self, branch):
        """The text of /metrics (not JSON)."""
        response = await treq.get(branch.url("/metrics"), pool=self.pool,
                                  timeout=self.http_timeout)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        return await treq.content(response)

    async def until(self, branch, what, check):
        """Poll the page until C{check(samples)}; those samples."""

        async def probe():
            found = samples(await self.page(branch))
            return found if check(found) else None

        return await self.poll(probe, 20, what)

    @deferred
    async def test_the_page_of_a_working_branch(self):
        promtool()
        target = Target()
        port = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/hello"
        branch = await self.start_branch("prom", "--webhook-allow", "127.0.0.1")
        await self.ok("PUT", branch, "/foo/", data={"allowed_hosts": "127.0.0.1"})
        await self.ok("PUT", branch, "/foo/queues/tasks/")
        code, instance = await self.request(
            "PUT", branch.url("/foo/instances/w1/"), data={"queues": "tasks"},
            timeout=READY_TIMEOUT + 5)
        self.assertEqual((code, instance["state"]), (201, "running"), instance)
        code, task = await self.request("GET", branch.url(f"/foo/queue/tasks/{url}"))
        self.assertEqual(code, 202, task)
        code, done = await self.request(
            "GET", branch.url(f"/foo/query/{task['uuid']}/wait/?timeout=15"), timeout=20)
        self.assertEqual((code, done["state"]), (200, "SUCCESS"), done)
        code, refused = await self.request(
            "GET", branch.url("/foo/queue/tasks/http://169.254.169.254/latest/"))
        self.assertEqual(code, 400, refused)

        found = await self.until(
            branch, "a liveness ping answered", lambda found: found.get(
                "cyme_worker_ping_round_trip_seconds_count", 0) >= 1)
        self.assertEqual(found['cyme_workers{app="foo",state="running"}'], 1)
        self.assertEqual(found['cyme_queued_urls_total{outcome="accepted"}'], 1)
        self.assertEqual(found['cyme_queued_urls_total{outcome="refused"}'], 1)
        self.assertEqual(found['cyme_results_stored_total{state="SUCCESS"}'], 1)
        self.assertGreaterEqual(found["cyme_journal_write_duration_seconds_count"], 2)
        self.assertGreaterEqual(found["cyme_supervisor_tick_duration_seconds_count"], 1)
        self.assertEqual(found['cyme_http_request_duration_seconds_count{method="GET",'
                               'route="/<app>/queue/<queue>/<url>",status="202"}'], 1)
        self.assertEqual(found['cyme_bus_messages_dropped_total{reason="unsealed"}'], 0)
        self.assertEqual(found['cyme_bus_peers{state="online"}'], 0)
        status, complaints = check_metrics(await self.page(branch))
        self.assertEqual((status, complaints), (0, ""))

        # A worker killed: restarted, and counted.
        os.kill(instance["pid"], signal.SIGKILL)
        found = await self.until(
            branch, "the restart counted", lambda found: found.get(
                'cyme_worker_restarts_total{app="foo",name="w1"}') == 1
            and found['cyme_workers{app="foo",state="running"}'] == 1)
        status, complaints = check_metrics(await self.page(branch))
        self.assertEqual((status, complaints), (0, ""))
