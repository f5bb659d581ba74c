"""The webhook task (L{cyme.tasks.webhook.perform} and the C{cyme.webhook} Celery
task) against a real local HTTP server running in a thread.

The server listens on loopback, which the fence refuses unless the app's
C{allowed_hosts} lists it where the branch's operator opened it
(C{--webhook-allow}): these tests of the request itself have both open it
(L{LOOPBACK}); L{tests.tasks.test_webhook_fence} tests the fence.
"""

import base64
import json
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from cyme.tasks import webdata, webhook as wh
from cyme.tasks.webhook import HostRefused, WebhookError, check_url

#: The allow-list (and the operator's opening) of the loopback test server.
LOOPBACK = ["127.0.0.0/8", "localhost"]


def perform(*args, **kwargs):
    """L{wh.perform}, allowed to reach the loopback test server by default."""
    kwargs.setdefault("allowed_hosts", LOOPBACK)
    kwargs.setdefault("opened", LOOPBACK)
    return wh.perform(*args, **kwargs)

BINARY = bytes(range(256))
HUGE = 2 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    """Records every request and answers according to the path."""

    server_version = "TestTarget/1.0"

    def log_message(self, *args):
        pass

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        record = {
            "method": self.command,
            "path": parts.path if self.command != "CONNECT" else self.path,
            "raw_query": parts.query,
            "query": parse_qs(parts.query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            # The address the client connected to (the server may listen on all).
            "to": self.request.getsockname()[0],
        }
        self.server.requests.append(record)
        return record

    def _answer(self, status, body=b"", content_type="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, status, location):
        self._answer(status, b"moved", headers=[("Location", location)])

    def _handle(self):
        record = self._record()
        if self.command == "CONNECT":
            return self._answer(405, b"no tunnels here", headers=[("Allow", "GET")])
        path = urlsplit(self.path).path
        port = self.server.server_address[1]
        if path == "/text":
            self._answer(200, "hello wörld".encode("utf-8"), headers=[("X-Multi", "a"), ("X-Multi", "b")])
        elif path == "/echo":
            echo = dict(record, body=base64.b64encode(record["body"]).decode("ascii"))
            self._answer(200, json.dumps(echo).encode(), "application/json")
        elif path == "/json":
            self._answer(201, b'{"created": true}', "application/json")
        elif path == "/missing":
            self._answer(404, b"not found")
        elif path == "/error":
            self._answer(500, b"boom")
        elif path == "/binary":
            self._answer(200, BINARY, "application/octet-stream")
        elif path == "/latin1":
            self._answer(200, "café".encode("latin-1"), "text/plain; charset=iso-8859-1")
        elif path == "/redirect":
            self._redirect(302, "/text")
        elif path == "/redirect-303":
            self._redirect(303, "/echo")
        elif path == "/redirect-307":
            self._redirect(307, "/echo?from=307")
        elif path == "/redirect-to":
            self._redirect(302, record["query"]["to"][0])
        elif path == "/redirect-localhost":
            self._redirect(302, f"http://localhost:{port}/text")
        elif path == "/redirect-file":
            self._redirect(302, "file:///etc/passwd")
        elif path == "/redirect-ftp":
            self._redirect(301, "ftp://127.0.0.1/pub/x")
        elif path == "/chain":
            n = int(record["query"]["n"][0])
            if n > 0:
                self._redirect(302, f"/chain?n={n - 1}")
            else:
                self._answer(200, b"end of chain")
        elif path == "/slow":
            self.server.release.wait(5)
            self._answer(200, b"late")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(100):
                    if self.server.release.wait(0.05):
                        break
                    self.wfile.write(b".")
                    self.wfile.flush()
            except OSError:
                pass
        elif path == "/huge":
            self._answer(200, b"x" * HUGE)
        elif path == "/huge-unsized":
            # HTTP/1.0, no Content-Length: the body ends when the server closes.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(HUGE // 65536):
                    self.wfile.write(b"y" * 65536)
            except OSError:
                pass
        elif path == "/hang-up":
            self.close_connection = True
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"abc")
            self.close_connection = True
        elif path == "/exact":
            self._answer(200, b"z" * 1000)
        else:
            self._answer(404, b"no route")

    do_HEAD = do_GET = do_POST = do_PUT = do_DELETE = _handle
    do_TRACE = do_OPTIONS = do_CONNECT = do_PATCH = _handle


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client hung up on /slow, /trickle or a capped body: expected


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(testcase, server):
    """Run C{server} (a L{Server} of L{Handler}s) in a thread for C{testcase}."""
    server.requests = []
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()

    def stop():
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

    testcase.addCleanup(stop)
    return server


class WebhookTestBase(SynchronousTestCase):
    def setUp(self):
        server = serve(self, Server(("127.0.0.1", 0), Handler))
        self.server = server
        self.port = server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    @property
    def last(self):
        return self.server.requests[-1]

    def assertFails(self, fragment, *args, **kwargs):
        exc = self.assertRaises(WebhookError, perform, *args, **kwargs)
        self.assertIn(fragment, str(exc))
        return exc


class VerbTests(WebhookTestBase):
    def test_get_text(self):
        result = perform("GET", self.url("/text"))
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(result["url"], self.url("/text"))
        self.assertEqual(result["content"], "hello wörld")
        self.assertEqual(result["encoding"], "text")
        self.assertEqual(result["headers"]["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(result["headers"]["X-Multi"], "a, b")
        self.assertEqual(self.last["method"], "GET")
        self.assertEqual(self.last["headers"]["host"], f"127.0.0.1:{self.port}")
        self.assertTrue(self.last["headers"]["user-agent"].startswith("cyme-webhook/"))
        # A proxy's header: a cyme branch never trusts it as its machine's own.
        self.assertEqual(self.last["headers"]["via"], "1.1 cyme-webhook")
        self.assertEqual(set(result), {"status_code", "url", "headers", "content", "encoding"})
        json.dumps(result)  # the result travels as JSON

    def test_every_verb(self):
        for verb in ("GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "PATCH"):
            result = perform(verb, self.url("/echo"))
            self.assertEqual(result["status_code"], 200, verb)
            echo = json.loads(result["content"])
            self.assertEqual(echo["method"], verb)
            self.assertEqual(echo["path"], "/echo")
        self.assertEqual([r["method"] for r in self.server.requests],
                         ["GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "PATCH"])

    def test_lowercase_verb(self):
        perform("patch", self.url("/echo"), body="x")
        self.assertEqual(self.last["method"], "PATCH")

    def test_head(self):
        result = perform("HEAD", self.url("/text"))
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(result["content"], "")
        self.assertEqual(result["headers"]["Content-Length"], str(len("hello wörld".encode())))
        self.assertEqual(self.last["method"], "HEAD")

    def test_connect(self):
        result = perform("CONNECT", self.url("/anything"))
        self.assertEqual(result["status_code"], 405)
        self.assertEqual(result["content"], "no tunnels here")
        self.assertEqual(self.last["method"], "CONNECT")
        self.assertEqual(self.last["path"], f"127.0.0.1:{self.port}")

    def test_unknown_verb(self):
        self.assertFails("unsupported HTTP method 'BREW'", "BREW", self.url("/text"))
        self.assertEqual(self.server.requests, [])


class DataTests(WebhookTestBase):
    def test_query_dict_with_lists(self):
        perform("GET", self.url("/echo"), query={"user": 133, "tag": ["a", "b"], "q": "x y&z"})
        self.assertEqual(self.last["query"], {"user": ["133"], "tag": ["a", "b"], "q": ["x y&z"]})

    def test_query_pairs_repeated_keys_appended(self):
        result = perform("GET", self.url("/echo?user=133"), query=[("k", "1"), ("k", "2"), ("m", ["3", "4"])])
        self.assertEqual(self.last["raw_query"], "user=133&k=1&k=2&m=3&m=4")
        self.assertEqual(result["url"], self.url("/echo?user=133&k=1&k=2&m=3&m=4"))

    def test_form_body(self):
        perform("POST", self.url("/echo"), body={"name": "Zoë", "ids": [1, 2]})
        self.assertEqual(self.last["headers"]["content-type"], "application/x-www-form-urlencoded")
        self.assertEqual(parse_qs(self.last["body"].decode()), {"name": ["Zoë"], "ids": ["1", "2"]})

    def test_raw_json_body(self):
        payload = json.dumps({"user": 133, "name": "é"})
        perform("PUT", self.url("/echo"), body=payload, content_type="application/json")
        self.assertEqual(self.last["headers"]["content-type"], "application/json")
        self.assertEqual(json.loads(self.last["body"]), {"user": 133, "name": "é"})
        self.assertEqual(self.last["headers"]["content-length"], str(len(payload.encode())))

    def test_raw_bytes_body(self):
        perform("POST", self.url("/echo"), body=BINARY, content_type="image/x-test")
        self.assertEqual(self.last["body"], BINARY)
        self.assertEqual(self.last["headers"]["content-type"], "image/x-test")

    def test_extra_headers(self):
        perform("GET", self.url("/echo"), headers={"X-Token": "t", "Host": "evil", "Content-Length": "9",
                                                   "via": "nothing"})
        self.assertEqual(self.last["headers"]["x-token"], "t")
        self.assertEqual(self.last["headers"]["via"], "1.1 cyme-webhook")
        self.assertEqual(self.last["headers"]["host"], f"127.0.0.1:{self.port}")
        self.assertNotIn("content-length", self.last["headers"])

    def test_empty_post_has_zero_length(self):
        perform("POST", self.url("/echo"))
        self.assertEqual(self.last["headers"]["content-length"], "0")
        self.assertEqual(self.last["body"], b"")


class ResponseTests(WebhookTestBase):
    def test_created_json(self):
        result = perform("POST", self.url("/json"), body={"a": "1"})
        self.assertEqual(result["status_code"], 201)
        self.assertEqual(json.loads(result["content"]), {"created": True})

    def test_non_2xx_is_a_result(self):
        self.assertEqual(perform("GET", self.url("/missing"))["status_code"], 404)
        result = perform("DELETE", self.url("/error"))
        self.assertEqual(result["status_code"], 500)
        self.assertEqual(result["content"], "boom")

    def test_binary_is_base64(self):
        result = perform("GET", self.url("/binary"))
        self.assertEqual(result["encoding"], "base64")
        self.assertEqual(base64.b64decode(result["content"]), BINARY)
        json.dumps(result)

    def test_charset_from_content_type(self):
        result = perform("GET", self.url("/latin1"))
        self.assertEqual((result["content"], result["encoding"]), ("café", "text"))

    def test_size_cap(self):
        self.assertFails(f"response larger than {1024 * 1024} bytes", "GET", self.url("/huge"),
                         max_response_bytes=1024 * 1024)

    def test_size_cap_without_content_length(self):
        self.assertFails("response larger than 100000 bytes", "GET", self.url("/huge-unsized"),
                         max_response_bytes=100000)

    def test_size_cap_exact(self):
        self.assertEqual(len(perform("GET", self.url("/exact"), max_response_bytes=1000)["content"]), 1000)
        self.assertFails("response larger than 999 bytes", "GET", self.url("/exact"), max_response_bytes=999)

    def test_default_cap_allows_big_body(self):
        result = perform("GET", self.url("/huge"))
        self.assertEqual(len(result["content"]), HUGE)


class FailureTests(WebhookTestBase):
    def test_connection_refused(self):
        url = f"http://127.0.0.1:{closed_port()}/"
        self.assertFails(f"connection refused: {url}", "GET", url)

    def test_dns_failure(self):
        self.assertFails("cannot resolve host 'no-such-host.invalid'", "GET", "http://no-such-host.invalid/",
                         allowed_hosts=())

    def test_timeout(self):
        start = time.monotonic()
        self.assertFails(f"timed out after 0.3 s: {self.url('/slow')}", "GET", self.url("/slow"), timeout=0.3)
        self.assertLess(time.monotonic() - start, 2)

    def test_timeout_is_overall_not_per_read(self):
        # Each byte arrives well within the timeout, the whole body does not.
        start = time.monotonic()
        self.assertFails("timed out after 0.4 s", "GET", self.url("/trickle"), timeout=0.4)
        self.assertLess(time.monotonic() - start, 1.5)

    def test_closed_without_a_response(self):
        self.assertFails(f"connection closed without a response: {self.url('/hang-up')}",
                         "GET", self.url("/hang-up"))

    def test_body_shorter_than_its_length(self):
        self.assertFails(f"response body incomplete (3 bytes received): {self.url('/short')}",
                         "GET", self.url("/short"))

    def test_tls_to_a_plain_http_server(self):
        url = f"https://127.0.0.1:{self.port}/text"
        self.assertFails("TLS error (", "GET", url)
        self.assertFails(f"): {url}", "GET", url)

    def test_scheme_check(self):
        self.assertFails("only http and https URLs are allowed, not ftp:", "GET", "ftp://127.0.0.1/x")
        self.assertFails("only http and https URLs are allowed, not file:", "GET", "file:///etc/passwd")
        self.assertFails("only http and https URLs are allowed, not no scheme", "GET", "/relative")
        self.assertFails("URL has no host", "GET", "http:///path")
        self.assertFails("invalid port", "GET", "http://127.0.0.1:99999/")
        self.assertFails("whitespace or control", "GET", "http://127.0.0.1/a b")
        self.assertFails("invalid URL (Invalid IPv6 URL): http://[::1/", "GET", "http://[::1/")
        exc = self.assertRaises(ValueError, perform, "GET", "gopher://x/")
        self.assertIsInstance(exc, WebhookError)

    def test_bad_arguments(self):
        self.assertFails("timeout must be positive", "GET", self.url("/text"), timeout=0)
        self.assertFails("body must be", "POST", self.url("/text"), body=3.5)
        self.assertFails("query must be a dict or a list of pairs", "GET", self.url("/text"), query=[("a",)])


class RedirectTests(WebhookTestBase):
    def test_redirect_followed(self):
        result = perform("GET", self.url("/redirect"))
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(result["url"], self.url("/text"))
        self.assertEqual(result["content"], "hello wörld")
        self.assertEqual([r["path"] for r in self.server.requests], ["/redirect", "/text"])

    def test_redirect_to_file_refused(self):
        self.assertFails("redirect to a non-http(s) URL refused: file:///etc/passwd", "GET",
                         self.url("/redirect-file"))
        self.assertEqual(len(self.server.requests), 1)

    def test_redirect_to_ftp_refused(self):
        self.assertFails("redirect to a non-http(s) URL refused: ftp://", "GET", self.url("/redirect-ftp"))

    def test_five_redirects_allowed(self):
        result = perform("GET", self.url("/chain?n=5"))
        self.assertEqual(result["content"], "end of chain")
        self.assertEqual(len(self.server.requests), 6)

    def test_six_redirects_refused(self):
        self.assertFails("too many redirects (more than 5)", "GET", self.url("/chain?n=6"))
        self.assertEqual(len(self.server.requests), 6)

    def test_303_becomes_get(self):
        result = perform("POST", self.url("/redirect-303"), body={"a": "1"})
        echo = json.loads(result["content"])
        self.assertEqual((echo["method"], echo["body"]), ("GET", ""))

    def test_307_keeps_method_and_body(self):
        result = perform("PUT", self.url("/redirect-307"), body="payload", content_type="text/plain")
        echo = json.loads(result["content"])
        self.assertEqual(echo["method"], "PUT")
        self.assertEqual(base64.b64decode(echo["body"]), b"payload")
        self.assertEqual(echo["query"], {"from": ["307"]})

    def test_redirect_host_rechecked(self):
        # Only this port of 127.0.0.1 is listed: another one is refused.
        other = f"http://127.0.0.1:{closed_port()}/text"
        exc = self.assertFails("host 127.0.0.1 refused", "GET", self.url(f"/redirect-to?to={other}"),
                               allowed_hosts=[f"127.0.0.1:{self.port}"])
        self.assertIsInstance(exc, HostRefused)
        self.assertIn("redirect refused", str(exc))
        self.assertEqual(len(self.server.requests), 1)

    def test_redirect_to_allowed_host(self):
        result = perform("GET", self.url("/redirect-localhost"), allowed_hosts=["127.0.0.1", "LOCALHOST"],
                         headers={"Authorization": "Bearer secret"})
        self.assertEqual(result["url"], f"http://localhost:{self.port}/text")
        first, second = self.server.requests
        self.assertEqual(first["headers"]["authorization"], "Bearer secret")
        self.assertNotIn("authorization", second["headers"])  # not leaked to another host


class AllowedHostsTests(WebhookTestBase):
    def test_allowed(self):
        self.assertEqual(perform("GET", self.url("/text"), allowed_hosts=["127.0.0.1"])["status_code"], 200)
        self.assertEqual(perform("GET", self.url("/text"), allowed_hosts=[f"127.0.0.1:{self.port}"])["status_code"],
                         200)

    def test_refused_before_connecting(self):
        self.assertFails("host 127.0.0.1 refused (a loopback address, not in the app's allowed_hosts "
                         "(example.com))", "GET", self.url("/text"), allowed_hosts=["example.com"])
        self.assertFails("host 127.0.0.1 refused", "GET", self.url("/text"), allowed_hosts=["127.0.0.1:1"])
        self.assertEqual(self.server.requests, [])

    def test_the_next_checked_address_when_one_refuses(self):
        # Nothing listens on 127.0.0.2: the name's next address (checked too) is tried.
        result = perform("GET", f"http://two.test:{self.port}/text", allowed_hosts=["*.test", "127.0.0.0/8"],
                         resolve=lambda host, port: ["127.0.0.2", "127.0.0.1"])
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(self.last["headers"]["host"], f"two.test:{self.port}")

    def test_check_url_length(self):
        check_url("http://example.com/abc", max_length=22)
        exc = self.assertRaises(WebhookError, check_url, "http://example.com/abcd", max_length=22)
        self.assertIn("longer than 22", str(exc))


class TaskTests(WebhookTestBase):
    def setUp(self):
        super().setUp()
        from cyme.tasks import worker as tasks

        self.tasks = tasks
        # The worker's own fence, as its branch configures it.
        conf = tasks.app.conf
        saved = {k: conf.get(k) for k in ("cyme_webhook_allowed_hosts", "cyme_webhook_opened")}
        self.addCleanup(conf.update, saved)
        conf.update(cyme_webhook_allowed_hosts=LOOPBACK, cyme_webhook_opened=LOOPBACK)

    def test_registered(self):
        registered = self.tasks.app.tasks["cyme.webhook"]
        self.assertEqual(registered.name, "cyme.webhook")
        self.assertEqual(registered.run("GET", self.url("/text"), allowed_hosts=LOOPBACK)["status_code"], 200)

    def test_run(self):
        result = self.tasks.webhook.run("GET", self.url("/echo"), query={"user": "133"},
                                        allowed_hosts=LOOPBACK)
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(json.loads(result["content"])["query"], {"user": ["133"]})

    def test_base64_body(self):
        body = base64.b64encode(BINARY).decode("ascii")
        self.tasks.webhook.run("POST", self.url("/echo"), body=body, content_type="application/octet-stream",
                               body_encoding="base64", allowed_hosts=LOOPBACK)
        self.assertEqual(self.last["body"], BINARY)

    def test_app_default_timeout(self):
        conf = self.tasks.app.conf
        conf.cyme_webhook_timeout = 0.2
        self.addCleanup(conf.pop, "cyme_webhook_timeout", None)
        exc = self.assertRaises(WebhookError, self.tasks.webhook.run, "GET", self.url("/slow"),
                                allowed_hosts=LOOPBACK)
        self.assertIn("timed out after 0.2 s", str(exc))

    def test_apply_success_and_failure(self):
        ok = self.tasks.webhook.apply(args=("GET", self.url("/missing")), kwargs={"allowed_hosts": LOOPBACK})
        self.assertEqual(ok.state, "SUCCESS")
        self.assertEqual(ok.result["status_code"], 404)
        url = f"http://127.0.0.1:{closed_port()}/"
        failed = self.tasks.webhook.apply(args=("GET", url), kwargs={"allowed_hosts": LOOPBACK})
        self.assertEqual(failed.state, "FAILURE")
        self.assertIsInstance(failed.result, WebhookError)
        self.assertEqual(str(failed.result), f"connection refused: {url}")

    def test_exception_serializes(self):
        exc = WebhookError("connection refused: http://127.0.0.1:1/")
        self.assertEqual(str(pickle.loads(pickle.dumps(exc))), str(exc))
        backend = self.tasks.app.backend
        meta = backend.prepare_exception(exc, "json")
        self.assertEqual(meta["exc_type"], "WebhookError")
        self.assertEqual(meta["exc_module"], "cyme.tasks.webhook")
        self.assertEqual(list(meta["exc_message"]), ["connection refused: http://127.0.0.1:1/"])
        json.dumps(meta)
        back = backend.exception_to_python(meta)
        self.assertIsInstance(back, WebhookError)
        self.assertEqual(str(back), str(exc))


class HelperTests(SynchronousTestCase):
    def test_decode_content(self):
        self.assertEqual(webdata.decode_content(b"abc", None), ("abc", "text"))
        self.assertEqual(webdata.decode_content(b"\xff", "text/plain; charset=nope"), ("/w==", "base64"))
        self.assertEqual(webdata.decode_content("é".encode("latin-1"), "text/plain; charset=latin-1"), ("é", "text"))

    def test_add_query(self):
        self.assertEqual(webdata.add_query("http://m/import?user=133", {"a": ["1", "2"]}),
                         "http://m/import?user=133&a=1&a=2")
        self.assertEqual(webdata.add_query("http://m/x#frag", [("a", "b")]), "http://m/x?a=b#frag")
        self.assertEqual(webdata.add_query("http://m/x", None), "http://m/x")
