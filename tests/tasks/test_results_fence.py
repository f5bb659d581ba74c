"""The branch's fence (L{cyme.tasks.urlcheck.URLCheck}, in L{TaskService.queue}): a queued URL
the fence refuses is a 400 naming the host and the rule, and nothing is
queued; a name is judged by the addresses the branch's resolver finds.
"""

import json

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cyme.amqp import BrokerPool
from cyme.errors import BadRequest
from cyme.state.models import App, Queue
from cyme.state.store import MemoryStore
from cyme.tasks.results import TaskService
from cyme.tasks.urlcheck import URLCheck, URLRefused, _Lookup
from tests.amqp.fakes import FakeClient, FakeConnection
from tests.tasks.test_journal import JournalTestCase


@implementer(IHostResolution)
class Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a table; the names in C{silent} never answer."""

    def __init__(self, answers, silent=()):
        self.answers = answers
        self.silent = silent
        self.asked = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        self.asked.append(hostName)
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName not in self.silent:
            for address in self.answers.get(hostName, ()):
                kind = IPv6Address if ":" in address else IPv4Address
                resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
            resolutionReceiver.resolutionComplete()
        return resolution


class BranchFenceTests(JournalTestCase):
    def setUp(self):
        super().setUp()
        self.clients = {}
        self.resolver = FakeResolver({
            "public.test": ["93.184.216.34"],
            "local.test": ["127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "mixed.test": ["93.184.216.34", "::1"],
            "intranet.test": ["10.0.0.5"],
        }, silent=("slow.test",))
        self.tasks = self.make_tasks()

    def make_tasks(self, **kwargs):
        pool = BrokerPool(self.clock, make_client=self.client)
        check = URLCheck(self.clock, resolver=self.resolver, **kwargs)
        return TaskService(pool, self.journal(), "b1", self.clock, MemoryStore(),
                           publish_timeout=10, url_check=check)

    def client(self, url):
        self.clients[url] = FakeClient()
        return self.clients[url]

    def queue(self, url, tasks=None, **app):
        tasks = tasks or self.tasks
        from twisted.internet import defer

        return defer.ensureDeferred(tasks.queue(App("foo", **app), Queue("tasks"), "GET", url))

    def refused(self, url, host, *fragments, tasks=None, **app):
        error = self.failureResultOf(self.queue(url, tasks, **app), URLRefused).value
        self.assertEqual(error.status, 400)
        body = error.to_json()
        self.assertEqual((body["field"], body["host"]), ("url", host))
        self.assertTrue(body["rule"])
        for fragment in fragments:
            self.assertIn(fragment, body["error"])
        return body

    def recorded(self):
        """How many tasks the journal holds (once its writes are done)."""
        self.clock.advance(0)
        return len(self.tasks.journal.records)

    def assertNothingQueued(self, tasks=None):
        tasks = tasks or self.tasks
        self.clock.advance(0)
        self.assertEqual(tasks.journal.records, {})
        self.assertEqual(tasks.links, {})  # no broker was even asked

    def published_kwargs(self, tasks=None):
        tasks = tasks or self.tasks
        connection = FakeConnection()
        self.clients[App("foo").broker.as_url()].connect(connection)
        self.clock.advance(0)
        _, publishing = connection.channels
        (body,) = [c[1][2] for c in publishing.calls if c[0] == "publish"]
        return json.loads(body)[1]

    def test_fakes_implement_the_interfaces(self):
        verifyObject(IHostnameResolver, self.resolver)
        verifyObject(IResolutionReceiver, _Lookup())

    def test_every_literal_form_refused_without_a_lookup(self):
        for host, rule in [("127.0.0.1", "loopback"), ("2130706433", "loopback"),
                           ("0x7f.1", "loopback"), ("[::1]", "loopback"),
                           ("[::ffff:127.0.0.1]", "loopback"), ("0.0.0.0", "unspecified"),
                           ("169.254.169.254", "link-local"), ("[fe80::1]", "link-local"),
                           ("[fd00:ec2::254]", "cloud metadata"), ("224.0.0.1", "multicast")]:
            body = self.refused(f"http://{host}:15672/api/definitions", host.strip("[]"), rule)
            self.assertIn(f"http://{host}:15672/api/definitions", body["error"])
        self.assertEqual(self.resolver.asked, [])
        self.assertNothingQueued()

    def test_a_name_is_judged_by_its_addresses(self):
        self.refused("http://local.test/", "local.test", "host local.test (at 127.0.0.1) refused",
                     "a loopback address")
        self.refused("http://metadata.test/latest/", "metadata.test", "link-local")
        self.refused("http://mixed.test/", "mixed.test", "(at ::1)")
        self.assertEqual(self.resolver.asked, ["local.test", "metadata.test", "mixed.test"])
        self.assertNothingQueued()

    def test_allowed_urls_are_queued(self):
        self.queue("http://public.test/x")
        self.queue("http://intranet.test/x")  # private ranges: allowed by default
        self.assertEqual(self.recorded(), 2)
        self.assertEqual(list(self.tasks.links), [App("foo").broker.as_url()])

    def test_the_allow_list_opens_what_it_lists_and_only_that(self):
        tasks = self.make_tasks(opened=["local.test", "127.0.0.1"])
        self.queue("http://local.test:8080/x", tasks, allowed_hosts=["local.test"])  # no lookup needed
        self.queue("http://127.0.0.1/x", tasks, allowed_hosts=["127.0.0.0/8"])
        self.queue("http://local.test/x", tasks, allowed_hosts=["*.test", "127.0.0.1"])
        self.clock.advance(0)
        self.assertEqual(len(tasks.journal.records), 3)
        self.assertEqual(self.resolver.asked, ["local.test"])
        # A wildcard's names may not lead into a refused range unlisted.
        self.refused("http://local.test/", "local.test", "a loopback address, not in the app's",
                     tasks=tasks, allowed_hosts=["*.test"])
        # A name the list does not match is refused without a lookup.
        self.refused("http://local.test/", "local.test", "not in the app's allowed_hosts (127.0.0.1)",
                     tasks=tasks, allowed_hosts=["127.0.0.1"])
        self.refused("http://evil.test/", "evil.test", "not in the app's allowed_hosts (example.com)",
                     tasks=tasks, allowed_hosts=["example.com"])
        self.assertEqual(self.resolver.asked, ["local.test"])  # its lookup kept

    def test_the_apps_list_alone_opens_no_refused_range(self):
        """A C{write} token sets the app's C{allowed_hosts}; only the
        operator's C{--webhook-allow} opens loopback (the branch's own API)
        or the metadata service to it: a 400 naming host and rule."""
        for url, host, allowed in [
            ("http://127.0.0.1:8001/tokens/", "127.0.0.1", ["127.0.0.1:8001"]),
            ("http://[::1]:8001/tokens/", "::1", ["[::1]"]),
            ("http://169.254.169.254/latest/", "169.254.169.254", ["169.254.0.0/16"]),
            ("http://local.test:15672/api/", "local.test", ["local.test"]),
            ("http://local.test/", "local.test", ["*.test", "127.0.0.1"]),
        ]:
            body = self.refused(url, host, "not opened by the branch (--webhook-allow)",
                                allowed_hosts=allowed)
            self.assertIn("not opened by the branch (--webhook-allow)", body["rule"])
        self.assertNothingQueued()
        # The operator's opening is bounded too: its port, its network.
        tasks = self.make_tasks(opened=["127.0.0.1:8080", "fe80::/64"])
        self.refused("http://127.0.0.1:8001/", "127.0.0.1", "a loopback address, not opened",
                     tasks=tasks, allowed_hosts=["127.0.0.1"])
        self.refused("http://169.254.169.254/", "169.254.169.254", "link-local", tasks=tasks,
                     allowed_hosts=["169.254.169.254"])
        self.assertNothingQueued(tasks)
        self.queue("http://127.0.0.1:8080/", tasks, allowed_hosts=["127.0.0.1"])
        self.clock.advance(0)
        self.assertEqual(len(tasks.journal.records), 1)

    def test_deny_private(self):
        tasks = self.make_tasks(deny_private=True)
        self.refused("http://intranet.test/", "intranet.test", "a private address", tasks=tasks)
        self.refused("http://10.1.2.3/", "10.1.2.3", "a private address", tasks=tasks)
        # Listed, the private range needs the operator's opening too.
        self.refused("http://10.1.2.3/", "10.1.2.3", "a private address, not opened by the branch",
                     tasks=tasks, allowed_hosts=["10.0.0.0/8"])
        self.assertNothingQueued(tasks)
        tasks = self.make_tasks(deny_private=True, opened=["10.0.0.0/8"])
        d = self.queue("http://intranet.test/", tasks, allowed_hosts=["intranet.test", "10.0.0.0/8"])
        # The workers are told too: they judge every hop with the same policy.
        kwargs = self.published_kwargs(tasks)
        self.successResultOf(d)
        self.assertEqual((kwargs["deny_private"], kwargs["allowed_hosts"]), (True, ["intranet.test", "10.0.0.0/8"]))

    def test_the_default_task_carries_no_deny_private(self):
        d = self.queue("http://public.test/")
        self.assertNotIn("deny_private", self.published_kwargs())
        self.successResultOf(d)

    def test_a_name_the_branch_cannot_resolve_is_left_to_the_worker(self):
        self.queue("http://nowhere.test/")
        self.assertEqual(self.recorded(), 1)
        d = self.queue("http://slow.test/")
        self.clock.advance(self.tasks.url_check.timeout - 0.1)
        self.assertEqual(self.recorded(), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.recorded(), 2)
        self.assertNoResult(d)  # waiting for the broker, as any task

    def test_lookups_are_kept_a_few_seconds(self):
        self.queue("http://public.test/a")
        self.queue("http://public.test/b")
        self.refused("http://local.test/", "local.test")
        self.refused("http://local.test/", "local.test")
        self.assertEqual(self.resolver.asked, ["public.test", "local.test"])
        self.clock.advance(self.tasks.url_check.cache_seconds)
        self.queue("http://public.test/c")
        self.assertEqual(self.resolver.asked, ["public.test", "local.test", "public.test"])

    def test_a_url_the_parser_rejects_is_a_400(self):
        for url in ("http://[::1/", "http://[x]/", "http://h:99999/", "http://h:port/"):
            error = self.failureResultOf(self.queue(url), BadRequest).value
            self.assertEqual((error.status, error.field), (400, "url"), url)
        self.assertNothingQueued()
