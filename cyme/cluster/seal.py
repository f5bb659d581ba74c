"""Sealing bus envelopes: only the holders of the cluster key speak on the bus.

L{ISeal} turns an envelope into the bytes that cross the broker and back.
L{FernetSeal} authenticates and encrypts each one with the cluster key
(Fernet, from C{cryptography}: AES-CBC with an HMAC-SHA256 over it), with
the sender, a unique id and the time inside the sealed part: an envelope
that does not open with the key (another cluster's, forged, altered) is
refused, and so is one dated more than C{window} seconds (60) from this
branch's clock and every repeat of an id seen within that window.  A
previous key still opens envelopes while a rotation is under way; the
first key seals.  L{OpenSeal} is the bus without a key
(C{--insecure-open-bus}): plain JSON, as anyone may read or write it.

On the wire a sealed envelope is C{{"v": <protocol>, "sealed": <token>}};
an open one is the envelope itself.  Either way the envelope inside says
its protocol version (C{"v"}), which the bus checks.
"""

import heapq
import json
import math
import uuid

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from zope.interface import Attribute, Interface, implementer

from cyme.errors import BadRequest
from cyme.state.models import check_name

#: The largest body a branch reads: a replica of thousands of apps fits.
MAX_BODY = 16 * 1024 * 1024

#: Seconds an envelope's date may be off this branch's clock, either way.
WINDOW = 60.0


class Unopened(Exception):
    """
    A body that is not an envelope for this branch.

    C{reason} is one of C{undecodable}, C{unsealed}, C{unopened},
    C{expired}, C{replayed}, C{invalid} (here), C{misdirected} and C{stale}
    (L{cyme.cluster.address}); C{fields} say more for the log
    (never the contents: an envelope may carry broker passwords).
    """

    def __init__(self, reason, **fields):
        super().__init__(reason)
        self.reason = reason
        self.fields = fields


class ISeal(Interface):
    """How envelopes cross the bus."""

    sealed = Attribute("True if envelopes are sealed with a cluster key.")
    source = Attribute("Where the key came from (a file name), or None.")

    def close(envelope):
        """The bytes that carry C{envelope} (a JSON-able dict)."""

    def open(body):
        """The envelope C{body} carries (a dict); raises L{Unopened}."""


def _json(body):
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise Unopened("undecodable")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
        raise Unopened("undecodable") from None
    if not isinstance(data, dict):
        raise Unopened("undecodable")
    return data


def _encode(data):
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _named(sender):
    """C{sender} if it may name a branch, else None: a log line quotes no odd text."""
    try:
        return check_name(sender, "from")
    except BadRequest:
        return None


def _claimed(data):
    """What an envelope that cannot be trusted says of itself, for a log line."""
    version = data.get("v")
    return {"sender": _named(data.get("from")),
            "protocol": version if type(version) is int else None}


@implementer(ISeal)
class OpenSeal:
    """The bus with no key: envelopes as plain JSON, trusted as they come."""

    sealed = False
    source = None

    def close(self, envelope):
        return _encode(envelope)

    def open(self, body):
        data = _json(body)
        if "sealed" in data:
            raise Unopened("unopened", why="sealed, and this branch has no cluster key")
        return data


class _Seen:
    """The ids of the envelopes opened, each kept until it would expire anyway."""

    def __init__(self):
        self._ids = set()
        self._expiries = []  # heap of (expiry, id)

    def add(self, envelope_id, expiry, now):
        """Remember C{envelope_id}; False if it was seen before."""
        while self._expiries and self._expiries[0][0] < now:
            self._ids.discard(heapq.heappop(self._expiries)[1])
        if envelope_id in self._ids:
            return False
        self._ids.add(envelope_id)
        heapq.heappush(self._expiries, (expiry, envelope_id))
        return True

    def __len__(self):
        return len(self._ids)


@implementer(ISeal)
class FernetSeal:
    """
    Envelopes sealed with C{keys} (L{cyme.cluster.keys.ClusterKey}s; the
    first seals, every one opens), dated by C{clock}.
    """

    sealed = True

    def __init__(self, keys, clock, window=WINDOW):
        if not keys:
            raise ValueError("a sealed bus needs a cluster key")
        self.source = keys[0].path
        self._fernet = MultiFernet([Fernet(k.secret) for k in keys])
        self.clock = clock
        self.window = window
        self._seen = _Seen()

    def close(self, envelope):
        now = self.clock.seconds()
        inner = {**envelope, "id": uuid.uuid4().hex, "at": now}
        token = self._fernet.encrypt_at_time(_encode(inner), int(now))
        return _encode({"v": envelope.get("v"), "sealed": token.decode("ascii")})

    def open(self, body):
        data = _json(body)
        token = data.get("sealed")
        if token is None:
            raise Unopened("unsealed", **_claimed(data))
        if not isinstance(token, str):
            raise Unopened("unopened", why="not a token")
        try:
            inner = json.loads(self._fernet.decrypt(token.encode("ascii", "replace")))
        except (InvalidToken, ValueError, RecursionError):
            raise Unopened("unopened", why="not sealed with this cluster's key") from None
        if not isinstance(inner, dict):
            raise Unopened("invalid", why="not an envelope")
        sender, envelope_id, at = inner.get("from"), inner.get("id"), inner.get("at")
        if not (isinstance(sender, str) and isinstance(envelope_id, str)
                and len(envelope_id) <= 64 and isinstance(at, (int, float))
                and not isinstance(at, bool) and math.isfinite(at)):
            raise Unopened("invalid", why="no sender, id or date")
        now = self.clock.seconds()
        if abs(now - at) > self.window:
            raise Unopened("expired", sender=_named(sender), skew=at - now, window=self.window)
        if not self._seen.add(envelope_id, at + self.window, now):
            raise Unopened("replayed", sender=_named(sender))
        return inner


def bus_seal(keys, clock):
    """The seal of a bus with C{keys} (L{FernetSeal}), or of an open one (none)."""
    return FernetSeal(keys, clock) if keys else OpenSeal()
