"""The API's root resource: what every request passes before a route sees it.

L{GuardResource} checks the body size and the path, asks the L{Gate}
(L{cyme.api.auth}) who the caller is and whether they may, keeps the
caller on the request, writes the audit line of every write, then hands
the request to Klein, or straight to the handler of a queued URL.
"""

from urllib.parse import unquote, unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cyme import logs
from cyme.api.auth import (
    ANONYMOUS, SAFE_METHODS, ICaller, Unauthorized, request_headers, required_scope,
)
from cyme.api.http import error_body, json_body
from cyme.errors import BadRequest, CymeError, MethodNotAllowed, NotFound, PayloadTooLarge

VERBS = ["HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"]

log = Logger(observer=logs.observer)


def check_path(path):
    """
    The names in C{path}, as the router will see them, and the queued URL
    if it carries one: C{(names, url)}, C{names} decoded, C{url} the raw
    bytes after C{/<app>/queue/<queue>/} (or None).

    Twisted routes on the path after its first byte, each segment
    percent-decoded: C{POST Xtokens/}, C{/%74okens/} and C{//tokens/} all
    reach C{/tokens/}.  So the scope is decided on these names, and a
    target that does not start with C{/} (a 400), an empty name (C{//}, a
    404 like any path that names nothing), C{%2F} inside a name (it would
    route as two) and C{%2e%2e} (C{..}) are refused here, before any route
    sees them.  A queued URL is data, not names, and may hold anything.
    """
    if not path.startswith(b"/"):
        raise BadRequest("path", "the request target must be a path starting with /")
    raw = path[1:].split(b"/", 3)
    if len(raw) == 4 and (raw[1] == b"queue" or b"%" in raw[1]
                          and unquote_to_bytes(raw[1]) == b"queue"):
        raw, url = raw[:3], raw[3]
    else:
        raw, url = path[1:].split(b"/"), None
        if not raw[-1]:
            raw.pop()  # the trailing slash
    return [_name(segment, path) for segment in raw], url


def _name(raw, path):
    segment = unquote_to_bytes(raw) if b"%" in raw else raw
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path", "the path is not valid UTF-8") from None
    if not text:
        raise NotFound("route", path.decode("latin-1"), "no such route: an empty name (//)")
    if text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise BadRequest("path", f"invalid path segment: {text!r}")
    return text


def audit_target(path):
    """
    What a write is about, from its path as the router sees it (decoded,
    without empty names): C{(path to log, fields)}, the fields naming its
    app, instance, queue or token.  A queued URL's target is left out of
    the line (it may carry credentials of its own), and never decoded.
    """
    raw = path[1:].split(b"/")
    segments = []
    for i, segment in enumerate(raw):
        if segment:
            segments.append(unquote(segment.decode("utf-8", "replace")))
            if len(segments) == 3 and segments[1] == "queue" and i + 1 < len(raw):
                segments.append("\u2026")
                break
    # The no-wait "!" of a write names nothing.
    named = [s for s in segments if s != "!"]
    fields = {}
    if named[:1] == ["tokens"]:
        fields["token"] = named[1] if len(named) > 1 else None
    elif named[:1] == ["instances"]:
        fields["instance"] = named[1] if len(named) > 1 else None
    elif named and named != ["login"]:  # a login is about no record
        fields["app"] = named[0]
        rest = named[1:]
        if rest[:1] in (["instances"], ["instance"]):
            fields["instance"] = rest[1] if len(rest) > 1 else None
        elif rest[:1] in (["queues"], ["queue"]) and len(rest) > 1:
            fields["queue"] = rest[1]
    return "/" + "/".join(segments) + "/", fields


def _browser_at_admin(request):
    accept = request.getHeader(b"accept") or b""
    return (request.method == b"GET" and request.path.rstrip(b"/") == b"/admin"
            and b"text/html" in accept)


def audit(request, caller):
    """
    The audit line of a write: who, what, on what.  Returns the function
    that logs it, to call once the request is answered (with anything).
    """

    def write(_=None):
        if not logs.enabled(LogLevel.info):
            return
        path, fields = audit_target(request.path)
        log.info(
            "audit who={who} method={method} path={path} {target} status={status}",
            who=caller.who, method=request.method.decode("latin-1"), path=path,
            target=" ".join(f"{k}={v}" for k, v in fields.items() if v is not None),
            status=request.code, audit=True, **fields,
        )

    return write


def _each(result, ended):
    for end in ended:
        end(result)


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

    def __init__(self, klein_resource, gate, queue_task=None, observe=None):
        super().__init__()
        self._klein = klein_resource
        self._gate = gate
        self._queue_task = queue_task
        #: Told of every request as it arrives, refused ones too
        #: (L{cyme.api.requestmetrics.RequestMetrics.started}).
        self._observe = observe

    def render(self, request):
        # What is done once the request is answered (or its client left):
        # one notifyFinish for them all, a Deferred fewer on the hot path.
        ended = []
        request.notifyFinish().addBoth(_each, ended)
        if self._observe is not None:
            ended.append(self._observe.started(request))
        caller = ANONYMOUS
        # A write changes something: any method but GET, HEAD and OPTIONS,
        # and queueing a URL whatever its verb.
        write = request.method not in SAFE_METHODS
        try:
            names, url = check_path(request.path)
            write = write or url is not None
            scope = required_scope(request.method, names, queued=url is not None)
            headers = request_headers(request)
            caller = self._gate.identify(request, scope, headers)
            self._gate.authorize(request, caller, scope, write, headers)
            # After the gate: a stranger learns nothing of the limits, and
            # the audit line names who sent too much.
            if getattr(request, "too_large", False):
                raise PayloadTooLarge("the request body is larger than 1 MiB")
        except CymeError as e:
            if write:
                ended.append(audit(request, caller))
            if isinstance(e, Unauthorized) and _browser_at_admin(request):
                # A person at the admin page: to the login form.
                request.setHeader(b"Location", b"/login/")
                return json_body(request, 303, e.to_json())
            return error_body(request, e)
        request.setComponent(ICaller, caller)
        if write:
            ended.append(audit(request, caller))
        if url is not None and self._queue_task is not None:
            return self._render_queue(request, names, ended)
        return self._klein.render(request)

    def _render_queue(self, request, names, ended):
        method = request.method.decode("latin-1")
        if method not in VERBS:
            request.setHeader(b"Allow", ", ".join(VERBS).encode("ascii"))
            return error_body(
                request, MethodNotAllowed(f"{method} is not allowed here", allowed=VERBS)
            )
        # check_path decoded both and made sure they are plain names.
        app, queue = names[0], names[2]
        done = []
        ended.append(done.append)
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
