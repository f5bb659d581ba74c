"""Who may call the API (cyme.api.auth, cyme.api.guard, cyme.api.login),
through StubTreq from remote and loopback addresses: every rule with its
attack, not only the way in.
"""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString

from cyme.api.auth import Gate
from cyme.api.guard import audit_target
from cyme.api.routes import BranchAPI
from cyme.api.testing import APIClient
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore
from cyme.tasks.journal import ResultJournal
from tests.api.test_web_tasks import FakeTasks

REMOTE = "203.0.113.7"
#: The session cookie of a branch on port 80 (StubTreq's http://localhost).
SESSION = "cyme_session_80"
JSON = {"Content-Type": ["application/json"]}
BROKER = "amqp://alice:s3cret-pw@rabbit.example:5672/prod"


def bearer(secret):
    return {"Authorization": [f"Bearer {secret}"]}


class AuthTestCase(SynchronousTestCase):
    """A branch over a memory store; clients from anywhere."""

    trust_loopback = True
    url = None

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore()
        self.ops = LocalOperations(self.store, now=self.clock.seconds)
        self.api = BranchAPI(self.ops, Gate(
            self.ops, trust_loopback=self.trust_loopback, url=self.url,
            names=frozenset(["MyHost"]), now=self.clock.seconds,
        ), clock=Clock())
        self.resource = self.api.resource()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def client(self, peer=None, secret=None, base="http://localhost", headers=None):
        headers = {**(bearer(secret) if secret else {}), **(headers or {})}
        return APIClient(self.resource, base=base, peer=peer, headers=headers)

    def call(self, client, method, path, **kwargs):
        response = self.successResultOf(client.request(method, path, **kwargs))
        if response.code != 303 or not path.startswith("/login"):
            self.assertEqual(response.header("Content-Type"), "application/json",
                             (method, path, response.code, response.body))
        return response

    def token(self, scope, name=None, expires=None):
        values = {"name": name or scope.replace(",", "-"), "scope": scope}
        if expires is not None:
            values["expires"] = expires
        record, _ = self.successResultOf(defer.ensureDeferred(self.ops.create_token(values)))
        return record["token"]

    def assertRefused(self, response, code):
        self.assertEqual(response.code, code, response.body)
        self.assertIsInstance(response.json.get("error"), str)
        self.assertNotIn(b"Traceback", response.body)

    def audits(self):
        return [e for e in self.events if e.get("audit")]


