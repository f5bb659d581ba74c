"""Helpers for testing cyme (and code built on it) without a network.

L{APIClient} calls a branch's HTTP resource in memory through
C{treq.testing.StubTreq}; every call returns a L{Deferred} that has usually
fired already, so a C{SynchronousTestCase} takes its result with
C{successResultOf}.  Its requests come from 127.0.0.1 (trusted as
loopback) unless it is given another C{peer} address: a remote caller.
"""

import json

import attrs
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

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


def peer_address(peer):
    """The address of a peer written C{"203.0.113.7"}, C{"::1"} or C{"unix"}."""
    if peer == "unix":
        return UNIXAddress(None)
    return (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 31337)


def request_from(peer):
    """The daemon's request class, as if every connection came from C{peer}."""

    class PeerRequest(LimitedRequest):
        def getClientAddress(self):
            return peer_address(peer)

    return PeerRequest


class APIClient:
    """
    Send requests to a resource in memory.

    C{path} is the path with its query, e.g. C{"/foo/instances/?x=1"}; it is
    sent as written (C{%2F} and C{..} are not normalised away).  C{peer}
    is the caller's address (see L{peer_address}), C{headers} are sent with
    every request (C{{"Authorization": ["Bearer ..."]}}).
    """

    def __init__(self, resource, base="http://localhost", peer=None, headers=None):
        self.treq = StubTreq(resource)
        # The daemon's request class, so that a test sees what a client
        # sees (the body cap, the forms parsed by the API, not by Twisted).
        self.treq._agent._serverFactory.requestFactory = (
            LimitedRequest if peer is None else request_from(peer)
        )
        self.base = base
        self.headers = dict(headers or {})

    def request(self, method, path, **kwargs):
        headers = {**self.headers, **(kwargs.pop("headers", None) or {})}
        d = self.treq.request(method, self.base + path, headers=headers, **kwargs)
        d.addCallback(self._read)
        return d

    def _read(self, response):
        d = self.treq.content(response)
        d.addCallback(lambda body: APIResponse(response.code, response.headers, body))
        return d

    def flush(self):
        """Deliver anything the stub still holds (for slow resources)."""
        self.treq.flush()


def api_client(store=None, peer=None, headers=None, **collaborators):
    """
    A client of a fresh branch API over C{store} (a new L{MemoryStore} if
    none); returns C{(client, ops)}, C{ops} the L{LocalOperations} it
    serves, built with C{collaborators} (its keyword arguments).
    """
    ops = LocalOperations(store if store is not None else MemoryStore(), **collaborators)
    return APIClient(BranchAPI(ops, clock=Clock()).resource(), peer=peer, headers=headers), ops
