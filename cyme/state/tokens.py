"""API tokens: the record a branch keeps of each, and the store's part in them.

A token is a random secret shown once, when it is made; the store keeps
only its SHA-256 (the secret has 256 bits of entropy, so a fast hash is
enough: there is nothing to guess) with its name, scopes and expiry.  A
presented secret is hashed and compared in constant time with every
record's hash.

Tokens are replicated like apps: each is a record under the key
C{token/<name>} with a version, and a revoked one leaves a tombstone, so a
revocation reaches every branch and wins over an older copy.
L{TokenRecords} is the store's part: L{cyme.state.store.MemoryStore}
inherits it.
"""

import hashlib
import hmac
import re
import secrets

import attrs
from zope.interface import Interface

from cyme.errors import BadRequest, NotFound
from cyme.state.models import check_name

SCOPES = ("read", "write", "admin")
#: Every token's secret starts so (a leaked one is easy to grep for).
PREFIX = "cyme_"

_DURATION = re.compile(r"\A(\d{1,9})([smhdw]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def token_key(name):
    return f"token/{name}"


def hash_secret(secret):
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret():
    """A fresh secret: the prefix and 32 random bytes, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def check_scopes(value, field="scope"):
    """C{"read,write"} (or a list of scope names) as a sorted tuple."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not value:
        raise BadRequest(field, f"{field} must name one or more of {', '.join(SCOPES)}")
    scopes = set()
    for scope in value:
        scope = scope.strip() if isinstance(scope, str) else scope
        if scope not in SCOPES:
            raise BadRequest(
                field, f"unknown scope {scope!r}: scopes are {', '.join(SCOPES)}"
            )
        scopes.add(scope)
    return tuple(s for s in SCOPES if s in scopes)


def check_duration(value, field="expires"):
    """C{30d}, C{12h}, C{90m}, C{3600s} or C{3600} as seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise BadRequest(
            field, f"{field} must be a duration such as 3600, 90m, 12h, 30d or 4w"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def _hash(instance, attribute, value):
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise BadRequest("hash", "a token hash is 64 hex digits")


@attrs.frozen
class Token:
    """A token as stored: its secret is never kept, only its hash."""

    name: str = attrs.field(validator=lambda i, a, v: check_name(v, "name"))
    scopes: tuple = attrs.field(converter=check_scopes)
    hash: str = attrs.field(validator=_hash, repr=False)
    created: float = 0.0
    #: When it stops working (seconds since the epoch), or None: never.
    expires: float | None = None

    def expired(self, now):
        return self.expires is not None and now >= self.expires

    def matches(self, secret):
        return hmac.compare_digest(self.hash, hash_secret(secret))

    def to_json(self):
        return {"name": self.name, "scopes": list(self.scopes), "hash": self.hash,
                "created": self.created, "expires": self.expires}

    def public_json(self):
        """What the API shows of it: everything but the hash."""
        data = self.to_json()
        del data["hash"]
        return data

    @classmethod
    def from_json(cls, data):
        return cls(name=data["name"], scopes=data["scopes"], hash=data["hash"],
                   created=float(data.get("created", 0.0)),
                   expires=None if data.get("expires") is None else float(data["expires"]))


class ITokenStore(Interface):
    """The tokens part of L{cyme.state.store.IStore}."""

    def tokens():
        """Every L{Token} (revoked ones are gone), sorted by name."""

    def get_token(name):
        """The L{Token} called C{name}; raises L{NotFound}."""

    def put_token(token, version):
        """Create or replace C{token}; returns True if it was created."""

    def delete_token(name, version):
        """Revoke: delete C{name}, leaving a tombstone at C{version}."""

    def find_token(secret):
        """The L{Token} whose hash is C{secret}'s, or None (expired ones too)."""


class TokenRecords:
    """
    The store's tokens, over its state's C{tokens} (name -> L{Token}) and
    C{versions}: mixed into L{cyme.state.store.MemoryStore}, which provides
    C{_state} and C{_change}.
    """

    def tokens(self):
        return [self._state.tokens[n] for n in sorted(self._state.tokens)]

    def get_token(self, name):
        try:
            return self._state.tokens[name]
        except KeyError:
            raise NotFound("token", name) from None

    def put_token(self, token, version):
        from cyme.state.store import StoreChange

        created = token.name not in self._state.tokens
        self._change(
            StoreChange("put_token", token_key(token.name)),
            tokens={**self._state.tokens, token.name: token},
            versions={**self._state.versions, token_key(token.name): tuple(version)},
        )
        return created

    def delete_token(self, name, version):
        from cyme.state.store import StoreChange

        token = self.get_token(name)
        tokens = dict(self._state.tokens)
        del tokens[name]
        self._change(
            StoreChange("delete_token", token_key(name)), tokens=tokens,
            versions={**self._state.versions, token_key(name): tuple(version)},
        )
        return token

    def find_token(self, secret):
        if not isinstance(secret, str) or not secret.startswith(PREFIX):
            return None
        found = None
        # Every hash is compared, whichever matches: the time taken does
        # not tell which record (or how much of a hash) matched.
        for token in self._state.tokens.values():
            if token.matches(secret):
                found = token
        return found


def merged(state, name, token, version):
    """C{state} with the L{Token} C{name} at C{version} (None: its tombstone)."""
    tokens = dict(state.tokens)
    if token is not None:
        tokens[name] = token
    else:
        tokens.pop(name, None)
    return attrs.evolve(
        state, tokens=tokens, versions={**state.versions, token_key(name): version}
    )