class RemoteCallerTests(AuthTestCase):
    def test_no_token_is_401_and_changes_nothing(self):
        remote = self.client(REMOTE)
        for method, path in [("GET", "/"), ("PUT", "/foo/"), ("GET", "/metrics/"),
                             ("GET", "/admin/"), ("GET", "/branches/"),
                             ("POST", "/tokens/"), ("GET", "/foo/queue/q/http://x/"),
                             ("DELETE", "/instances/w1/")]:
            response = self.call(remote, method, path)
            self.assertRefused(response, 401)
            self.assertEqual(response.header("WWW-Authenticate"), 'Bearer realm="cyme"')
        self.assertEqual(self.store.apps(), [])
        self.assertEqual(self.store.tokens(), [])

    def test_ping_needs_no_token(self):
        response = self.call(self.client(REMOTE), "GET", "/ping/")
        self.assertEqual((response.code, response.json), (200, {"ok": "pong"}))
        self.assertEqual(self.successResultOf(
            self.client(REMOTE).request("HEAD", "/ping")).code, 200)
        # Its path alone, and for what it serves.
        for method, path in [("DELETE", "/ping/"), ("PUT", "/ping/"), ("GET", "/ping/x/"),
                             ("GET", "/login/instances/")]:
            self.assertRefused(self.call(self.client(REMOTE), method, path), 401)

    def test_bad_tokens_are_401(self):
        self.token("read,write,admin", "real")
        for authorization in ["Bearer cyme_not-a-token", "Bearer ", "Basic dXNlcjpwdw==",
                              "cyme_xyz", "Bearer " + self.store.get_token("real").hash]:
            client = self.client(REMOTE, headers={"Authorization": [authorization]})
            self.assertRefused(self.call(client, "PUT", "/foo/"), 401)
        self.assertEqual(self.store.apps(), [])

    def test_read_scope(self):
        reader = self.client(REMOTE, self.token("read"))
        self.assertEqual(self.call(reader, "GET", "/").code, 200)
        self.assertEqual(self.call(reader, "GET", "/ping/").code, 200)
        refused = self.call(reader, "PUT", "/foo/")
        self.assertRefused(refused, 403)
        self.assertEqual(refused.json["scope"], "write")
        self.assertRefused(self.call(reader, "GET", "/tokens/"), 403)
        # Queueing a URL is a write, whatever its verb.
        self.assertRefused(self.call(reader, "GET", "/foo/queue/q/http://x/"), 403)
        self.assertEqual(self.store.apps(), [])

    def test_write_scope(self):
        writer = self.client(REMOTE, self.token("write"))
        self.assertEqual(self.call(writer, "PUT", "/foo/").code, 201)
        self.assertEqual(self.call(writer, "PUT", "/foo/queues/q/").code, 201)
        self.assertEqual(self.call(writer, "DELETE", "/foo/queues/q/").code, 200)
        # A write token alone reads nothing, and makes no tokens.
        self.assertRefused(self.call(writer, "GET", "/foo/"), 403)
        self.assertRefused(self.call(writer, "POST", "/tokens/",
                                     data={"name": "x", "scope": "admin"}), 403)
        self.assertEqual([t.name for t in self.store.tokens()], ["write"])

    def test_expired_token(self):
        client = self.client(REMOTE, self.token("read", expires="1h"))
        self.assertEqual(self.call(client, "GET", "/").code, 200)
        self.clock.advance(3599)
        self.assertEqual(self.call(client, "GET", "/").code, 200)
        self.clock.advance(1)
        self.assertRefused(self.call(client, "GET", "/"), 401)

    def test_revoked_token(self):
        client = self.client(REMOTE, self.token("read,write"))
        self.assertEqual(self.call(client, "GET", "/").code, 200)
        admin = self.client(REMOTE, self.token("admin"))
        self.assertEqual(self.call(admin, "DELETE", "/tokens/read-write/").code, 200)
        self.assertRefused(self.call(client, "GET", "/"), 401)
        self.assertRefused(self.call(client, "PUT", "/foo/"), 401)
        self.assertEqual(self.store.apps(), [])


