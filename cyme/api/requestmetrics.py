"""How long each HTTP request took, by route template, method and status.

L{RequestMetrics} is told of every request as it arrives (by
L{cyme.api.guard.GuardResource}, before any check) and observes it into
the branch's histogram (L{cyme.metrics.Metrics}) once it is answered.  The
route is the template the request matched, never its path: a Klein route's
werkzeug rule (C{/<app>/instances/<name>}), C{/<app>/queue/<queue>/<url>}
for a queued URL, and C{other} for a path no route has, so that no caller
can add label values at will.
"""

import time
from urllib.parse import unquote_to_bytes

from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

#: The route of the queued URLs (answered without Klein's routing).
QUEUE_ROUTE = "/<app>/queue/<queue>/<url>"
#: The route of whatever matches no route, and the method of an unknown verb.
OTHER = "other"
METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])


def is_queue_path(path):
    """Whether C{path} (bytes) is a queued URL's: C{/<app>/queue/<queue>/<url>}."""
    parts = path.split(b"/", 4)
    return len(parts) == 5 and parts[2] == b"queue"


class RequestMetrics:
    """
    Observes each request into C{metrics}; C{url_map} is the Klein
    application's werkzeug map, C{timer} a monotonic clock in seconds.
    """

    def __init__(self, metrics, url_map, timer=time.perf_counter):
        self._metrics = metrics
        self._url_map = url_map
        self._timer = timer

    def __call__(self, request):
        """A request arrived: time it until it is answered (or its client leaves)."""
        request.notifyFinish().addBoth(self.started(request))

    def started(self, request):
        """
        A request arrived: the function to call with the outcome of its
        C{notifyFinish} once it is answered (the guard calls it with its
        own: one Deferred a request for everything done then).
        """
        began = self._timer()

        def finished(_):
            method = request.method.decode("latin-1")
            if method not in METHODS:
                method = OTHER
            self._metrics.http_request(
                self.route(request), method, request.code, max(0.0, self._timer() - began)
            )

        return finished

    def route(self, request):
        """The template of the route C{request} matched, or L{OTHER}."""
        if is_queue_path(request.path):
            return QUEUE_ROUTE
        # The path as Klein matched it: its segments decoded.
        segments = [unquote_to_bytes(s) for s in request.path[1:].split(b"/")]
        adapter = self._url_map.bind(
            "localhost", path_info="/" + b"/".join(segments).decode("utf-8", "replace"),
            default_method=request.method.decode("latin-1"),
        )
        try:
            rule, _ = adapter.match(return_rule=True)
        except (HTTPException, RoutingException):
            return OTHER
        return rule.rule
