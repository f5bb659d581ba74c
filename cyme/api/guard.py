"""The API's root resource: what every request passes before a route sees it.

L{GuardResource} checks the body size and the path, asks the L{Gate}
(L{cyme.api.auth}) who the caller is and whether they may, keeps the
caller on the request, writes the audit line of every write, then hands
the request to Klein, or straight to the handler of a queued URL.
"""

from urllib.parse import unquote, unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cyme import logs
from cyme.api.auth import ANONYMOUS, SAFE_METHODS, ICaller, Unauthorized
from cyme.api.http import error_body, json_body
from cyme.errors import BadRequest, CymeError, MethodNotAllowed, PayloadTooLarge

VERBS = ["HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"]

log = Logger(observer=logs.observer)


def check_path(path):
    """
    Refuse a path whose segments could name something outside a name.

    Twisted decodes C{%2F} and C{%2e%2e} inside a segment before routing, so
    C{a%2Fb} would route as two segments and C{%2e%2e} as C{..}: both are
    refused here, before any route sees them.
    """
    segments = path.split(b"/")[1:]
    if len(segments) > 3 and segments[1] == b"queue":
        # /<app>/queue/<queue>/<url>: the URL is data, not names.
        segments = segments[:3]
    for raw in segments:
        segment = unquote_to_bytes(raw)
        try:
            text = segment.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path", "the path is not valid UTF-8") from None
        if text in (".", "..") or any(c in text for c in "/\\\0"):
            raise BadRequest("path", f"invalid path segment: {text!r}")


def audit_target(path):
    """
    What a write is about, from its path: C{(path to log, fields)}, the
    fields naming its app, instance, queue or token.  A queued URL's target
    is left out of the line (it may carry credentials of its own).
    """
    raw = path.split(b"/")
    if len(raw) > 4 and raw[1] and raw[2] == b"queue" and raw[3]:
        # The hot path: the queued URL is never named, so never decoded.
        raw = raw[:4]
    segments = [unquote(s.decode("utf-8", "replace")) for s in raw[1:]]
    segments = [s for s in segments if s]
    # The no-wait "!" of a write names nothing.
    named = [s for s in segments if s != "!"]
    fields = {}
    if named[:1] == ["tokens"]:
        fields["token"] = named[1] if len(named) > 1 else None
    elif named[:1] == ["instances"]:
        fields["instance"] = named[1] if len(named) > 1 else None
    elif named:
        fields["app"] = named[0]
        rest = named[1:]
        if rest[:1] in (["instances"], ["instance"]):
            fields["instance"] = rest[1] if len(rest) > 1 else None
        elif rest[:1] in (["queues"], ["queue"]) and len(rest) > 1:
            fields["queue"] = rest[1]
        if rest[:1] == ["queue"]:
            segments = segments[:3] + ["…"]
    return "/" + "/".join(segments) + "/", fields


def _browser_at_admin(request):
    accept = request.getHeader(b"accept") or b""
    return (request.method == b"GET" and request.path.rstrip(b"/") == b"/admin"
            and b"text/html" in accept)


def audit(request, caller):
    """Log the audit line of a write once it is answered: who, what, on what."""
    if request.method in SAFE_METHODS:
        return
    path, fields = audit_target(request.path)

    def write(_):
        log.info(
            "audit who={who} method={method} path={path} {target} status={status}",
            who=caller.who, method=request.method.decode("latin-1"), path=path,
            target=" ".join(f"{k}={v}" for k, v in fields.items() if v is not None),
            status=request.code, audit=True, **fields,
        )

    request.notifyFinish().addBoth(write)


class GuardResource(Resource):
    """
    The API's root: checks the body size, the path and the caller, then
    hands to Klein.

    Every check answers JSON like every route does.  Queueing a URL, the
    one route under load, is handed straight to its handler: measured
    against a Klein route (issue 8, bench/tasks_throughput.py, 14
    alternating rounds), 2,169 against 1,657 accepted/s (x1.31), and a p99
    at 1,000/s of 11.2 ms against 24.6 ms.
    """

    isLeaf = True

    def __init__(self, klein_resource, gate, queue_task=None):
        super().__init__()
        self._klein = klein_resource
        self._gate = gate
        self._queue_task = queue_task

    def render(self, request):
        caller = ANONYMOUS
        try:
            if getattr(request, "too_large", False):
                raise PayloadTooLarge("the request body is larger than 1 MiB")
            check_path(request.path)
            caller = self._gate.admit(request)
        except CymeError as e:
            audit(request, caller)
            if isinstance(e, Unauthorized) and _browser_at_admin(request):
                # A person at the admin page: to the login form.
                request.setHeader(b"Location", b"/login/")
                return json_body(request, 303, e.to_json())
            return error_body(request, e)
        request.setComponent(ICaller, caller)
        audit(request, caller)
        parts = request.path.split(b"/", 4)
        if self._queue_task is not None and len(parts) == 5 and parts[2] == b"queue":
            return self._render_queue(request, parts)
        return self._klein.render(request)

    def _render_queue(self, request, parts):
        method = request.method.decode("latin-1")
        if method not in VERBS:
            request.setHeader(b"Allow", ", ".join(VERBS).encode("ascii"))
            return error_body(
                request, MethodNotAllowed(f"{method} is not allowed here", allowed=VERBS)
            )
        # check_path made sure both are UTF-8 and plain names.
        app, queue = unquote(parts[1].decode("utf-8")), unquote(parts[3].decode("utf-8"))
        done = []
        request.notifyFinish().addBoth(done.append)
        d = defer.ensureDeferred(self._queue_task(request, app, queue))

        def failed(failure):
            if failure.check(CymeError):
                return error_body(request, failure.value)
            log.failure(
                "unexpected error on {method} {path}", failure,
                method=request.method, path=request.path,
            )
            return json_body(request, 500, {"error": "internal error"})

        def answer(body):
            if not done:
                request.write(body)
                request.finish()

        d.addErrback(failed).addCallback(answer)
        d.addErrback(lambda f: log.failure("cannot answer", f))
        return NOT_DONE_YET
