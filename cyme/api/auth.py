"""Who may call the API, and what each caller may see.

L{Gate} decides for every request, before any route runs, from the path's
names as the router sees them (decoded: L{cyme.api.guard.check_path}):

- A request from a loopback address, or on a C{unix:} endpoint, is trusted
  with every scope (like RabbitMQ's C{guest}), unless the branch runs with
  C{--no-trust-loopback}; one that carries C{X-Forwarded-For},
  C{Forwarded} (or C{X-Forwarded-Host}, C{X-Real-IP}, C{Via}) never is: a
  reverse proxy on this machine would otherwise make every caller behind
  it an admin.
- Every other request needs C{Authorization: Bearer <token>} (or the
  session cookie the login form sets): none is a 401, a token without the
  scope the route needs a 403.  A session cookie that is no longer valid
  is ignored (the request is judged as if it had none) and cleared; the
  open routes (L{OPEN_ROUTES}, exactly those paths and methods) never read
  it.
- Scopes: C{read} for GET and HEAD; C{write} for every other method, and
  for queueing a URL whatever its verb; C{admin} for C{/tokens/}.
- Against browsers on this machine: a write (a state-changing method, or
  a queued URL) whose C{Origin} is not the branch's own is a 403 (and a
  write authenticated by cookie must carry an C{Origin}); so is a write by
  a caller a browser could be acting for (trusted as loopback, or by
  cookie) that the browser says comes from another site
  (C{Sec-Fetch-Site}: an C{<img>} sends no C{Origin}); a loopback-trusted
  request whose C{Host} is not a loopback name or address, the machine's
  host name, nor the host of the branch's C{--url}, is a 403 (DNS
  rebinding: a page from elsewhere whose name now resolves to 127.0.0.1).

The caller is kept on the request (L{ICaller}) for the routes and for
L{masked}: broker passwords are shown only to callers with C{admin}.
"""

import functools
import ipaddress
import time
from urllib.parse import urlsplit

import attrs
from twisted.internet.address import UNIXAddress
from twisted.web.http_headers import Headers
from zope.interface import Interface

from cyme.api.sessions import TOKEN_COOKIE, Sessions, clear_cookie, cookie_name
from cyme.errors import CymeError

SCOPES = ("read", "write", "admin")
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
#: Headers a reverse proxy adds: a request with any of them came through
#: one, from anywhere, even when its connection comes from loopback.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip", b"via")
#: Routes anyone may call, by their one name, with the methods they serve:
#: the liveness and readiness probes and the login form.  Only these
#: exact paths are open, not what lies under them: an app kept from an
#: older state file may be called C{login}, and its routes are not open.
OPEN_ROUTES = {
    "ping": (b"GET", b"HEAD"),
    "health": (b"GET", b"HEAD"),
    "login": (b"GET", b"HEAD", b"POST"),
}
#: What C{Sec-Fetch-Site} says of a request a page of another site made:
#: C{same-site} is another port or subdomain of the host (another server
#: of this machine, for a branch on localhost).
OTHER_SITES = (b"cross-site", b"same-site")


class Unauthorized(CymeError):
    status = 401


class Forbidden(CymeError):
    status = 403


class ICaller(Interface):
    """The L{Caller} of a request (a component of the request)."""


@attrs.frozen
class Caller:
    #: C{loopback}, C{unix}, C{token:<name>}, or C{anonymous}.
    who: str
    scopes: frozenset = frozenset()
    #: Authenticated by the login form's cookie.
    cookie: bool = False


ANONYMOUS = Caller("anonymous")
TRUSTED = frozenset(SCOPES)
#: The callers trusted as local, made once: every queued URL sent from
#: this machine is one of them.
LOOPBACK = Caller("loopback", TRUSTED)
UNIX = Caller("unix", TRUSTED)


def caller_of(request):
    """The L{Caller} the gate admitted for C{request}, else L{ANONYMOUS}."""
    return request.getComponent(ICaller) or ANONYMOUS


def masked(request, data):
    """
    C{data} as C{request}'s caller may see it: the C{password} of every
    broker (an object under a C{broker} key, at any depth, so lists and
    answers relayed from other branches are covered) is None unless the
    caller has the C{admin} scope.  Other fields named C{password} are
    not cyme's secrets and are left alone.
    """
    if "admin" in caller_of(request).scopes:
        return data
    return _mask(data)


