"""The queueing and query routes through StubTreq, over a fake task service,
against every L{IOperations} (see L{tests.api.against_every_ops}).
"""

from twisted.internet.task import Clock

from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.state.store import MemoryStore
from cyme.tasks.journal import ResultJournal
from cyme.tasks.results import BrokerUnreachable, PublishFailed
from cyme.tasks.urlcheck import check_url
from tests.api import against_every_ops


class FakeTasks:
    """The TaskService's face to the API: records what it is asked."""

    def __init__(self, journal):
        self.journal = journal
        self.queued = []
        self.fail_with = None
        self.dropped = 0

    async def queue(self, app, queue, method, url, query=None, body=None,
                    content_type=None, timeout=None):
        check_url(url, app.allowed_hosts)
        if self.fail_with is not None:
            raise self.fail_with
        self.queued.append((app.name, queue.name, method, url, query, body, content_type,
                            timeout))
        task_id = f"task-{len(self.queued)}"
        await self.journal.record(task_id, "PENDING", app=app.name)
        return task_id

    def get(self, task_id):
        return self.journal.get(task_id)

    def when_ready(self, task_id):
        return self.journal.when_ready(task_id)


class QueueRouteTestsMixin:
    def setUp(self):
        self.clock = Clock()
        path = self.mktemp()
        self.journal = ResultJournal(path, self.clock)
        self.addCleanup(self.journal.close)
        self.tasks = FakeTasks(self.journal)
        ops = self.makeOps(MemoryStore(), tasks=self.tasks, clock=self.clock)
        self.client = APIClient(BranchAPI(ops, clock=Clock()).resource())
        self.call("PUT", "/foo/", data={"allowed_hosts": "m,127.0.0.1"})
        self.call("PUT", "/foo/queues/tasks/")

    def call(self, method, path, **kwargs):
        d = self.client.request(method, path, **kwargs)
        self.clock.advance(0)
        self.client.flush()
        return self.successResultOf(d)

    def test_get_with_query_data(self):
        response = self.call("GET", "/foo/queue/tasks/http://m/import_contacts?user=133&x=1&x=2")
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json, {"uuid": "task-1", "url": "http://m/import_contacts",
                                         "queue": "tasks", "method": "GET"})
        self.assertEqual(response.header("location"), "/foo/query/task-1/result/")
        _, _, method, url, query, body, _, _ = self.tasks.queued[0]
        self.assertEqual((method, url, body), ("GET", "http://m/import_contacts", None))
        self.assertEqual(query, {"user": "133", "x": ["1", "2"]})

    def test_post_form_stays_a_form(self):
        self.call("POST", "/foo/queue/tasks/http://m/import_user",
                  data={"username": "George Costanza", "company": "Vandelay Industries"})
        _, _, method, _, _, body, content_type, _ = self.tasks.queued[0]
        self.assertEqual(method, "POST")
        self.assertEqual(body, {"username": "George Costanza", "company": "Vandelay Industries"})
        self.assertIsNone(content_type)

    def test_raw_body_travels_as_bytes(self):
        self.call("PUT", "/foo/queue/tasks/http://m/x", data=b'{"a": "\xc3\xa9"}',
                  headers={"Content-Type": "application/json"})
        body, content_type = self.tasks.queued[0][5:7]
        self.assertEqual((body, content_type), (b'{"a": "\xc3\xa9"}', "application/json"))

    def test_per_request_timeout_header(self):
        self.call("GET", "/foo/queue/tasks/http://m/x", headers={"Cyme-Timeout": "5"})
        self.assertEqual(self.tasks.queued[0][7], 5.0)
        bad = self.call("GET", "/foo/queue/tasks/http://m/x", headers={"Cyme-Timeout": "nope"})
        self.assertEqual(bad.code, 400)

    def test_every_verb_and_no_other(self):
        for verb in ("HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT",
                     "PATCH"):
            self.assertEqual(self.call(verb, "/foo/queue/tasks/http://m/x").code, 202, verb)
        response = self.call("BREW", "/foo/queue/tasks/http://m/x")
        self.assertEqual(response.code, 405)
        self.assertIn("PATCH", response.header("allow"))

    def test_bad_urls_and_unknown_names(self):
        for path, code in [
            ("/foo/queue/tasks/ftp://m/x", 400),
            ("/foo/queue/tasks/http://elsewhere/x", 400),
            ("/foo/queue/tasks/", 400),
            ("/nope/queue/tasks/http://m/x", 404),
            ("/foo/queue/nope/http://m/x", 404),
        ]:
            response = self.call("GET", path)
            self.assertEqual(response.code, code, path)
            self.assertIn("error", response.json)
        self.assertEqual(self.tasks.queued, [])

    def test_too_many_query_fields_is_a_400_not_a_500(self):
        query = "&".join(f"k{n}=v" for n in range(1001))
        response = self.call("GET", f"/foo/queue/tasks/http://m/x?{query}")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.tasks.queued, [])

    def test_a_task_the_broker_refused_is_a_502(self):
        self.tasks.fail_with = PublishFailed("the broker did not confirm the task")
        response = self.call("GET", "/foo/queue/tasks/http://m/x")
        self.assertEqual(response.code, 502)

    def test_a_task_for_an_unreachable_broker_is_a_503(self):
        self.tasks.fail_with = BrokerUnreachable("broker amqp://m// not reachable")
        response = self.call("GET", "/foo/queue/tasks/http://m/x")
        self.assertEqual(response.code, 503)
        self.assertIn("not reachable", response.json["error"])

    def test_an_unexpected_error_is_a_short_500(self):
        self.tasks.fail_with = RuntimeError("secret detail")
        response = self.call("GET", "/foo/queue/tasks/http://m/x")
        self.assertEqual((response.code, response.json), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_state_result_and_wait(self):
        self.call("GET", "/foo/queue/tasks/http://m/x")
        self.assertEqual(self.call("GET", "/foo/query/task-1/state/").json["state"], "PENDING")
        d = self.client.request("GET", "/foo/query/task-1/wait/?timeout=10")
        self.clock.advance(0)
        self.client.flush()
        self.assertNoResult(d)
        self.journal.record("task-1", "SUCCESS", result={"status_code": 200})
        self.clock.advance(0)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual((response.json["state"], response.json["result"]),
                         ("SUCCESS", {"status_code": 200}))
        self.assertEqual(self.call("GET", "/foo/query/task-1/result/").json["result"],
                         {"status_code": 200})

    def test_a_wait_that_runs_out_is_a_202_with_the_state(self):
        """Not done in time is no server error: the task is still pending."""
        d = self.client.request("GET", "/foo/query/unknown/wait/?timeout=2")
        self.clock.advance(0)
        self.clock.advance(2)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json, {"uuid": "unknown", "state": "PENDING", "result": None})
        self.assertEqual(self.call("GET", "/foo/query/x/wait/?timeout=301").code, 400)


against_every_ops(globals(), QueueRouteTestsMixin)
