"""Helpers for testing cyme (and code built on it) without a network.

L{APIClient} calls a branch's HTTP resource in memory through
C{treq.testing.StubTreq}; every call returns a L{Deferred} that has usually
fired already, so a C{SynchronousTestCase} takes its result with
C{successResultOf}.
"""

import json

import attrs
from treq.testing import StubTreq

from cyme.api.http import LimitedRequest
from cyme.api.routes import BranchAPI
from cyme.operations.local import LocalOperations
from cyme.state.store import MemoryStore


@attrs.frozen
class APIResponse:
    """What a client saw: status code, headers and the whole body."""

    code: int
    headers: object  # twisted.web.http_headers.Headers
    body: bytes

    def header(self, name):
        """The first value of header C{name} as text, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self):
        return json.loads(self.body)


class APIClient:
    """
    Send requests to a resource in memory.

    C{path} is the path with its query, e.g. C{"/foo/instances/?x=1"}; it is
    sent as written (C{%2F} and C{..} are not normalised away).
    """

    def __init__(self, resource, base="http://branch.invalid"):
        self.treq = StubTreq(resource)
        # The daemon's request class, so that a test sees what a client
        # sees (the body cap, the forms parsed by the API, not by Twisted).
        self.treq._agent._serverFactory.requestFactory = LimitedRequest
        self.base = base

    def request(self, method, path, **kwargs):
        d = self.treq.request(method, self.base + path, **kwargs)
        d.addCallback(self._read)
        return d

    def _read(self, response):
        d = self.treq.content(response)
        d.addCallback(lambda body: APIResponse(response.code, response.headers, body))
        return d

    def flush(self):
        """Deliver anything the stub still holds (for slow resources)."""
        self.treq.flush()


def api_client(store=None, **collaborators):
    """
    A client of a fresh branch API over C{store} (a new L{MemoryStore} if
    none); returns C{(client, ops)}, C{ops} the L{LocalOperations} it
    serves, built with C{collaborators} (its keyword arguments).
    """
    ops = LocalOperations(store if store is not None else MemoryStore(), **collaborators)
    return APIClient(BranchAPI(ops).resource()), ops