def _mask(value):
    if isinstance(value, dict):
        return {k: _broker(v) if k == "broker" else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _broker(value):
    if isinstance(value, dict) and "password" in value:
        return _mask({**value, "password": None})
    return _mask(value)


def required_scope(method, names, queued=False):
    """
    The scope a request needs, or None for an open route: C{names} are
    the path's names as the router sees them (decoded), C{queued} whether
    it queues a URL.
    """
    if len(names) == 1 and method in OPEN_ROUTES.get(names[0], ()):
        return None
    if names[:1] == ["tokens"]:
        return "admin"
    if queued:
        return "write"  # queueing a URL, whatever its verb
    return "read" if method in (b"GET", b"HEAD") else "write"


@functools.lru_cache(maxsize=1024)
def _ip(host):
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=1024)
def _is_loopback(host):
    """Whether C{host} (an address, or a name: no) is a loopback address."""
    ip = _ip(host)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=1024)
def _names_own_host(names, url, host):
    """Whether the C{Host} header value C{host} names a branch known by
    C{names} and C{url}: asked of every loopback request, with few values."""
    name = host_name(host)
    return name in _own_hosts(names, url) or _is_loopback(name)


@functools.lru_cache(maxsize=16)
def _own_hosts(names, url):
    hosts = {"localhost", *(n.lower() for n in names)}
    if url:
        hosts.add(host_name(urlsplit(url).netloc))
    return frozenset(hosts)


