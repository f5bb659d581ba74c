"""The fence of the webhook (L{cyme.fence} applied by L{cyme.tasks.webhook.perform}),
against a real HTTP server that must not be hit.

The server listens on every address of this machine, IPv4 and IPv6 (one
dual-stack socket), so that each refused form of a URL would reach it if
the fence let it through; the same forms, once the app's allow-list names
them where the branch's operator opened them (C{--webhook-allow}: the
C{opened} of L{cyme.tasks.webhook.perform}), do reach it, and the app's
list alone does not.
"""

import json
import os
import socket
import ssl
import unittest

from twisted.trial.unittest import SynchronousTestCase

from cyme.fence import literal_address
from cyme.tasks import webhook as wh
from cyme.tasks.webhook import HostRefused
from tests.localhost import outside_address, self_signed
from tests.tasks.test_webhook import Handler, Server, serve

LOOPBACK_FORMS = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.1", "017700000001",
    "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]",
    "localhost", "LocalHost", "１２７.０.０.１",
]


class DualStackServer(Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class FenceTestBase(SynchronousTestCase):
    def setUp(self):
        server = serve(self, DualStackServer(("::", 0), Handler))
        self.server = server
        self.port = server.server_address[1]

    def url(self, host, path="/text"):
        return f"http://{host}:{self.port}{path}"

    def refused(self, url, *fragments, **kwargs):
        exc = self.assertRaises(HostRefused, wh.perform, "GET", url, timeout=5, **kwargs)
        for fragment in fragments:
            self.assertIn(fragment, str(exc))
        return exc

    def reached(self, url, **kwargs):
        result = wh.perform("GET", url, timeout=5, **kwargs)
        self.assertEqual(result["status_code"], 200, result)
        return self.server.requests[-1]

    def outside(self, family=socket.AF_INET, probe="203.0.113.1"):
        address = outside_address(family, probe)
        if address is None:
            raise unittest.SkipTest("this machine has no address but loopback")
        return address


class RefusedFormsTests(FenceTestBase):
    def test_every_loopback_form_refused_and_the_server_never_hit(self):
        for host in LOOPBACK_FORMS:
            exc = self.refused(self.url(host), "a loopback address")
            self.assertEqual(exc.host, host.strip("[]").lower())
        self.assertEqual(self.server.requests, [])

    def test_unspecified_refused_though_it_reaches_this_machine(self):
        for host in ("0.0.0.0", "0", "[::]"):
            self.refused(self.url(host), "an unspecified address")
        self.assertEqual(self.server.requests, [])
        self.refused(self.url("0.0.0.0"), "not opened by the branch", allowed_hosts=["0.0.0.0"])
        self.assertEqual(self.server.requests, [])
        # Listed and opened, 0.0.0.0 does reach the server: the refusals
        # above were the fence's.
        self.assertEqual(self.reached(self.url("0.0.0.0"), allowed_hosts=["0.0.0.0"],
                                      opened=["0.0.0.0"])["path"], "/text")

    def test_link_local_metadata_and_multicast_refused_before_connecting(self):
        for host, rule in [
            ("169.254.169.254", "link-local"), ("[::ffff:169.254.169.254]", "link-local"),
            ("2852039166", "link-local"), ("[fe80::1]", "link-local"),
            ("[fe80::1%25eth0]", "link-local"), ("[fd00:ec2::254]", "cloud metadata"),
            ("224.0.0.1", "multicast"), ("[ff02::1]", "multicast"),
        ]:
            self.refused(f"http://{host}/latest/meta-data/", rule)

    def forms(self):
        return [("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                ("0x7f.1", "127.0.0.0/8"), ("[::1]", "::1"),
                ("[::ffff:127.0.0.1]", "127.0.0.1"), ("localhost", "localhost"),
                ("localhost", f"localhost:{self.port}")]

    def test_each_form_reaches_the_server_once_listed_where_the_operator_opened_it(self):
        for host, listed in self.forms():
            request = self.reached(self.url(host), allowed_hosts=[listed],
                                   opened=["127.0.0.0/8", "::1", "localhost"])
            self.assertIn(request["to"], ("::1", "::ffff:127.0.0.1"), (host, listed))
        self.assertEqual(len(self.server.requests), 7)

    def test_the_apps_list_alone_opens_no_refused_range(self):
        """What a C{write} token can set (the app's C{allowed_hosts}) does
        not reach loopback: the branch's own API, RabbitMQ's management."""
        for host, listed in self.forms():
            exc = self.refused(self.url(host), "a loopback address, not opened by the branch "
                                               "(--webhook-allow)", allowed_hosts=[listed])
            self.assertIn("not opened by the branch", exc.rule)
        # Opened elsewhere (another port, another address) is not opened here.
        self.refused(self.url("127.0.0.1"), "not opened by the branch", allowed_hosts=["127.0.0.1"],
                     opened=[f"127.0.0.1:{self.port + 1 if self.port < 65535 else 1}", "::1"])
        self.assertEqual(self.server.requests, [])

    def test_the_list_allows_only_what_it_lists(self):
        self.refused(self.url("127.0.0.1"), "not in the app's allowed_hosts (example.com)",
                     allowed_hosts=["example.com"])
        self.refused(self.url("127.0.0.1"), "not in the app's allowed_hosts",
                     allowed_hosts=["127.0.0.1:1"])
        self.refused(self.url("localhost"), "not in the app's allowed_hosts",
                     allowed_hosts=["*.localhost"])
        # A wildcard opens names, not the ranges the default policy refuses.
        self.refused(self.url("a.example.com"), "a loopback address, not in the app's",
                     allowed_hosts=["*.example.com"], resolve=lambda host, port: ["127.0.0.1"])
        # An address entry matches hosts written as addresses, not names.
        self.refused(self.url("localhost"), "not in the app's allowed_hosts", allowed_hosts=["127.0.0.1"])
        outside = self.outside()
        self.refused(self.url(outside), "not in the app's allowed_hosts", allowed_hosts=["127.0.0.1"])
        self.assertEqual(self.server.requests, [])

    def test_private_ranges_refused_with_deny_private(self):
        private = self.outside(socket.AF_INET6, "2001:db8::1")
        if not literal_address(private).is_private:
            raise unittest.SkipTest(f"{private} is not a private address")
        url = self.url(f"[{private}]")
        self.assertEqual(self.reached(url)["to"], private)
        self.refused(url, "a private (unique local) address", deny_private=True)
        self.assertEqual(len(self.server.requests), 1)
        self.refused(url, "a private (unique local) address, not opened by the branch",
                     deny_private=True, allowed_hosts=["fc00::/7"])
        self.assertEqual(len(self.server.requests), 1)
        self.reached(url, deny_private=True, allowed_hosts=["fc00::/7"], opened=[private])


class RedirectTests(FenceTestBase):
    def test_redirect_to_a_refused_address(self):
        start = self.url(self.outside(), "/redirect-to")
        for target in ("127.0.0.1", "2130706433", "[::ffff:127.0.0.1]", "localhost", "0.0.0.0"):
            self.server.requests.clear()
            exc = self.refused(f"{start}?to={self.url(target)}", "redirect refused", "refused (a")
            self.assertIsNotNone(exc.rule)
            self.assertEqual([r["path"] for r in self.server.requests], ["/redirect-to"])

    def test_redirect_out_of_the_allow_list(self):
        start = self.url("127.0.0.1", "/redirect-to")
        self.refused(f"{start}?to={self.url('[::1]')}", "redirect refused", "host ::1 refused",
                     allowed_hosts=["127.0.0.1"], opened=["127.0.0.1", "::1"])
        self.assertEqual([r["path"] for r in self.server.requests], ["/redirect-to"])


class RebindingTests(FenceTestBase):
    """A name that resolves to an allowed address when it is checked, and to
    another one afterwards: the connection goes to the address checked."""

    def resolver(self, *answers):
        """Patch the system's resolver: C{rebind.test} answers C{answers} in
        turn (the last one ever after); every other lookup is recorded."""
        real = socket.getaddrinfo
        self.names, self.others = [], []

        def getaddrinfo(host, port, *args, **kwargs):
            if host == "rebind.test":
                self.names.append(host)
                host = answers[min(len(self.names), len(answers)) - 1]
            else:
                self.others.append(host)
            return real(host, port, *args, **kwargs)

        self.patch(socket, "getaddrinfo", getaddrinfo)

    def test_one_lookup_the_connection_to_the_address_checked(self):
        # Its names may lead to 127.0.0.1 (listed), not to 127.0.0.2.
        allowed = ["*.test", "127.0.0.1"]
        self.resolver("127.0.0.1", "127.0.0.2")
        request = self.reached(self.url("rebind.test"), allowed_hosts=allowed, opened=["127.0.0.1"])
        self.assertEqual(self.names, ["rebind.test"])
        # What else was looked up was the checked address, never the name.
        self.assertEqual(self.others, ["127.0.0.1"])
        self.assertEqual(request["to"], "::ffff:127.0.0.1")
        # The Host header keeps the name.
        self.assertEqual(request["headers"]["host"], f"rebind.test:{self.port}")

    def test_public_then_loopback(self):
        # The classic rebinding: an address the default policy allows, then
        # loopback.
        outside = self.outside()
        self.resolver(outside, "127.0.0.1")
        request = self.reached(self.url("rebind.test"))
        self.assertEqual(self.names, ["rebind.test"])
        self.assertEqual(request["to"], f"::ffff:{outside}")

    def test_every_hop_is_looked_up_and_judged(self):
        self.resolver("127.0.0.1", "127.0.0.2")
        url = self.url("rebind.test", "/redirect-to") + "?to=" + self.url("rebind.test")
        self.refused(url, "host rebind.test (at 127.0.0.2) refused", allowed_hosts=["*.test", "127.0.0.1"],
                     opened=["127.0.0.0/8"])
        self.assertEqual(self.names, ["rebind.test", "rebind.test"])
        self.assertEqual([r["path"] for r in self.server.requests], ["/redirect-to"])

    def test_a_name_with_one_refused_address_is_refused(self):
        answers = iter([["93.184.216.34", "127.0.0.1"]])
        self.refused(self.url("mixed.test"), "host mixed.test (at 127.0.0.1) refused",
                     resolve=lambda host, port: next(answers))


class TaskTests(FenceTestBase):
    """The worker's task applies the fence with the policy it is given."""

    def setUp(self):
        super().setUp()
        from cyme.tasks import worker

        self.task = worker.webhook

    def configure(self, **fence):
        """The worker's own fence, as its branch's C{CYME_WORKER_CONFIG} sets it."""
        from cyme.tasks import worker

        conf = worker.app.conf
        keys = ("cyme_webhook_allowed_hosts", "cyme_webhook_deny_private", "cyme_webhook_opened")
        saved = {k: conf.get(k) for k in keys}
        self.addCleanup(conf.update, saved)
        worker.configure({"webhook": fence})

    def test_default_policy(self):
        self.assertRaises(HostRefused, self.task.run, "GET", self.url("127.0.0.1"))
        result = self.task.apply(args=("GET", self.url("2130706433")))
        self.assertEqual(result.state, "FAILURE")
        self.assertIsInstance(result.result, HostRefused)
        self.assertEqual(self.server.requests, [])
        # The worker's own fence opens loopback: then the task reaches it.
        self.configure(allowed_hosts=["127.0.0.1"], opened=["127.0.0.1"])
        self.assertEqual(self.task.run("GET", self.url("127.0.0.1"))["status_code"], 200)
        self.assertEqual(
            self.task.run("GET", self.url("127.0.0.1"), allowed_hosts=["127.0.0.1"])["status_code"],
            200)

    def test_a_task_cannot_widen_the_workers_fence(self):
        """Anyone who may publish on the app's broker writes the task: its
        C{allowed_hosts} may narrow the worker's fence, never widen it."""
        self.configure()  # the default policy, nothing opened
        for allowed in (["127.0.0.1"], ["0.0.0.0/0", "::/0"], ["localhost"]):
            for host in ("127.0.0.1", "localhost", "[::1]"):
                self.assertRaises(HostRefused, self.task.run, "GET", self.url(host),
                                  allowed_hosts=allowed)
        self.configure(allowed_hosts=["127.0.0.1"])  # the app's list, not opened
        self.assertRaises(HostRefused, self.task.run, "GET", self.url("127.0.0.1"),
                          allowed_hosts=["127.0.0.1"])
        self.assertEqual(self.server.requests, [])
        # A task may narrow: a list without this host refuses it.
        self.configure(allowed_hosts=["127.0.0.1", "localhost"], opened=["127.0.0.1"])
        exc = self.assertRaises(HostRefused, self.task.run, "GET", self.url("127.0.0.1"),
                                allowed_hosts=["localhost"])
        self.assertIn("not in the app's allowed_hosts (localhost)", str(exc))
        self.assertEqual(self.server.requests, [])
        # What is no list refuses the task, whatever it holds.
        exc = self.assertRaises(Exception, self.task.run, "GET", self.url("127.0.0.1"),
                                allowed_hosts="127.0.0.1")
        self.assertIn("allowed_hosts must be a list", str(exc))
        for allowed in (["127.0.0.1"], [], None):  # none: the worker's own fence
            self.assertEqual(self.task.run("GET", self.url("127.0.0.1"),
                                           allowed_hosts=allowed)["status_code"], 200)

    def test_a_setting_cannot_widen_the_fence(self):
        """The fence is set after the app's extra_config, which the branch
        vets anyway: a setting of that name changes nothing."""
        self.configure()  # restores the fence's settings after the test
        from cyme.tasks import worker

        worker.configure({"extra_config": {"cyme_webhook_allowed_hosts": ["127.0.0.1"],
                                           "cyme_webhook_opened": ["127.0.0.1"]}})
        self.assertRaises(HostRefused, self.task.run, "GET", self.url("127.0.0.1"))
        self.assertEqual(self.server.requests, [])

    def test_deny_private_from_the_branch_or_the_app_setting(self):
        url = "http://10.255.255.1/"
        exc = self.assertRaises(HostRefused, self.task.run, "GET", url, deny_private=True)
        self.assertIn("a private address", str(exc))
        conf = self.task.app.conf
        conf.cyme_webhook_deny_private = True
        self.addCleanup(conf.pop, "cyme_webhook_deny_private", None)
        self.assertRaises(HostRefused, self.task.run, "GET", url)


class TLSTests(FenceTestBase):
    """The connection goes to the address checked; TLS still names the host:
    its server name (SNI) and the certificate check are on the URL's name."""

    def setUp(self):
        super().setUp()
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert = self_signed(directory, "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.server_names = []
        context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        # The client trusts this certificate as it trusts the system's.
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = cert
        self.addCleanup(lambda: os.environ.pop("SSL_CERT_FILE") if before is None
                        else os.environ.__setitem__("SSL_CERT_FILE", before))

    def test_certificate_checked_on_the_name(self):
        url = f"https://localhost:{self.port}/text"
        result = wh.perform("GET", url, timeout=5, allowed_hosts=["localhost"],
                            opened=["localhost"])
        self.assertEqual(result["status_code"], 200)
        self.assertEqual(self.server_names, ["localhost"])
        self.assertEqual(self.server.requests[-1]["headers"]["host"], f"localhost:{self.port}")

    def test_the_address_is_not_the_name(self):
        # The same server by its address: the certificate names localhost only.
        exc = self.assertRaises(wh.WebhookError, wh.perform, "GET", f"https://127.0.0.1:{self.port}/",
                                timeout=5, allowed_hosts=["127.0.0.1"], opened=["127.0.0.1"])
        self.assertIn("TLS error", str(exc))
        self.assertEqual(self.server.requests, [])


class ResultTests(SynchronousTestCase):
    def test_a_refusal_travels_as_a_result(self):
        """Through a result message (JSON, Celery's exception fields) a
        refusal keeps its type and its message, host and rule included."""
        from cyme.tasks import worker

        exc = self.assertRaises(HostRefused, wh.perform, "GET", "http://0x7f.1/")
        backend = worker.app.backend
        meta = backend.prepare_exception(exc, "json")
        self.assertEqual((meta["exc_type"], meta["exc_module"]), ("HostRefused", "cyme.tasks.webhook"))
        back = backend.exception_to_python(json.loads(json.dumps(meta)))
        self.assertIsInstance(back, HostRefused)
        self.assertEqual(str(back), "host 0x7f.1 (at 127.0.0.1) refused (a loopback address; the "
                                    "branch's operator (--webhook-allow) and the app's allowed_hosts "
                                    "must both allow it): http://0x7f.1/")
