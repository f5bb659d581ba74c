"""The branch's side of the fence (L{cyme.fence}): a queued URL is judged
before it is queued.

A URL the fence refuses on its face (not http(s), unparseable, an address
literal in a refused range, a name the app's C{allowed_hosts} does not
match) is a 400 at once; a name is judged by the addresses the branch's
resolver finds for it, so that C{http://localhost:15672/} is refused
before a task exists.  The worker judges every hop again, redirects
included, with the addresses it connects to (L{cyme.tasks.webhook}): the
branch's check is the early answer, never the only one.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from cyme import fence, logs
from cyme.errors import BadRequest
from cyme.tasks import webhook

MAX_URL = 4096


class URLRefused(BadRequest):
    """The fence refuses the URL's host: the answer names it and the rule."""

    def __init__(self, error):
        super().__init__("url", str(error))
        self.detail.update(host=error.host, rule=error.rule)


def check_url(url, allowed_hosts, deny_private=False, opened=()):
    """
    Refuse anything but an http(s) URL the fence allows on its face (an
    address literal judged, a name that C{allowed_hosts} may allow): 400.
    Return the URL's parts.
    """
    try:
        return webhook.check_url(url, allowed_hosts, max_length=MAX_URL,
                                 deny_private=deny_private, opened=opened)
    except webhook.HostRefused as e:
        raise URLRefused(e) from None
    except webhook.WebhookError as e:
        raise BadRequest("url", str(e)) from None


@implementer(IResolutionReceiver)
class _Lookup:
    """Collects the addresses of one name resolution."""

    def __init__(self):
        self.addresses = []
        self.done = defer.Deferred()

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        self.addresses.append(address.host)

    def resolutionComplete(self):
        if not self.done.called:  # not timed out meanwhile
            self.done.callback(self.addresses)


class URLCheck:
    """
    The fence at queue time: C{resolver} (an C{IHostnameResolver}; None:
    names are left to the workers) looks names up, C{deny_private} refuses
    private ranges too (C{--webhook-deny-private}), C{opened} is where the
    operator lets an app's C{allowed_hosts} open the refused ranges
    (C{--webhook-allow}).  The branch gives its workers the same policy
    when it starts them (L{cyme.supervision.workers.worker_command}).
    """

    log = Logger(observer=logs.observer)

    #: Seconds a lookup's answer serves the checks of later URLs.  Only the
    #: branch's early refusal relies on it: the worker looks the name up
    #: again when it connects, and judges what it connects to.
    cache_seconds = 5.0
    cache_size = 1024

    def __init__(self, clock, resolver=None, deny_private=False, timeout=3.0, opened=()):
        self.clock = clock
        self.resolver = resolver
        self.deny_private = deny_private
        self.opened = tuple(opened)
        self.timeout = timeout
        self._resolved = {}  # (host, port) -> (until, addresses)

    async def check(self, url, allowed_hosts):
        """
        Refuse (400, naming the host and the rule) a URL that the fence
        refuses: on its face, or by an address its name resolves to here.
        A name this branch cannot resolve (in time) is left to the worker,
        whose resolver may know it.
        """
        parts = check_url(url, allowed_hosts, self.deny_private, self.opened)
        host, port = parts.hostname, webhook.port_of(parts)
        policy = webhook.fence_for(tuple(allowed_hosts), self.deny_private, self.opened)
        if (self.resolver is None or fence.literal_address(host) is not None
                or not policy.needs_addresses(host, port)):
            return  # judged already, or by the worker alone
        try:
            addresses = await self._lookup(host, port)
        except defer.TimeoutError:
            self.log.info("queued URL: {host} not resolved in time; the worker judges it",
                          host=host)
            return
        if addresses:
            try:
                webhook.judge(url, parts, port, policy, addresses)
            except webhook.HostRefused as e:
                raise URLRefused(e) from None

    def _lookup(self, host, port):
        now = self.clock.seconds()
        cached = self._resolved.get((host, port))
        if cached is not None and cached[0] > now:
            return defer.succeed(cached[1])
        lookup = _Lookup()
        self.resolver.resolveHostName(lookup, host, port)

        def keep(addresses):
            if len(self._resolved) >= self.cache_size:
                self._resolved.clear()
            self._resolved[(host, port)] = (now + self.cache_seconds, addresses)
            return addresses

        return lookup.done.addTimeout(self.timeout, self.clock).addCallback(keep)
