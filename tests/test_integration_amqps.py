"""AMQPS end to end: real branches and workers on the real RabbitMQ, over TLS.

The shared RabbitMQ on 127.0.0.1:5672 speaks plain AMQP and is not the
tests' to reconfigure, so each test puts TLS listeners of its own in front
of it (L{tests.tlsbroker.TLSProxy}, in the test process) with certificates
of a private CA the test makes:

  - C{good}: a certificate for C{localhost}, signed by the CA that the
    branches are given with C{--broker-ca};
  - C{wrong}: signed by that CA, but for C{rabbit.example.org};
  - C{stranger}: for C{localhost}, signed by a CA nobody trusts.

Branches (``twistd -n cyme-branch``, the helpers of L{tests.integration})
run with C{-b amqps://guest:guest@localhost:<good>/<vhost>}, in a virtual
host of this run (C{cyme-amqps-it-<pid>}) and a cluster of the test's own;
workers are real ``celery worker`` processes (solo pool).  A queued URL
reaches a small HTTP server of the test on 127.0.0.1.

Skipped, with the reason, when nothing listens on 127.0.0.1:5672 for 20 s.
"""

import json
import os
import uuid

from twisted.internet import defer, reactor
from twisted.web import server, static

from tests.integration import IntegrationTestCase, processes, run_vhost, sleep
from tests.test_daemon import deferred
from tests.tlsbroker import PrivateCA, TLSProxy

VHOST = "cyme-amqps-it"


class AMQPSTestCase(IntegrationTestCase):
    timeout = 120
    broker_wait = 20
    http_timeout = 20
    get_timeout = 10

    async def set_up(self):
        await super().set_up()
        self.vhost = await run_vhost(VHOST)
        self.tag = uuid.uuid4().hex[:6]
        certificates = self.path("certificates")
        os.makedirs(certificates)
        self.ca = PrivateCA(certificates)
        self.good = self.proxy(self.ca, "localhost")
        self.wrong = self.proxy(self.ca, "rabbit.example.org")
        self.stranger = self.proxy(PrivateCA(certificates, "stranger"), "localhost")
        # The target of the queued URLs: one page, whatever the path.
        page = static.Data(b"hello over TLS", "text/plain")
        page.isLeaf = True
        target = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
        self.addCleanup(target.stopListening)
        self.target = f"http://127.0.0.1:{target.getHost().port}/"

    def proxy(self, ca, name):
        proxy = TLSProxy(ca, name)
        self.addCleanup(lambda: defer.ensureDeferred(proxy.close()))
        return proxy

    async def branch(self, name, proxy=None):
        """Branch C{<name>-<tag>} on C{proxy} (the good one), trusting the test's CA;
        its operator opens loopback, where the target listens, to the apps."""
        return await self.start_branch(
            f"{name}-{self.tag}", "-b", (proxy or self.good).url(self.vhost),
            "--broker-ca", self.ca.path, "--webhook-allow", "127.0.0.1",
        )

    async def app(self, via, name, proxy=None):
        """App C{name} (on C{proxy}'s broker, else the branch's) with queue C{tasks-<tag>}."""
        data = {"allowed_hosts": "127.0.0.1"}
        if proxy is not None:
            data["broker"] = proxy.url(self.vhost)
        app = await self.ok("PUT", via, f"/{name}/", data=data)
        await self.ok("PUT", via, f"/{name}/queues/tasks-{self.tag}/")
        return app

    async def queue_url(self, via, app, expected):
        """C{GET /<app>/queue/tasks-<tag>/<target>}: its body, with the C{expected} code."""
        code, body = await self.request(
            "GET", via.url(f"/{app}/queue/tasks-{self.tag}/{self.target}"), timeout=30)
        self.assertEqual(code, expected, body)
        return body

    async def refused_instance(self, via, app, says):
        """An instance of C{app}, created without waiting: its JSON once its
        C{last_error} C{says} what the worker refused; it never runs."""
        name = f"w{uuid.uuid4().hex[:8]}"
        code, body = await self.request(
            "PUT", via.url(f"/{app}/instances/!/{name}/"),
            data={"pool": "solo", "queues": f"tasks-{self.tag}"})
        self.assertEqual(code, 202, body)
        instance = await self.poll_get(
            via, f"/{app}/instances/{name}/",
            lambda code, body: code == 200 and says in (body["last_error"] or ""),
            30, f"{name}'s last_error says {says!r}",
        )
        # Given time, it would run if anything fell back to plain AMQP on
        # port 5672 (where the broker is).
        await sleep(3)
        code, instance = await self.get(via, f"/{app}/instances/{name}/")
        self.assertNotEqual(instance["state"], "running", instance)
        self.assertIn(says, instance["last_error"])
        self.assertNotIn("guest:guest", json.dumps(instance))
        return instance

    def assertLogged(self, branch, *texts):
        """Every one of C{texts} in one line of C{branch}'s log, at error level."""
        lines = [line for line in branch.process.output.splitlines()
                 if all(text in line for text in texts)]
        self.assertTrue(lines, f"no line says {texts}:\n{branch.process.output[-3000:]}")
        for line in lines:
            self.assertIn("#error]", line)