def host_name(value):
    """The host of a C{Host} header value (or a URL's netloc), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _origin(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _stored_name(name):
    # The name Twisted keeps a header under (its canonical capitals).
    return next(Headers({name: [b""]}).getAllRawHeaders())[0]


#: What the gate reads of the headers, by the names they are kept under:
#: the name it reads each as, or C{proxied} for a proxy's.
_READ = {
    **{_stored_name(name): "proxied" for name in PROXY_HEADERS},
    **{_stored_name(name.encode("ascii")): name
       for name in ("authorization", "host", "origin", "sec-fetch-site")},
}


def request_headers(request):
    """
    The headers the gate reads, in one pass over the request's (a
    handful, rather than a look-up of each of nine names): lower-case
    name to its last value as text, as C{getHeader} gives it; and
    C{proxied} if any header a reverse proxy adds is there.
    """
    found = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        read = _READ.get(name)
        if read is not None:  # (a proxy's header counts even without a value)
            found[read] = values[-1].decode("latin-1") if values else ""
    return found


@attrs.frozen
class Gate:
    """
    Admits or refuses each request (see the module docstring); C{ops}
    checks tokens (L{cyme.operations.interfaces.IOperations.authenticate}).
    """

    ops: object
    trust_loopback: bool = True
    #: The branch's own URL (C{--url}): its host and origin are its own.
    url: str | None = None
    #: Other names of this machine a local caller may use (its host
    #: name, which Debian resolves to 127.0.1.1): no rebinding attacker
    #: controls them.
    names: frozenset = frozenset()
    #: The clock of the login sessions (seconds since the epoch).
    now: object = attrs.field(default=time.time, kw_only=True)
    #: The login sessions of this branch (L{cyme.api.sessions}).
    sessions: Sessions = attrs.field(
        default=attrs.Factory(lambda self: Sessions(self.now), takes_self=True), kw_only=True
    )

    def local_peer(self, request):
        """Whether C{request} comes from this machine (loopback or unix)."""
        peer = request.getClientAddress()
        if isinstance(peer, UNIXAddress):
            return True
        return _is_loopback(getattr(peer, "host", "") or "")

    def identify(self, request, scope, headers=None):
        """
        The request's L{Caller}, for a route that needs C{scope} (None: an
        open one); raises L{Unauthorized} for a bad C{Authorization}.
        C{headers}: its L{request_headers}, when the caller read them.
        """
        if headers is None:
            headers = request_headers(request)
        authorization = headers.get("authorization")
        if authorization is not None:
            kind, _, secret = authorization.strip().partition(" ")
            if kind.lower() != "bearer" or not secret.strip():
                raise Unauthorized("the Authorization header must be: Bearer <token>")
            return self._token_caller(secret.strip())
        # An open route never reads the cookie: one no longer valid cannot
        # keep a browser from the login form.
        if scope is not None and request.received_cookies:
            caller = self._session_caller(request)
            if caller is not None:
                return caller
        if self.trust_loopback and self.local_peer(request) and "proxied" not in headers:
            if isinstance(request.getClientAddress(), UNIXAddress):
                return UNIX
            if scope is not None or self._own_host(headers):
                # (A route that needs a scope refuses a Host not its own.)
                return LOOPBACK
            # A page of another site that rebound its name to 127.0.0.1:
            # an open route answers it as a stranger.
        return ANONYMOUS

    def _token_caller(self, secret):
        token = self.ops.authenticate(secret)
        if token is None:
            raise Unauthorized("invalid, expired or revoked token")
        return Caller(f"token:{token.name}", frozenset(token.scopes))

    def _session_caller(self, request):
        """The caller of the request's session cookie, or None: a cookie
        that is no longer valid is ignored, and the answer clears it."""
        if request.getCookie(TOKEN_COOKIE) is not None:
            clear_cookie(request, TOKEN_COOKIE)
        name = cookie_name(request)
        session_id = request.getCookie(name)
        if session_id is None:
            return None
        session_id = session_id.decode("latin-1")
        secret = self.sessions.secret(session_id)
        token = None if secret is None else self.ops.authenticate(secret)
        if token is None:
            self.sessions.close(session_id)
            clear_cookie(request, name)
            return None
        return Caller(f"token:{token.name}", frozenset(token.scopes), cookie=True)

    def log_in(self, secret):
        """
        A session for the token C{secret}: C{(session id, when it ends,
        token)}; raises L{Unauthorized} if the token is not valid.
        """
        token = self.ops.authenticate(secret) if isinstance(secret, str) else None
        if token is None:
            raise Unauthorized("invalid, expired or revoked token")
        session_id, expires = self.sessions.open(secret, token)
        return session_id, expires, token

    def authorize(self, request, caller, scope, write, headers=None):
        """
        Refuse the request of C{caller} (L{identify}) to a route that needs
        C{scope}: L{Unauthorized} or L{Forbidden}.  C{write}: it changes
        something (the browser checks apply).  C{headers}: its
        L{request_headers}, when the caller read them.
        """
        if headers is None:
            headers = request_headers(request)
        if caller.who == "loopback" and scope is not None:
            self._check_host(headers)
        if write:
            self._check_origin(request, caller, headers)
        if scope is not None and scope not in caller.scopes:
            if caller is ANONYMOUS:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="cyme"')
                raise Unauthorized(
                    "authentication required: send Authorization: Bearer <token> "
                    "(or log in at /login/)"
                )
            raise Forbidden(f"this token has no {scope} scope", scope=scope)

    def own_hosts(self):
        return _own_hosts(self.names, self.url)

    def _own_host(self, headers):
        """Whether the request's C{Host} names this branch (or is absent)."""
        host = headers.get("host")
        return host is None or _names_own_host(self.names, self.url, host)

    def _check_host(self, headers):
        if self._own_host(headers):
            return
        name = host_name(headers["host"])
        raise Forbidden(
            f"Host {name!r} is not this branch's: a loopback request must name "
            "localhost, a loopback address or the branch's --url host",
            host=name,
        )

    def own_origins(self, request, headers=None):
        scheme = "https" if request.isSecure() else "http"
        origins = set()
        host = (headers if headers is not None else request_headers(request)).get("host")
        if host:
            origins.add(f"{scheme}://{host.strip()}".lower())
        if self.url:
            origins.add(_origin(self.url))
        return origins

    def _check_origin(self, request, caller, headers):
        origin = headers.get("origin")
        if origin is None:
            if caller.cookie:
                raise Forbidden("a write authenticated by cookie must carry an Origin")
        elif origin.strip().lower() not in self.own_origins(request, headers):
            raise Forbidden(
                f"Origin {origin!r} is not this branch's: cross-site writes are refused",
                origin=origin,
            )
        if caller.cookie or caller.who in ("loopback", "unix"):
            # A browser acting for its user (who is trusted here, or has
            # the cookie): an <img> or a link from another site sends no
            # Origin, but every current browser says where it comes from.
            site = headers.get("sec-fetch-site", "").encode("latin-1").strip().lower()
            if site in OTHER_SITES:
                raise Forbidden(
                    f"Sec-Fetch-Site: {site.decode('latin-1')}: a page of another site "
                    "may not change anything here",
                    fetch_site=site.decode("latin-1"),
                )
