"""Tests for cyme.client.transport: what goes on the wire, and what comes back
from answers a branch rarely gives (partial listings, a proxy's error page).

The other side is a small HTTP server in a thread that records each request
and answers per path; the client's calls block, as they do in a script.
"""

import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twisted.trial.unittest import SynchronousTestCase

from cyme.client import BadGateway, Client, ClientError, PartialAnswer
from cyme.client.transport import Transport, path


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"method": self.command, "target": self.path,
                                 "headers": dict(self.headers),
                                 "body": self.rfile.read(length)})
        status, ctype, body, extra = self.server.answers.get(
            self.path.split("?")[0], (200, "application/json", b'{"ok": "ok"}', {}))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def serve(testcase):
    """
    A recording server for C{testcase}'s duration, in a thread: (the server,
    its base URL).  C{server.seen} holds each request; C{server.answers}
    maps a path to C{(status, content type, body, headers)} (default: 200
    C{{"ok": "ok"}}).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.answers = [], {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(5)

    testcase.addCleanup(stop)
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class TransportTests(SynchronousTestCase):
    def setUp(self):
        self.server, self.base = serve(self)

    def answer(self, target, status=200, ctype="application/json", body=b"{}", **headers):
        self.server.answers[target] = (status, ctype, body, headers)

    def test_the_token_goes_in_a_header_and_names_stay_in_their_segment(self):
        client = Client(self.base + "/cyme/", token="s3cret")
        client.app("foo").instances.delete("a/b", nowait=True)
        seen = self.server.seen[-1]
        self.assertEqual((seen["method"], seen["target"]),
                         ("DELETE", "/cyme/foo/instances/!/a%2Fb/"))
        self.assertEqual(seen["headers"]["Authorization"], "Bearer s3cret")
        self.assertNotIn("s3cret", repr(client) + repr(client.transport))

    def test_values_not_given_are_not_sent(self):
        Client(self.base).app("foo").instances.add("w1", pool="solo", queues=["a", "b"])
        seen = self.server.seen[-1]
        self.assertEqual((seen["method"], seen["target"]), ("PUT", "/foo/instances/w1/"))
        self.assertEqual(seen["headers"]["Content-Type"], "application/json")
        self.assertEqual(json.loads(seen["body"]), {"pool": "solo", "queues": ["a", "b"]})

    def test_the_original_clients_signatures(self):
        # As scripts written for the original Cyme client call them.
        self.answer("/!/foo/", 202, body=b'{"name": "foo"}')
        self.answer("/branches/", body=b'["b1", "b2"]')
        self.answer("/branches/b1/", body=b'{"id": "b1"}')
        client = Client(self.base)
        app = client.add("foo", "amqp://h//", "--without-gossip", {"a": 1}, nowait=True)
        self.assertEqual(app.name, "foo")
        # Positionally, in the original's order: name, broker, arguments, config.
        app.instances.add("w1", None, "--without-mingle", {"worker_prefetch_multiplier": 1})
        app.delete(nowait=True)
        self.assertEqual([(s["method"], s["target"], json.loads(s["body"] or b"null"))
                          for s in self.server.seen], [
            ("PUT", "/!/foo/", {"broker": "amqp://h//", "arguments": "--without-gossip",
                                "extra_config": {"a": 1}}),
            ("PUT", "/foo/instances/w1/", {"arguments": "--without-mingle",
                                          "extra_config": {"worker_prefetch_multiplier": 1}}),
            ("DELETE", "/!/foo/", None)])
        self.assertRaises(TypeError, app.instances.add, "w2", config={}, extra_config={})
        self.assertEqual(client.branches, ["b1", "b2"])   # the original's property
        self.assertEqual(client.branches(), ["b1", "b2"])  # and the call
        self.assertEqual(client.branch_info("b1"), client.branch("b1"))
        self.assertEqual(client.branch_info("b1"), {"id": "b1"})

    def test_a_queued_url_is_sent_as_written(self):
        self.answer("/foo/queue/tasks/http://m/a/../b",
                    body=b'{"uuid": "u1", "queue": "tasks", "method": "POST"}')
        task = Client(self.base).app("foo").queue("tasks", "http://m/a/../b?x=1",
                                                  data={"name": "George Costanza"})
        seen = self.server.seen[-1]
        self.assertEqual((seen["method"], seen["target"]),
                         ("POST", "/foo/queue/tasks/http://m/a/../b?x=1"))
        self.assertEqual(seen["body"], b"name=George+Costanza")
        self.assertEqual(task.uuid, "u1")

    def test_a_wait_ends_with_any_state_of_a_task_that_is_done(self):
        task = Client(self.base).app("foo").task("u1")
        for state in ("REVOKED", "REJECTED", "IGNORED"):
            self.answer("/foo/query/u1/wait/", body=json.dumps(
                {"uuid": "u1", "state": state, "result": None}).encode())
            del self.server.seen[:]
            self.assertIsNone(task.wait(timeout=3))  # not a wait of 3 s, then an error
            self.assertEqual((task.info["state"], len(self.server.seen)), (state, 1))

    def test_a_partial_answer_is_told(self):
        self.answer("/", body=b'["foo"]', **{"Cyme-Missing-Branches": "b2,b3"})
        told = []
        client = Client(self.base, on_partial=lambda *args: told.append(args))
        self.assertEqual(client.all(), ["foo"])
        self.assertEqual(told, [("GET", "/", ["b2", "b3"])])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertEqual(Client(self.base).all(), ["foo"])
        self.assertEqual([w.category for w in caught], [PartialAnswer])
        self.assertIn("b2, b3", str(caught[0].message))

    def test_an_error_page_that_is_not_json(self):
        self.answer("/", 502, "text/html", b"<html><body>Bad Gateway\n</body></html>")
        with self.assertRaises(BadGateway) as caught:
            Client(self.base).all()
        self.assertEqual((caught.exception.status, str(caught.exception)), (502, "HTTP 502"))
        self.answer("/foo/", 200, "text/html", b"<html>a portal</html>")
        with self.assertRaises(ClientError) as caught:
            Client(self.base).get("foo")
        self.assertIn("text/html", str(caught.exception))

    def test_a_message_is_one_line(self):
        self.answer("/", 400, body=b'{"error": "bad\\nvalue", "field": "x"}')
        with self.assertRaises(ClientError) as caught:
            Client(self.base).all()
        self.assertEqual((str(caught.exception), caught.exception.detail),
                         ("bad value", {"field": "x"}))

    def test_only_http_urls(self):
        for url in ("ftp://h/", "localhost:8000", "http://", "http://me:s3cret@h:8000"):
            self.assertRaises(ClientError, Transport, url)
        self.assertEqual(path("foo", "instances", "!", "a b"), "/foo/instances/!/a%20b/")