class LoopbackTests(AuthTestCase):
    url = "http://branch1.example:8000/"

    def test_loopback_has_every_scope(self):
        for peer in (None, "127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "unix"):
            client = self.client(peer)
            with self.subTest(peer=peer):
                self.assertEqual(self.call(client, "PUT", "/foo/").code in (200, 201), True)
                self.assertEqual(self.call(client, "GET", "/tokens/").code, 200)

    def test_proxy_headers_are_never_trusted(self):
        for header in ({"X-Forwarded-For": ["198.51.100.1"]},
                       {"Forwarded": ["for=198.51.100.1"]},
                       {"X-Forwarded-For": ["127.0.0.1"]}, {"Forwarded": [""]},
                       {"X-Real-IP": ["198.51.100.1"]}, {"Via": ["1.1 proxy"]},
                       {"X-Forwarded-Host": ["localhost"]}):
            client = self.client("127.0.0.1", headers=header)
            self.assertRefused(self.call(client, "PUT", "/foo/"), 401)
            self.assertRefused(self.call(client, "GET", "/tokens/"), 401)
        self.assertEqual(self.store.apps(), [])
        # Behind a proxy, a token works.
        client = self.client("127.0.0.1", self.token("write"),
                             headers={"X-Forwarded-For": ["198.51.100.1"]})
        self.assertEqual(self.call(client, "PUT", "/foo/").code, 201)

    def test_host_check_against_dns_rebinding(self):
        for base in ("http://evil.example:8000", "http://127.0.0.1.evil.example",
                     "http://10.0.0.5:8000"):
            client = self.client("127.0.0.1", base=base)
            response = self.call(client, "PUT", "/foo/")
            self.assertRefused(response, 403)
            self.assertRefused(self.call(client, "GET", "/"), 403)
        self.assertEqual(self.store.apps(), [])
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST",
                     "branch1.example:8000", "127.1.2.3", "myhost:8000"):
            client = self.client("127.0.0.1", headers={"Host": [host]})
            self.assertEqual(self.call(client, "GET", "/").code, 200, host)
        client = self.client("127.0.0.1", headers={"Host": ["[::2]:8000"]})
        self.assertRefused(self.call(client, "GET", "/"), 403)
        # The liveness probe answers whatever the Host.
        client = self.client("127.0.0.1", base="http://evil.example")
        self.assertEqual(self.call(client, "GET", "/ping/").code, 200)

    def test_origin_check(self):
        local = self.client()
        for origin in ("http://evil.example", "null", "http://localhost.evil.example",
                       "https://localhost"):
            response = self.call(local, "PUT", "/foo/", headers={"Origin": [origin]})
            self.assertRefused(response, 403)
            self.assertRefused(self.call(local, "POST", "/tokens/",
                                         data={"name": "x", "scope": "admin"},
                                         headers={"Origin": [origin]}), 403)
        self.assertEqual((self.store.apps(), self.store.tokens()), ([], []))
        # A token does not lift it either.
        writer = self.client(REMOTE, self.token("write"))
        self.assertRefused(self.call(writer, "PUT", "/foo/",
                                     headers={"Origin": ["http://evil.example"]}), 403)
        self.assertEqual(self.store.apps(), [])
        # Its own origin, and reads from anywhere, pass.
        self.assertEqual(self.call(local, "PUT", "/foo/",
                                   headers={"Origin": ["http://localhost"]}).code, 201)
        self.assertEqual(self.call(local, "PUT", "/bar/", headers={
            "Origin": ["http://branch1.example:8000"]}).code, 201)
        self.assertEqual(self.call(local, "GET", "/foo/",
                                   headers={"Origin": ["http://evil.example"]}).code, 200)


    def test_fetch_metadata_check(self):
        """
        A page of another site (or of another port of this host: the same
        site) makes a browser on this machine send writes without an
        C{Origin} (an C{<img>}, a link), but with C{Sec-Fetch-Site}.
        """
        local = self.client()
        for site in ("cross-site", "same-site", "CROSS-SITE"):
            response = self.call(local, "PUT", "/foo/", headers={"Sec-Fetch-Site": [site]})
            self.assertRefused(response, 403)
            self.assertEqual(response.json["fetch_site"], site.lower())
        self.assertEqual(self.store.apps(), [])
        for site in ("same-origin", "none"):
            response = self.call(local, "PUT", f"/{site}/", headers={"Sec-Fetch-Site": [site]})
            self.assertEqual(response.code, 201, response.body)
        # Reads are not writes; a bearer token is no browser's ambient right.
        self.assertEqual(self.call(local, "GET", "/", headers={
            "Sec-Fetch-Site": ["cross-site"]}).code, 200)
        writer = self.client(REMOTE, self.token("write"))
        self.assertEqual(self.call(writer, "PUT", "/bar/", headers={
            "Sec-Fetch-Site": ["cross-site"]}).code, 201)


class NoTrustLoopbackTests(AuthTestCase):
    trust_loopback = False

    def test_loopback_needs_a_token(self):
        for peer in (None, "::1", "unix"):
            self.assertRefused(self.call(self.client(peer), "GET", "/"), 401)
        client = self.client(None, self.token("read"))
        self.assertEqual(self.call(client, "GET", "/").code, 200)


