"""Login sessions: the random ids a browser's cookie carries instead of a token.

A browser sends a cookie to every port of the host that set it, so any
other server on the branch's machine would receive it: the login form
(L{cyme.api.login}) exchanges a token for a session id made here, which
only this branch knows, in memory.  At most L{MAX_SESSIONS} are kept
(L{PER_TOKEN} per token; the oldest go first), each ending after
L{LIFETIME} or when its token expires, whichever comes first; the gate
(L{cyme.api.auth.Gate}) checks the token again at every use, so a session
ends as soon as its token is revoked.  A restart of the branch ends them
all: log in again.

The cookie is named for the branch's port (C{cyme_session_8000}): one
host's cookies are shared by its ports, and two branches of one machine
would otherwise overwrite (and clear) each other's.
"""

import secrets
import time

import attrs
from twisted.web.http import datetimeToString

#: The most sessions a branch keeps, and per token: memory stays bounded
#: however many logins come, and a token's holder can push out only its
#: own sessions until they are many.
MAX_SESSIONS = 1000
PER_TOKEN = 20
#: The longest a session lasts (a working day), shorter if its token
#: expires sooner.
LIFETIME = 12 * 3600.0
COOKIE = b"cyme_session"
#: The cookie of cyme before sessions, which held the token itself: an
#: answer clears it where the gate sees it.
TOKEN_COOKIE = b"cyme_token"


def cookie_name(request):
    """The name of the session cookie of the branch C{request} came to."""
    port = getattr(request.getHost(), "port", None)
    return COOKIE if port is None else b"%s_%d" % (COOKIE, port)


def _cookie(name, value, secure, expires):
    parts = [b"%s=%s" % (name, value), b"Path=/", b"HttpOnly", b"SameSite=Strict"]
    if secure:
        parts.append(b"Secure")
    parts.append(b"Expires=" + datetimeToString(int(expires)))
    return b"; ".join(parts)


def set_cookie(request, session_id, expires):
    """Give the browser its session: C{HttpOnly} (no script reads it),
    C{SameSite=Strict} (no other site's page sends it), C{Secure} over TLS,
    until C{expires} (seconds since the epoch)."""
    value = _cookie(cookie_name(request), session_id.encode("ascii"), request.isSecure(),
                    expires)
    request.responseHeaders.addRawHeader(b"Set-Cookie", value)


def clear_cookie(request, name):
    """Have the browser drop its cookie C{name}."""
    request.responseHeaders.addRawHeader(
        b"Set-Cookie", _cookie(name, b"", request.isSecure(), 0) + b"; Max-Age=0"
    )


@attrs.frozen
class _Session:
    #: The token it was opened with, to check at every use.
    secret: str = attrs.field(repr=False)
    name: str
    expires: float


class Sessions:
    """This branch's login sessions, by id (see the module docstring)."""

    def __init__(self, now=time.time, limit=MAX_SESSIONS, per_token=PER_TOKEN,
                 lifetime=LIFETIME):
        self._now = now
        self._limit = limit
        self._per_token = per_token
        self._lifetime = lifetime
        #: id -> _Session, oldest first.
        self._sessions = {}

    def __len__(self):
        return len(self._sessions)

    def open(self, secret, token):
        """
        A new session for C{token} (a L{cyme.state.tokens.Token}, valid),
        whose secret is C{secret}: C{(session id, when it ends)}.
        """
        now = self._now()
        expires = now + self._lifetime
        if token.expires is not None:
            expires = min(expires, token.expires)
        for sid, session in list(self._sessions.items()):
            if session.expires <= now:
                del self._sessions[sid]
        own = [sid for sid, s in self._sessions.items() if s.name == token.name]
        for sid in own[:max(0, len(own) - self._per_token + 1)]:
            del self._sessions[sid]
        while len(self._sessions) >= self._limit:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = _Session(secret, token.name, expires)
        return sid, expires

    def secret(self, session_id):
        """The token secret of session C{session_id}, or None if it has
        none (unknown, or ended)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self._now():
            del self._sessions[session_id]
            return None
        return session.secret

    def close(self, session_id):
        """End session C{session_id} (its token is no longer valid)."""
        self._sessions.pop(session_id, None)
