"""Helpers of the integration tests of the operator's tools (L{cyme.client}
and the ``cyme`` command): real branches on the real RabbitMQ, driven the way
an operator drives them.

Not a test module (trial loads only C{test_*}):

  - L{ToolsTestCase}: an L{IntegrationTestCase} whose branches live in a
    virtual host of the run (C{cyme-tools-it-<pid>}), with a cluster of two
    (L{ToolsTestCase.start_pair}), the synchronous client run in a thread
    (L{ToolsTestCase.thread}: the reactor keeps reading the branches'
    output meanwhile), the ``cyme`` console script run as a process
    (L{ToolsTestCase.cyme}), and an HTTP target for queued URLs
    (L{ToolsTestCase.start_target}).
"""

import os

from twisted.internet import reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web import resource, server

from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN, free_port

CYME = os.path.join(BIN, "cyme")


class Target(resource.Resource):
    """
    The target of queued URLs: records each request, answers C{200} with
    C{"<METHOD> <path> <body>"} as text.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        body = request.content.read()
        self.requests.append((request.method.decode(), request.uri.decode(), body))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"%s %s %s" % (request.method, request.path, body)


class ToolsTestCase(IntegrationTestCase):
    timeout = 180
    http_timeout = 30
    get_timeout = 10
    vhost_prefix = "cyme-tools-it"

    async def start_pair(self):
        """Branches a and b, one cluster, each listing both; their operator
        opens loopback (C{--webhook-allow 127.0.0.1}), where L{start_target}
        listens, to the apps' C{allowed_hosts}."""
        nodes = [await self.spawn_branch(i, "--webhook-allow", "127.0.0.1") for i in ("a", "b")]
        for node in nodes:
            await self.wait_ping(node.process, node.port)
        for node in nodes:
            await self.poll_get(node, "/branches/",
                                lambda code, body: (code, body) == (200, ["a", "b"]),
                                15, f"GET /branches/ on {node.id} lists a and b")
        return nodes

    def thread(self, f, *args, **kwargs):
        """Run the blocking C{f} in a thread: a Deferred of its result."""
        return threads.deferToThread(f, *args, **kwargs)

    async def cyme(self, *args, url=None, env=None):
        """C{(exit status, stdout, stderr)} of the C{cyme} command, on the branch C{url}."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CYME_")}
        if url is not None:
            environ["CYME_URL"] = url
        environ.update(env or {})
        out, err, code = await getProcessOutputAndValue(CYME, list(args), env=environ,
                                                        path=self.cwd)
        return code, out.decode("utf-8"), err.decode("utf-8")

    def start_target(self):
        """The HTTP target of queued URLs, on 127.0.0.1: (its L{Target}, its base URL)."""
        target = Target()
        port = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return target, f"http://127.0.0.1:{port.getHost().port}"

    def closed_url(self):
        """A URL on 127.0.0.1 where nothing listens."""
        return f"http://127.0.0.1:{free_port()}/nothing"