class LoginTests(AuthTestCase):
    def cookie_of(self, response):
        return response.header("Set-Cookie")

    def log_in(self, secret, base="http://localhost"):
        """Log in with the token C{secret}: the C{Cookie} a browser sends back."""
        response = self.call(self.client(REMOTE, base=base), "POST", "/login/",
                             allow_redirects=False, data={"token": secret})
        self.assertEqual(response.code, 303, response.body)
        return self.cookie_of(response).split(";")[0]

    def browser(self, cookie, peer=REMOTE, **kwargs):
        return self.client(peer, headers={"Cookie": [cookie]}, **kwargs)

    def assertCleared(self, response, name=SESSION):
        self.assertIn(f"{name}=; Path=/; HttpOnly; SameSite=Strict; "
                      "Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0",
                      response.headers.getRawHeaders("Set-Cookie") or [])

    def test_form(self):
        response = self.successResultOf(self.client(REMOTE).request("GET", "/login/"))
        self.assertEqual(response.code, 200)
        self.assertIn(b"<form", response.body)
        self.assertIn(b'name=token', response.body)

    def test_login_sets_a_strict_http_only_session_cookie(self):
        secret = self.token("read,write", expires="1h")
        response = self.call(self.client(REMOTE), "POST", "/login/", allow_redirects=False, data={"token": secret})
        self.assertEqual(response.code, 303)
        self.assertEqual(response.header("Location"), "/admin/")
        cookie = self.cookie_of(response)
        expires = datetimeToString(int(self.clock.seconds()) + 3600).decode()
        value, _, attributes = cookie.partition("; ")
        name, _, session = value.partition("=")
        self.assertEqual(name, SESSION)
        self.assertEqual(attributes, f"Path=/; HttpOnly; SameSite=Strict; Expires={expires}")
        # A random id, not the token: a cookie goes to every port of the
        # host, so any other server on this machine would receive it.
        self.assertGreaterEqual(len(session), 40)
        self.assertNotIn(secret, cookie)
        self.assertNotIn(secret.encode(), response.body)
        self.assertEqual(self.call(self.browser(value), "GET", "/").code, 200)

    def test_the_token_itself_is_no_cookie(self):
        secret = self.token("read")
        for cookie in (f"{SESSION}={secret}", f"cyme_token={secret}"):
            self.assertRefused(self.call(self.browser(cookie), "GET", "/"), 401)

    def test_secure_over_tls(self):
        secret = self.token("read")
        client = self.client(REMOTE, base="https://localhost")
        response = self.call(client, "POST", "/login/", allow_redirects=False, data={"token": secret})
        self.assertIn("; Secure", self.cookie_of(response))
        self.assertTrue(self.cookie_of(response).startswith("cyme_session_443="))

    def test_bad_token_sets_nothing(self):
        self.token("read")
        for data in ({"token": "cyme_wrong"}, {}, {"token": ""}):
            response = self.call(self.client(REMOTE), "POST", "/login/", allow_redirects=False, data=data)
            self.assertRefused(response, 401)
            self.assertIsNone(self.cookie_of(response))

    def test_login_from_another_site_refused(self):
        secret = self.token("read")
        response = self.call(self.client(REMOTE), "POST", "/login/", allow_redirects=False, data={"token": secret},
                             headers={"Origin": ["http://evil.example"]})
        self.assertRefused(response, 403)
        self.assertIsNone(self.cookie_of(response))

    def test_cookie_authenticates_and_writes_need_the_origin(self):
        browser = self.browser(self.log_in(self.token("read,write")))
        self.assertEqual(self.call(browser, "GET", "/").code, 200)
        self.assertEqual(self.successResultOf(browser.request("GET", "/admin/")).code, 200)
        self.assertRefused(self.call(browser, "PUT", "/foo/"), 403)
        self.assertRefused(self.call(browser, "PUT", "/foo/",
                                     headers={"Origin": ["http://evil.example"]}), 403)
        # A page of another port of this host (same-site), or of another
        # site, says so even when it sends the branch's own Origin.
        for site in ("same-site", "cross-site"):
            self.assertRefused(self.call(browser, "PUT", "/foo/", headers={
                "Origin": ["http://localhost"], "Sec-Fetch-Site": [site]}), 403)
        self.assertEqual(self.store.apps(), [])
        self.assertEqual(self.call(browser, "PUT", "/foo/", headers={
            "Origin": ["http://localhost"], "Sec-Fetch-Site": ["same-origin"]}).code, 201)

    def test_admin_page_sends_a_browser_to_the_form(self):
        response = self.call(self.client(REMOTE), "GET", "/admin/", allow_redirects=False,
                             headers={"Accept": ["text/html,*/*"]})
        self.assertEqual((response.code, response.header("Location")), (303, "/login/"))
        self.assertRefused(self.call(self.client(REMOTE), "GET", "/admin/"), 401)

    def test_revoked_token_ends_its_sessions(self):
        browser = self.browser(self.log_in(self.token("read")))
        self.assertEqual(self.call(browser, "GET", "/").code, 200)
        self.successResultOf(defer.ensureDeferred(self.ops.revoke_token("read")))
        response = self.call(browser, "GET", "/")
        self.assertRefused(response, 401)
        self.assertCleared(response)
        # Made again under the same name, the token is another one.
        self.token("read")
        self.assertRefused(self.call(browser, "GET", "/"), 401)

    def test_session_ends_with_its_token(self):
        browser = self.browser(self.log_in(self.token("read", expires="1h")))
        self.clock.advance(3599)
        self.assertEqual(self.call(browser, "GET", "/").code, 200)
        self.clock.advance(1)
        self.assertRefused(self.call(browser, "GET", "/"), 401)

    def test_session_ends_after_twelve_hours(self):
        response = self.call(self.client(REMOTE), "POST", "/login/", allow_redirects=False,
                             data={"token": self.token("read")})
        end = datetimeToString(int(self.clock.seconds()) + 12 * 3600).decode()
        self.assertTrue(self.cookie_of(response).endswith(f"; Expires={end}"))
        browser = self.browser(self.cookie_of(response).split(";")[0])
        self.clock.advance(12 * 3600 - 1)
        self.assertEqual(self.call(browser, "GET", "/").code, 200)
        self.clock.advance(1)
        self.assertRefused(self.call(browser, "GET", "/"), 401)

    def test_stale_cookie_is_ignored_and_cleared(self):
        for cookie in (f"{SESSION}=garbage", f"{SESSION}=" + "A" * 43):
            with self.subTest(cookie=cookie):
                # On this machine: trusted as loopback, as without it.
                response = self.call(self.browser(cookie, peer=None), "PUT", "/foo/")
                self.assertEqual(response.code, 201, response.body)
                self.assertEqual(self.audits()[-1]["who"], "loopback")
                self.assertCleared(response)
                # From elsewhere: a stranger, as without it.
                response = self.call(self.browser(cookie), "GET", "/")
                self.assertRefused(response, 401)
                self.assertCleared(response)
                self.call(self.client(), "DELETE", "/foo/")

    def test_the_token_cookie_of_before_sessions_is_cleared(self):
        response = self.call(self.browser("cyme_token=cyme_old", peer=None), "GET", "/")
        self.assertEqual(response.code, 200)
        self.assertCleared(response, "cyme_token")

    def test_a_session_is_one_branchs(self):
        # Two branches of one host share its cookies, whatever their
        # ports: each has a cookie of its own, and leaves the other's alone.
        cookie = self.log_in(self.token("read"), base="http://localhost:8001")
        self.assertTrue(cookie.startswith("cyme_session_8001="))
        here = self.browser(cookie, base="http://localhost:8001")
        self.assertEqual(self.call(here, "GET", "/").code, 200)
        other = self.call(self.browser(cookie, base="http://localhost:8002"), "GET", "/")
        self.assertRefused(other, 401)
        self.assertIsNone(self.cookie_of(other))


