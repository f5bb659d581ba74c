"""Attacks on queued URLs with real branches, workers and broker (the
helpers of L{tests.tasks.test_integration_tasks}) that got through when
these tests were written: each test is the attack, with what it must not
achieve.
"""

import json
import uuid

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest

from tests.integration import broker_url, made_vhost, sleep
from tests.localhost import outside_address
from tests.tasks.test_integration_tasks import QUEUE, VHOST, Target, TaskTestCase
from tests.test_daemon import deferred


def publish_webhook(url, kwargs, exchange=QUEUE, routing_key=QUEUE):
    """In a thread: publish a C{cyme.webhook} task (Celery's protocol 2) on
    the broker at C{url}, as anyone who may publish there can."""
    from kombu import Connection

    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": "cyme.webhook", "id": task_id, "root_id": task_id,
        "parent_id": None, "group": None, "retries": 0, "timelimit": [None, None],
        "eta": None, "expires": None, "argsrepr": "()", "kwargsrepr": repr(kwargs),
        "origin": "someone@elsewhere", "ignore_result": False,
    }
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                     "chord": None}])
    with Connection(url, connect_timeout=5) as connection:
        producer = connection.Producer()
        producer.publish(body, exchange=exchange, routing_key=routing_key, headers=headers,
                         content_type="application/json", content_encoding="utf-8",
                         delivery_mode=2, correlation_id=task_id)
    return task_id


class FenceAttackTests(TaskTestCase):
    timeout = 120

    def bearer(self, secret):
        return {"Authorization": [f"Bearer {secret}"]}

    async def write_token(self, branch):
        """A C{read,write} token, made by the operator (loopback)."""
        made = await self.ok("POST", branch, "/tokens/",
                             data={"name": "owner", "scope": "read,write"})
        return made["token"]

    @deferred
    async def test_a_task_published_on_the_app_broker_cannot_widen_the_fence(self):
        """
        The worker fences each hop with the C{allowed_hosts} of the task
        message, and anyone who can publish on the app's broker writes that
        message: the app's owner, who chose the broker (a C{write} token),
        or any other user of it.  A task with C{allowed_hosts:
        ["127.0.0.1"]} reached loopback (the branch's own API, RabbitMQ's
        management, the cloud metadata service with 169.254.169.254) from
        an app whose own list is empty.
        """
        machine = outside_address()
        if machine is None:
            raise SkipTest("this machine has no network address besides loopback")
        # A target the default fence allows (this machine's network
        # address): it shows that a task published on the broker runs.
        allowed = Target()
        allowed_port = allowed.listen(interface=machine)
        self.addCleanup(lambda: defer.ensureDeferred(allowed.close()))
        branch = await self.start_branch("a")
        await self.ok("PUT", branch, "/foo/")  # allowed_hosts empty: the default policy
        await self.ok("PUT", branch, f"/foo/queues/{QUEUE}/")
        await self.create_worker(branch)
        url = broker_url(made_vhost(VHOST))

        await threads.deferToThread(publish_webhook, url, {
            "method": "GET", "url": f"http://{machine}:{allowed_port}/control"})
        await self.poll(lambda: allowed.find("/control") or None, 20,
                        "the control task reaching the allowed target")

        for allowed_hosts in (["127.0.0.1"], ["0.0.0.0/0"]):
            await threads.deferToThread(publish_webhook, url, {
                "method": "GET", "url": self.target_url("/attack"),
                "allowed_hosts": allowed_hosts})
        await threads.deferToThread(publish_webhook, url, {
            "method": "GET", "url": f"http://{machine}:{allowed_port}/after"})
        # The tasks run in order on the solo worker: once the last is
        # done, the others were tried.
        await self.poll(lambda: allowed.find("/after") or None, 20, "the last task")
        await sleep(0.5)
        self.assertEqual(self.target.find("/attack"), [])

    @deferred
    async def test_a_write_token_cannot_reach_the_branch_api_through_a_queued_url(self):
        """
        A C{write} token sets its app's C{allowed_hosts}, and what it lists
        is allowed even inside a refused range: C{127.0.0.1:<the branch's
        port>} lets a queued URL call the branch's own API from the
        worker, on loopback, trusted with every scope.  The task's result
        (readable with C{read}) then held a new admin token.
        """
        branch = await self.start_branch("a")
        secret = await self.write_token(branch)
        owner = self.bearer(secret)
        # Everything below is the token's owner, whatever it is refused.
        await self.call("PUT", branch.url("/foo/"), headers=owner,
                        data={"allowed_hosts": f"127.0.0.1:{branch.port}"})
        await self.call("PUT", branch.url(f"/foo/queues/{QUEUE}/"), headers=owner)
        code, _, _ = await self.call("PUT", branch.url("/foo/instances/w1/"), headers=owner,
                                     data={"pool": "solo"}, timeout=30)
        self.assertIn(code, (200, 201))
        await self.poll(lambda: self.running(branch, "w1"), 30, "w1 running")
        await self.call("PUT", branch.url(f"/foo/instances/w1/queues/{QUEUE}/"), headers=owner)
        code, accepted, _ = await self.call(
            "POST", branch.url(f"/foo/queue/{QUEUE}/http://127.0.0.1:{branch.port}/tokens/"),
            headers=owner, data={"name": "stolen", "scope": "admin"}, timeout=20)
        if code == 202:
            code, done, _ = await self.call(
                "GET", branch.url(f"/foo/query/{accepted['uuid']}/wait/?timeout=20"),
                headers=owner, timeout=25)
            self.assertNotIn("cyme_", json.dumps(done))
        tokens = await self.ok("GET", branch, "/tokens/")
        self.assertEqual([t["name"] for t in tokens], ["owner"])

    @deferred
    async def test_a_refused_queue_declaration_does_not_stop_queueing_on_its_broker(self):
        """
        A queue whose exchange exists with another type (another app's, or
        the cluster bus's C{<cluster>.bus} on the branches' own broker, the
        default of new apps) makes the broker close the branch's publishing
        channel (406); the branch never opened another while the connection
        stayed up, so every queued URL of every app on that broker was a
        503 ("not reachable") until the branch restarted.  A C{write} token
        suffices.
        """
        branch = await self.start_branch("a")
        await self.declare(branch)
        target = self.target_url("/text")
        await self.queue(branch, "GET", target)
        await self.ok("PUT", branch, "/foo/queues/clash/",
                      data={"exchange": QUEUE, "exchange_type": "fanout"})
        code, body, _ = await self.call(
            "GET", self.queue_url(branch, target, queue="clash"), timeout=20)
        self.assertEqual(code, 502, body)  # refused by the broker: said so

        async def queued():
            code, body, _ = await self.call(
                "GET", self.queue_url(branch, target), timeout=20)
            return body if code == 202 else None

        await self.poll(queued, 20, "a URL queued again on the broker's other queue")