class AMQPSEndToEndTests(AMQPSTestCase):
    @deferred
    async def test_a_cluster_on_an_amqps_broker(self):
        """
        Two branches on an amqps:// broker form a cluster (the bus); an app
        made on one gets the branch's TLS broker and is seen on the other; an
        instance placed on the second runs (its worker over verified TLS)
        and answers the remote control asked through the first; a URL
        queued through the first is done by the worker, its result back.
        """
        a = await self.branch("a")
        b = await self.branch("b")
        ids = sorted([a.id, b.id])
        for node in (a, b):
            await self.poll_get(node, "/branches/", lambda code, body: body == ids, 20,
                                f"{node.id} sees both branches over the TLS bus")

        app = await self.app(a, "foo")
        self.assertEqual(app["broker"], {
            "hostname": "localhost", "port": self.good.port, "userid": "guest",
            "password": "guest", "virtual_host": self.vhost, "ssl": True,
        })
        self.assertEqual(await self.get(b, "/foo/"), (200, app))

        name = f"w{self.tag}"
        code, instance, _ = await self.call(
            "PUT", a.url(f"/foo/instances/{name}/?branch={b.id}"),
            data={"pool": "solo", "queues": f"tasks-{self.tag}"}, timeout=40)
        self.assertIn(code, (200, 201), instance)
        instance = await self.poll_get(
            a, f"/foo/instances/{name}/",
            lambda code, body: code == 200 and body["state"] == "running", 30,
            f"{name} running on {b.id}",
        )
        self.assertEqual(instance["branch"], b.id)
        # The worker is connected through the TLS listener, with the test's
        # CA (which no system trusts): verified as the branch verifies.
        with open(os.path.join(b.instance_dir(name), "worker.log")) as f:
            log = f.read()
        self.assertRegex(log, rf"Connected to amqps://guest:\*\*@[^/]+:{self.good.port}/")

        # The remote control, asked through the other branch.
        stats = await self.ok("GET", a, f"/foo/instances/{name}/stats/")
        self.assertEqual(stats["pid"], instance["pid"])

        # A queued URL: published by a, done by b's worker, its result back to a.
        task = await self.queue_url(a, "foo", 202)
        code, done = await self.request(
            "GET", a.url(f"/foo/query/{task['uuid']}/wait/?timeout=20"), timeout=30)
        self.assertEqual(code, 200, done)
        self.assertEqual(done["state"], "SUCCESS", done)
        self.assertEqual(done["result"]["status_code"], 200)
        self.assertEqual(done["result"]["content"], "hello over TLS")

        # All of it went through the TLS listener: the branches' pools (one
        # connection per broker each) and the worker's connections.
        self.assertGreaterEqual(len(self.good.accepted), 3)
        self.assertEqual(self.wrong.accepted + self.stranger.accepted, [])
        self.assertTrue(processes.alive(instance["pid"]))


class AMQPSRefusalTests(AMQPSTestCase):
    @deferred
    async def test_a_certificate_for_another_host_is_refused(self):
        """
        An app whose amqps:// broker shows a certificate for another host:
        its instance's worker refuses it (last_error), the branch refuses it
        (its log, and a queued URL's 503 says why), and nothing falls back
        to plain AMQP.
        """
        a = await self.branch("a")
        await self.app(a, "bad", proxy=self.wrong)
        await self.refused_instance(
            a, "bad", "TLS: the broker's certificate is not for its host name: refused")
        body = await self.queue_url(a, "bad", 503)
        self.assertIn(f"broker amqps://guest:**@localhost:{self.wrong.port}/", body["error"])
        self.assertIn("TLS: the broker's certificate is not for localhost: refused",
                      body["error"])
        self.assertLogged(a, f"cannot connect to AMQP broker localhost:{self.wrong.port}",
                          "TLS: the broker's certificate is not for localhost: refused")
        self.assertNotIn("guest:guest", a.process.output)
        # The branch's own broker, and its cluster, are unaffected.
        self.assertEqual(await self.get(a, "/branches/"), (200, [a.id]))

    @deferred
    async def test_a_certificate_of_an_unknown_ca_is_refused(self):
        """
        A branch whose own broker (-b) shows a certificate of a CA it does
        not trust: its bus and the apps of that default broker are refused,
        with the reason in the log, an instance's last_error and a queued
        URL's 503.
        """
        a = await self.branch("a", proxy=self.stranger)
        await self.app(a, "foo")
        await self.refused_instance(
            a, "foo", "TLS: the broker's certificate is not trusted: refused")
        body = await self.queue_url(a, "foo", 503)
        self.assertIn("TLS: the broker's certificate is not trusted: refused",
                      body["error"])
        self.assertLogged(a, f"cannot connect to AMQP broker localhost:{self.stranger.port}",
                          "not trusted: refused")
        self.assertEqual(self.good.accepted, [])