class TokenRouteTests(AuthTestCase):
    def test_create_list_revoke(self):
        admin = self.client(REMOTE, self.token("admin", "root"))
        made = self.call(admin, "POST", "/tokens/", data={
            "name": "ci", "scope": "read,write", "expires": "30d"})
        self.assertEqual(made.code, 201, made.body)
        secret = made.json["token"]
        self.assertEqual(made.json["scopes"], ["read", "write"])
        self.assertEqual(made.json["expires"], self.clock.seconds() + 30 * 86400)
        self.assertNotIn("hash", made.json)
        listed = self.call(admin, "GET", "/tokens/")
        self.assertEqual([t["name"] for t in listed.json], ["ci", "root"])
        self.assertNotIn(secret.encode(), listed.body)
        self.assertNotIn(self.store.get_token("ci").hash.encode(), listed.body)
        ci = self.client(REMOTE, secret)
        self.assertEqual(self.call(ci, "PUT", "/foo/").code, 201)
        self.assertEqual(self.call(admin, "DELETE", "/tokens/ci/").code, 200)
        self.assertRefused(self.call(ci, "GET", "/"), 401)
        self.assertRefused(self.call(admin, "DELETE", "/tokens/ci/"), 404)

    def test_other_spellings_route_with_the_admin_scope(self):
        """The scope is decided on the names the router sees: an admin
        reaches C{/tokens/} however it is spelled, others never do."""
        admin = self.client(REMOTE, self.token("admin", "root"))
        made = self.call(admin, "POST", "/%74okens/", data={"name": "ci", "scope": "read"})
        self.assertEqual(made.code, 201, made.body)
        self.assertEqual(self.call(admin, "DELETE", "/tok%65ns/ci").code, 200)
        writer = self.client(REMOTE, self.token("write"))
        self.assertRefused(self.call(writer, "GET", "/%74okens/"), 403)
        for path in ("//tokens/", "/tokens//", "//"):
            self.assertRefused(self.call(admin, "GET", path), 404)

    def test_json_body(self):
        made = self.call(self.client(), "POST", "/tokens/", headers=JSON,
                         data=json.dumps({"name": "ci", "scope": ["read"]}))
        self.assertEqual((made.code, made.json["scopes"]), (201, ["read"]))

    def test_bad_requests_store_nothing(self):
        admin = self.client()
        for data in [{"scope": "read"}, {"name": "ci"}, {"name": "ci", "scope": "root"},
                     {"name": "../x", "scope": "read"},
                     {"name": "ci", "scope": "read", "expires": "forever"}]:
            self.assertRefused(self.call(admin, "POST", "/tokens/", data=data), 400)
        self.assertEqual(self.store.tokens(), [])
        self.assertEqual(self.call(admin, "POST", "/tokens/",
                                   data={"name": "ci", "scope": "read"}).code, 201)
        hash_ = self.store.get_token("ci").hash
        self.assertRefused(self.call(admin, "POST", "/tokens/",
                                     data={"name": "ci", "scope": "admin"}), 409)
        self.assertEqual(self.store.get_token("ci").hash, hash_)


