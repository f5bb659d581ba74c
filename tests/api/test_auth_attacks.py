"""Attacks on who may call the API (cyme.api.auth, cyme.api.guard,
cyme.api.http) that the gate let through when these tests were written:
each test is the attack, with what it must not achieve.
"""

import time

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme.api.auth import Gate
from cyme.api.http import make_site
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state.models import App, Queue
from cyme.state.store import MemoryStore
from cyme.tasks.journal import ResultJournal
from tests.api.test_web_tasks import FakeTasks

REMOTE = "203.0.113.7"


def bearer(secret):
    return {"Authorization": [f"Bearer {secret}"]}


class AttackTestCase(SynchronousTestCase):
    """A branch over a memory store with a fake task service."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore()
        self.journal = ResultJournal(self.mktemp(), self.clock)
        self.addCleanup(self.journal.close)
        self.tasks = FakeTasks(self.journal)
        self.ops = LocalOperations(self.store, tasks=self.tasks, clock=self.clock,
                                   now=self.clock.seconds)
        self.api = BranchAPI(self.ops, Gate(self.ops), clock=Clock())
        self.resource = self.api.resource()

    def client(self, peer=None, secret=None, base="http://localhost", headers=None):
        headers = {**(bearer(secret) if secret else {}), **(headers or {})}
        return APIClient(self.resource, base=base, peer=peer, headers=headers)

    def call(self, client, method, path, **kwargs):
        d = client.request(method, path, **kwargs)
        self.clock.advance(0)
        client.flush()
        return self.successResultOf(d)

    def token(self, scope, name=None):
        values = {"name": name or scope.replace(",", "-"), "scope": scope}
        record, _ = self.successResultOf(defer.ensureDeferred(self.ops.create_token(values)))
        return record["token"]

    def token_names(self):
        return [t.name for t in self.store.tokens()]

    def raw(self, request, peer=REMOTE):
        """Send C{request} (bytes, as written on the wire) to the daemon's
        site from C{peer}; what the site wrote back."""
        site = make_site(self.resource, timeout=None, reactor=self.clock)
        # Started as the daemon's is: its access log goes to the log.
        site.startFactory()
        self.addCleanup(site.stopFactory)
        address = IPv4Address("TCP", peer, 40000)
        protocol = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        self.clock.advance(0)
        return transport.value()


class TokenRouteSpellingTests(AttackTestCase):
    """
    The gate decides the scope from the raw path's first segment, the router
    from the decoded one: every other spelling of C{/tokens/} reached the
    admin routes with a read or write token (a write token made itself an
    admin token).
    """

    def setUp(self):
        super().setUp()
        self.writer = self.client(REMOTE, self.token("read,write", "w"))
        self.reader = self.client(REMOTE, self.token("read", "r"))

    def assertNoAdmin(self, made):
        self.assertIn(made.code, (400, 403, 404), made.body)
        self.assertNotIn(b"cyme_", made.body)
        self.assertEqual(self.token_names(), ["r", "w"])

    def test_percent_encoded_tokens_route_needs_admin(self):
        for path in ("/%74okens/", "/%74okens", "/tok%65ns/"):
            with self.subTest(path=path):
                self.assertNoAdmin(self.call(self.writer, "POST", path,
                                             data={"name": "esc", "scope": "admin"}))
                listed = self.call(self.reader, "GET", path)
                self.assertIn(listed.code, (400, 403, 404), listed.body)
                self.assertNoAdmin(self.call(self.writer, "DELETE", path + "/r/"))

    def test_double_slash_tokens_route_needs_admin(self):
        self.assertNoAdmin(self.call(self.writer, "POST", "//tokens/",
                                     data={"name": "esc", "scope": "admin"}))
        listed = self.call(self.reader, "GET", "//tokens/")
        self.assertIn(listed.code, (400, 403, 404), listed.body)
        self.assertNoAdmin(self.call(self.writer, "DELETE", "//tokens/r/"))

    def test_request_target_without_leading_slash_needs_admin(self):
        # "POST Xtokens/ HTTP/1.1": Twisted routes on the path after its
        # first byte, whatever that byte is.
        writer = self.token("write", "w2")
        body = b"name=esc&scope=admin"
        for target in (b"Xtokens/", b"*tokens/", b"atokens"):
            with self.subTest(target=target):
                answer = self.raw(
                    b"POST " + target + b" HTTP/1.1\r\nHost: branch\r\n"
                    b"Authorization: Bearer " + writer.encode() + b"\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                )
                self.assertNotIn(b" 201 ", answer.split(b"\r\n")[0], answer)
                self.assertNotIn(b"cyme_", answer)
        self.assertEqual(self.token_names(), ["r", "w", "w2"])


class CrossSiteQueueTests(AttackTestCase):
    """
    Queueing a URL is a write whatever its verb, yet the Origin check
    passes GET, HEAD and OPTIONS: a page on any site, opened in a browser
    on the branch's machine, queued URLs with an C{<img>} (GET) or the
    preflight of its C{fetch} (OPTIONS).
    """

    def setUp(self):
        super().setUp()
        local = self.client()
        self.call(local, "PUT", "/foo/")
        self.call(local, "PUT", "/foo/queues/tasks/")

    def test_cross_site_origin_cannot_queue_from_loopback(self):
        for method in ("GET", "HEAD", "OPTIONS", "POST"):
            with self.subTest(method=method):
                response = self.call(self.client(), method, "/foo/queue/tasks/http://10.0.0.9/x",
                                     headers={"Origin": ["https://evil.example"]})
                self.assertEqual(response.code, 403, (method, response.body))
        self.assertEqual(self.tasks.queued, [])

    def test_cross_site_fetch_metadata_cannot_queue_from_loopback(self):
        # What an <img src="http://localhost:8000/foo/queue/..."> sends: no
        # Origin, but Sec-Fetch-Site (every current browser).
        response = self.call(self.client(), "GET", "/foo/queue/tasks/http://10.0.0.9/x",
                             headers={"Sec-Fetch-Site": ["cross-site"],
                                      "Sec-Fetch-Mode": ["no-cors"],
                                      "Sec-Fetch-Dest": ["image"]})
        self.assertEqual(response.code, 403, response.body)
        self.assertEqual(self.tasks.queued, [])


class ReservedAppNameTests(AttackTestCase):
    """
    An app called C{login} or C{ping}, kept from an older version's state
    file (which the README says still loads), answered every route under
    its name to anyone: the open routes are matched on the first segment
    alone.
    """

    def setUp(self):
        super().setUp()
        for name in ("login", "ping"):
            self.store.put_app(App(name=name))
            self.store.put_queue(name, Queue(name="tasks"))

    def test_no_anonymous_queueing_on_an_app_named_like_an_open_route(self):
        anonymous = self.client(REMOTE)
        for app in ("login", "ping"):
            for method in ("GET", "POST"):
                with self.subTest(app=app, method=method):
                    response = self.call(anonymous, method, f"/{app}/queue/tasks/http://10.0.0.9/x")
                    self.assertEqual(response.code, 401, response.body)
        self.assertEqual(self.tasks.queued, [])

    def test_no_anonymous_routes_of_an_app_named_like_an_open_route(self):
        anonymous = self.client(REMOTE)
        self.assertEqual(self.call(anonymous, "GET", "/ping/instances/").code, 401)
        self.assertEqual(self.call(anonymous, "DELETE", "/ping/").code, 401)
        self.assertEqual(sorted(a.name for a in self.store.apps()), ["login", "ping"])


class StaleCookieTests(AttackTestCase):
    """
    A cookie whose token was revoked (or one set by a sibling host, or
    garbage) made every request a 401 before the route was known, the
    login form included: the browser could not log in again until it
    dropped the cookie by itself.
    """

    #: The session cookie of a branch on port 80 (StubTreq's http://localhost).
    session = "cyme_session_80"

    def test_login_form_works_with_a_stale_cookie(self):
        old = self.token("read", "old")
        made = self.call(self.client(REMOTE), "POST", "/login/", allow_redirects=False,
                         data={"token": old})
        stale = made.header("Set-Cookie").split(";")[0]
        self.successResultOf(defer.ensureDeferred(self.ops.revoke_token("old")))
        new = self.token("read", "new")
        # The login cookie is a session of the branch, not the token
        # (finding 9): a stale one is a session id, or garbage, or the
        # token cookie of before sessions.
        for cookie in (stale, f"{self.session}=garbage", f"cyme_token={old}"):
            with self.subTest(cookie=cookie):
                browser = self.client(REMOTE, headers={"Cookie": [cookie]})
                self.assertEqual(self.call(browser, "GET", "/login/").code, 200)
                self.assertEqual(self.call(browser, "GET", "/ping/").code, 200)
                response = self.call(browser, "POST", "/login/", allow_redirects=False,
                                     data={"token": new})
                self.assertEqual(response.code, 303, response.body)
                fresh = response.header("Set-Cookie") or ""
                self.assertTrue(fresh.startswith(self.session + "="), fresh)
                self.assertNotIn(new, fresh)
                logged_in = self.client(REMOTE, headers={"Cookie": [fresh.split(";")[0]]})
                self.assertEqual(self.call(logged_in, "GET", "/").code, 200)


class BodyParsingCostTests(AttackTestCase):
    """
    C{POST /login/} is open to anyone and reads its body with
    L{cyme.api.http.request_params}: a body under the 1 MiB cap whose
    parsing takes minutes holds the branch's only thread (every request,
    every supervisor tick) all that time.  Measured before the fix: the
    JSON depth check is quadratic on escaped quotes (64 KB: 25 s, 1 MiB:
    hours); the multipart parser on a part's header parameters (1 MiB:
    80 s).
    """

    #: Far above what a linear parser takes for these bodies (about 0.1 s),
    #: far below what the quadratic ones took.
    budget = 2.0

    def post_login(self, body, content_type):
        anonymous = self.client(REMOTE)
        started = time.monotonic()
        response = self.call(anonymous, "POST", "/login/", data=body,
                             headers={"Content-Type": [content_type]})
        return response, time.monotonic() - started

    def test_json_depth_check_is_linear(self):
        response, took = self.post_login(b'"\\' * 24_000, "application/json")
        self.assertEqual(response.code, 400, response.body)
        self.assertLess(took, self.budget)

    def test_multipart_header_parameters_are_bounded(self):
        body = (b"--B\r\nContent-Disposition: form-data; name=token" + b"; x=y" * 60_000
                + b"\r\n\r\nv\r\n--B--\r\n")
        response, took = self.post_login(body, "multipart/form-data; boundary=B")
        self.assertIn(response.code, (400, 401, 413), response.body)
        self.assertLess(took, self.budget)


class SlowClientTests(SynchronousTestCase):
    """
    Twisted drops a connection idle for 60 s, but a byte of header every
    few seconds resets that timer: 1024 connections trickling their
    headers (one client, no token) made the branch answer 503 to everyone,
    loopback included, for as long as the client kept it up.
    """

    def connect(self, cap):
        address = IPv4Address("TCP", REMOTE, 40000 + cap.connections)
        protocol = cap.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def settle(self, connections):
        """Let the connections the site dropped end, as the reactor would."""
        for protocol, transport in list(connections):
            if transport.disconnecting:
                protocol.connectionLost(None)
                connections.remove((protocol, transport))

    def test_trickled_headers_do_not_hold_the_cap(self):
        # Slowloris: a header byte every 20 s keeps an idle timer from firing.
        clock = Clock()
        resource = BranchAPI(LocalOperations(MemoryStore()), clock=Clock()).resource()
        cap = make_site(resource, reactor=clock, limit=2)
        held = [self.connect(cap) for _ in range(2)]
        for protocol, _ in held:
            protocol.dataReceived(b"GET /ping/ HTTP/1.1\r\nHost: x\r\n")
        for _ in range(30):  # ten minutes
            clock.advance(20)
            for protocol, transport in held:
                if not transport.disconnecting:
                    protocol.dataReceived(b"X")
        self.settle(held)
        _, transport = self.connect(cap)
        self.assertFalse(transport.value().startswith(b"HTTP/1.1 503"), transport.value())
        for protocol, _ in held:
            protocol.connectionLost(None)


class AccessLogTests(AttackTestCase):
    """
    The audit line leaves a queued URL out because it may carry
    credentials (README, Security); the access log line written next to it
    showed the whole path, credentials included.
    """

    def test_queued_url_credentials_are_in_no_log_line(self):
        local = self.client()
        self.call(local, "PUT", "/foo/")
        self.call(local, "PUT", "/foo/queues/tasks/")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        answer = self.raw(
            b"POST /foo/queue/tasks/http://bob:HOOK-SECRET@10.0.0.9/x HTTP/1.1\r\n"
            b"Host: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            peer="127.0.0.1",
        )
        self.assertIn(b" 202 ", answer.split(b"\r\n")[0], answer)
        lines = [formatEvent(e) or "" for e in events]
        self.assertTrue(lines)
        self.assertFalse([line for line in lines if "HOOK-SECRET" in line], lines)


class QueueAuditTests(AttackTestCase):
    """
    Queueing a URL is a write whatever its verb (it needs the C{write}
    scope), but the audit line is written for methods other than GET,
    HEAD and OPTIONS only: a URL queued with those left no audit line.
    """

    def test_a_url_queued_by_get_head_or_options_is_audited(self):
        local = self.client()
        self.call(local, "PUT", "/foo/")
        self.call(local, "PUT", "/foo/queues/tasks/")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        writer = self.client(REMOTE, self.token("write"))
        for method in ("GET", "HEAD", "OPTIONS"):
            with self.subTest(method=method):
                response = self.call(writer, method, "/foo/queue/tasks/http://10.0.0.9/x")
                self.assertEqual(response.code, 202)
                audits = [e for e in events if e.get("audit") and e.get("method") == method]
                self.assertEqual(len(audits), 1, [formatEvent(e) for e in events])
                self.assertEqual(audits[0]["who"], "token:write")


class HeaderSpellingTests(AttackTestCase):
    """
    The gate reads the headers it judges in one pass over the request's
    (L{cyme.api.auth.request_headers}): a header written on the wire in any
    capitals must be read all the same, or a proxy's header or a rebound
    Host would go unseen.
    """

    def status(self, request):
        return self.raw(request, peer="127.0.0.1").split(b"\r\n")[0]

    def test_headers_are_read_whatever_their_capitals(self):
        get = b"GET /foo/ HTTP/1.1\r\nHost: localhost\r\n%sConnection: close\r\n\r\n"
        self.assertIn(b" 404 ", self.status(get % b""))  # trusted: no such app
        for header in (b"x-forwarded-for: 198.51.100.1", b"X-REAL-IP: 198.51.100.1",
                       b"vIA: 1.1 proxy", b"forwarded: for=198.51.100.1"):
            with self.subTest(header=header):
                self.assertIn(b" 401 ", self.status(get % (header + b"\r\n")))
        put = b"PUT /foo/ HTTP/1.1\r\n%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        self.assertIn(b" 403 ", self.status(put % b"hOST: evil.example"))
        self.assertIn(b" 403 ", self.status(
            put % b"Host: localhost\r\nsec-fetch-site: cross-site"))
        self.assertIn(b" 403 ", self.status(
            put % b"Host: localhost\r\nORIGIN: http://evil.example"))
        self.assertEqual(list(self.store.apps()), [])
