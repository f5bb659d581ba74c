"""The login form: a browser exchanges a token for a cookie.

A browser cannot add an C{Authorization} header to a page it navigates
to, so C{POST /login/} with a valid token sets it as the C{cyme_token}
cookie: C{HttpOnly} (no script reads it), C{SameSite=Strict} (no other
site's page sends it) and C{Secure} over TLS, expiring with the token
(C{Expires}: the token's own date, so no clock is read here).  A write authenticated by that cookie must also carry the branch's
own C{Origin} (L{cyme.api.auth.Gate}).
"""

from twisted.web.http import datetimeToString

from cyme.api.auth import COOKIE, Unauthorized
from cyme.api.http import json_body

_FORM = """<!doctype html><html><head><meta charset=utf-8><link rel="icon" href="data:,">
<title>cyme · log in</title>
</head><body><h1>cyme</h1><form method=post action="/login/">
<label>Token <input type=password name=token autocomplete=off required></label>
<button>Log in</button></form></body></html>
"""


def form(request):
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return _FORM.encode("utf-8")


def cookie_header(secret, secure, expires=None):
    """The C{Set-Cookie} value that carries C{secret} (until C{expires},
    seconds since the epoch, if given)."""
    parts = [f"{COOKIE.decode('ascii')}={secret}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if expires is not None:
        parts.append("Expires=" + datetimeToString(int(expires)).decode("ascii"))
    return "; ".join(parts).encode("ascii")


def log_in(request, ops, values):
    """Set the cookie of a valid C{token}; 303 to the admin page."""
    secret = values.get("token")
    token = ops.authenticate(secret) if isinstance(secret, str) else None
    if token is None:
        raise Unauthorized("invalid, expired or revoked token")
    # The secret goes back only as the cookie: in no log line and no body.
    request.setHeader(
        b"Set-Cookie", cookie_header(secret, request.isSecure(), token.expires)
    )
    request.setHeader(b"Location", b"/admin/")
    return json_body(request, 303, {"ok": "ok", "name": token.name})