class PasswordTests(AuthTestCase):
    def setUp(self):
        super().setUp()
        local = self.client()
        self.call(local, "PUT", "/foo/", data={"broker": BROKER})
        self.call(local, "PUT", "/foo/instances/w1/", data={"broker": BROKER})

    def answers(self, client):
        return [
            self.call(client, "GET", "/foo/"),
            self.call(client, "GET", "/foo/instances/w1/"),
            self.call(client, "GET", "/foo/instance/w1/"),
            self.call(client, "GET", "/instances/w1/"),
        ]

    def test_readers_see_no_password(self):
        reader = self.client(REMOTE, self.token("read,write"))
        answers = self.answers(reader) + [
            self.call(reader, "PUT", "/foo/", data={"task_timeout": "20"}),
            self.call(reader, "PUT", "/foo/instances/w1/", data={"max_concurrency": "3"}),
            self.call(reader, "PUT", "/foo/instances/w2/"),
            self.call(reader, "POST", "/foo/instances/w1/disable/"),
            self.call(reader, "POST", "/foo/instances/w1/enable/"),
        ]
        for response in answers:
            self.assertLess(response.code, 300, response.body)
            self.assertNotIn(b"s3cret-pw", response.body)
            self.assertIn("password", response.json["broker"])
            self.assertIsNone(response.json["broker"]["password"])
            self.assertEqual(response.json["broker"]["userid"], "alice")
        # The record keeps it.
        self.assertEqual(self.store.get_app("foo").broker.password, "s3cret-pw")

    def test_admins_and_loopback_see_it(self):
        for client in (self.client(), self.client(REMOTE, self.token("read,admin"))):
            for response in self.answers(client):
                self.assertEqual(response.json["broker"]["password"], "s3cret-pw")

    def test_listings_and_lists_mask_every_broker(self):
        reader = self.client(REMOTE, self.token("read,write"))
        self.call(self.client(), "PUT", "/bar/", data={"broker": BROKER})
        for path in ("/", "/foo/instances/", "/foo/queues/", "/branches/"):
            response = self.call(reader, "GET", path)
            self.assertEqual(response.code, 200, response.body)
            self.assertNotIn(b"s3cret-pw", response.body)

    def test_a_tasks_own_password_field_is_its_own(self):
        """What a queued URL answered is shown as it is: only brokers are masked."""
        journal = ResultJournal(self.mktemp(), self.clock)
        self.addCleanup(journal.close)
        ops = LocalOperations(self.store, now=self.clock.seconds, tasks=FakeTasks(journal),
                              clock=self.clock)
        api = BranchAPI(ops, Gate(ops, trust_loopback=True, names=frozenset()), clock=Clock())
        reader = APIClient(api.resource(), peer=REMOTE, headers=bearer(self.token("read")))
        journal.record("t-1", "SUCCESS", app="foo",
                       result={"body": {"password": "reset-me", "broker": "none"}})
        self.clock.advance(0)
        response = self.call(reader, "GET", "/foo/query/t-1/result/")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json["result"]["body"],
                         {"password": "reset-me", "broker": "none"})

    def test_admin_page_shows_none(self):
        reader = self.client(REMOTE, self.token("read"))
        page = self.successResultOf(reader.request("GET", "/admin/"))
        self.assertEqual(page.code, 200)
        self.assertNotIn(b"s3cret-pw", page.body)


