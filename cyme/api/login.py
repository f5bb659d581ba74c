"""The login form: a browser exchanges a token for a session cookie.

A browser cannot add an C{Authorization} header to a page it navigates
to, so C{POST /login/} with a valid token opens a session of this branch
(L{cyme.api.sessions}) and sets its random id as a cookie, never the
token itself: a cookie goes to every port of its host, so any other
server on this machine would receive it.  The cookie is C{HttpOnly} (no
script reads it), C{SameSite=Strict} (no other site's page sends it),
C{Secure} over TLS, and ends with its session.  A write authenticated by
it must also carry the branch's own C{Origin} (L{cyme.api.auth.Gate}).
"""

from cyme.api.http import json_body
from cyme.api.sessions import set_cookie

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


def log_in(request, gate, values):
    """Open a session for a valid C{token} and set its cookie; 303 to the
    admin page.  C{gate}: the branch's L{cyme.api.auth.Gate}."""
    session_id, expires, token = gate.log_in(values.get("token"))
    # The token goes back in no cookie, no log line and no body.
    set_cookie(request, session_id, expires)
    request.setHeader(b"Location", b"/admin/")
    return json_body(request, 303, {"ok": "ok", "name": token.name})