class AuditTests(AuthTestCase):
    def test_every_write_is_audited(self):
        writer = self.client(REMOTE, self.token("read,write", "ci"))
        self.call(writer, "PUT", "/foo/")
        self.call(writer, "GET", "/foo/")
        local = self.client()
        self.call(local, "PUT", "/foo/instances/w1/")
        self.call(local, "DELETE", "/instances/w1/")
        self.call(self.client(REMOTE), "DELETE", "/foo/")
        self.call(local, "PUT", "/foo/queue/q/http://user:pw@x.example/a")
        self.call(local, "DELETE", "/tokens/ci/")
        lines = [(e["who"], e["method"], e["status"],
                  {k: e.get(k) for k in ("app", "instance", "queue", "token") if k in e})
                 for e in self.audits()]
        self.assertEqual(lines, [
            ("token:ci", "PUT", 201, {"app": "foo"}),
            ("loopback", "PUT", 201, {"app": "foo", "instance": "w1"}),
            ("loopback", "DELETE", 200, {"instance": "w1"}),
            ("anonymous", "DELETE", 401, {"app": "foo"}),
            ("loopback", "PUT", 404, {"app": "foo", "queue": "q"}),
            ("loopback", "DELETE", 200, {"token": "ci"}),
        ])
        text = repr(self.audits())
        self.assertNotIn("user:pw", text)
        self.assertNotIn("x.example", text)


    def test_refused_writes_name_their_caller(self):
        evil = {"Origin": ["http://evil.example"]}
        self.call(self.client(headers=evil), "PUT", "/foo/")
        writer = self.client(REMOTE, self.token("read,write", "ci"), headers=evil)
        self.call(writer, "PUT", "/foo/")
        self.call(writer, "GET", "/foo/queue/q/http://user:pw@x.example/a")
        self.call(self.client(REMOTE, self.token("write", "w")), "POST", "/%74okens/",
                  data={"name": "x", "scope": "admin"})
        lines = [(e["who"], e["method"], e["path"], e["status"]) for e in self.audits()]
        self.assertEqual(lines, [
            ("loopback", "PUT", "/foo/", 403),
            ("token:ci", "PUT", "/foo/", 403),
            ("token:ci", "GET", "/foo/queue/q/\u2026/", 403),
            ("token:w", "POST", "/tokens/", 403),
        ])
        self.assertNotIn("user:pw", repr(self.audits()))


class BoundsTests(AuthTestCase):
    def test_json_depth(self):
        local = self.client()
        deep = '{"hostname": ' + "[" * 33 + "]" * 33 + "}"
        response = self.call(local, "PUT", "/foo/", headers=JSON, data=deep)
        self.assertRefused(response, 400)
        self.assertIn("deeper", response.json["error"])
        self.assertEqual(self.store.apps(), [])

    def multipart(self, parts, boundary="XyZ"):
        body = b"".join(
            b"--%s\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n"
            % (boundary.encode(), i) for i in range(parts)
        ) + b"--%s--\r\n" % boundary.encode()
        headers = {"Content-Type": [f"multipart/form-data; boundary={boundary}"]}
        return body, headers

    def test_multipart_parts_counted_before_parsing(self):
        body, headers = self.multipart(1001)
        response = self.call(self.client(), "PUT", "/foo/", headers=headers, data=body)
        self.assertRefused(response, 400)
        self.assertIn("1000 fields", response.json["error"])
        self.assertEqual(self.store.apps(), [])

    def test_nested_multipart_refused(self):
        inner = (b"--in\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--in--\r\n")
        body = (b"--out\r\nContent-Disposition: form-data; name=\"x\"\r\n"
                b"Content-Type: multipart/mixed; boundary=in\r\n\r\n" + inner
                + b"\r\n--out--\r\n")
        headers = {"Content-Type": ["multipart/form-data; boundary=out"]}
        response = self.call(self.client(), "PUT", "/foo/", headers=headers, data=body)
        self.assertRefused(response, 400)
        self.assertEqual(self.store.apps(), [])

    def test_multipart_without_boundary(self):
        headers = {"Content-Type": ["multipart/form-data"]}
        response = self.call(self.client(), "PUT", "/foo/", headers=headers, data=b"x")
        self.assertRefused(response, 400)


class AuditTargetTests(SynchronousTestCase):
    def test_targets(self):
        for path, expected in [
            (b"/foo/", ("/foo/", {"app": "foo"})),
            (b"/foo/instances/", ("/foo/instances/", {"app": "foo", "instance": None})),
            (b"/foo/instances/!/w1/", ("/foo/instances/!/w1/", {"app": "foo", "instance": "w1"})),
            (b"/foo/instance/w1/queues/q/",
             ("/foo/instance/w1/queues/q/", {"app": "foo", "instance": "w1"})),
            (b"/foo/queues/q/", ("/foo/queues/q/", {"app": "foo", "queue": "q"})),
            (b"/foo/queue/q/http://u:p@h/x?y", ("/foo/queue/q/\u2026/", {"app": "foo", "queue": "q"})),
            (b"/instances/w%31/", ("/instances/w1/", {"instance": "w1"})),
            (b"/tokens/ci/", ("/tokens/ci/", {"token": "ci"})),
            (b"/tokens/", ("/tokens/", {"token": None})),
            (b"/login/", ("/login/", {})),
            # What the router sees: decoded, empty names left out, the
            # target's first byte whatever it is.
            (b"/%74okens/ci/", ("/tokens/ci/", {"token": "ci"})),
            (b"//tokens/", ("/tokens/", {"token": None})),
            (b"Xtokens/", ("/tokens/", {"token": None})),
            (b"//foo/queue/q/http://u:p@h/",
             ("/foo/queue/q/\u2026/", {"app": "foo", "queue": "q"})),
            (b"/foo/%71ueue/q/http://u:p@h/",
             ("/foo/queue/q/\u2026/", {"app": "foo", "queue": "q"})),
            # The no-wait "!" names nothing.
            (b"/!/foo/", ("/!/foo/", {"app": "foo"})),
            (b"/foo/queues/!/q/", ("/foo/queues/!/q/", {"app": "foo", "queue": "q"})),
            (b"/foo/instances/!/", ("/foo/instances/!/", {"app": "foo", "instance": None})),
            (b"/foo/instances/w1/queues/!/q/",
             ("/foo/instances/w1/queues/!/q/", {"app": "foo", "instance": "w1"})),
            (b"/instances/!/w1/", ("/instances/!/w1/", {"instance": "w1"})),
            (b"/tokens/!/ci/", ("/tokens/!/ci/", {"token": "ci"})),
        ]:
            self.assertEqual(audit_target(path), expected, path)
