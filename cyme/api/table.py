"""The API's routes as data: the one table that the Klein routes
(L{cyme.api.routes}) and the OpenAPI document (L{cyme.api.openapi}) are
both made from, so that the document cannot miss or misname a route.

Each L{Route} names its handler (a method of L{cyme.api.routes.BranchAPI}),
its answers and its parameters; L{Route.spellings} derives the aliases
every such route has: the original Cyme's singular C{/<app>/instance/...}
and the no-wait C{!} form of every write.
"""

import attrs

CREATE = ("PUT", "POST")
JSON = "application/json"
HTML = "text/html"
EVENT_STREAM = "text/event-stream"

#: The statuses every route may answer besides its own: a bad path or
#: parameter, no token or not the scope, a body over 1 MiB, a branch that
#: holds too many connections.
COMMON_ERRORS = (400, 401, 403, 413, 503)
#: ... and a route that names a record (404), or asks another branch (504).
RECORD_ERRORS = (404, 504)
#: The last segments of a create without a name: its C{!} goes after them.
COLLECTIONS = ("instances", "instance", "tokens")


@attrs.frozen
class Route:
    """One route: a path in werkzeug's form (no trailing slash), its methods,
    its handler and what the document says of it."""

    path: str
    methods: tuple
    handler: str
    summary: str
    #: The name of the success answer's schema (L{cyme.api.schemas}), or None.
    answer: str | None = None
    #: The success statuses: a create answers 201, or 200 if it changed a record.
    status: tuple = (200,)
    #: The name of the parameter set of its body and query (L{cyme.api.schemas}).
    params: str | None = None
    #: Query parameters besides the set: names in L{cyme.api.schemas.QUERY}.
    query: tuple = ()
    errors: tuple = RECORD_ERRORS
    #: A write with C{!} forms: answered with 202 without waiting for the
    #: worker or for the other branches.
    nowait: bool = False
    content: str = JSON
    #: Needs no token (L{cyme.api.auth.OPEN_ROUTES}).
    open: bool = False
    #: Asks every branch: a branch that did not answer is named in the
    #: answer's C{Cyme-Missing-Branches} header.
    partial: bool = False
    #: werkzeug's defaults: the handler's arguments its path leaves out.
    defaults: dict = attrs.field(factory=dict)
    #: The endpoint's name, when the handler serves several routes.
    name: str | None = None
    description: str = ""

    @property
    def endpoint(self):
        return self.name or self.handler

    def spellings(self):
        """
        C{(path, suffix, defaults)} of every spelling: the path, its
        singular alias, and the C{!} form of each (C{wait} False).
        """
        paths = [(self.path, "")]
        if self.path.startswith("/<app>/instances"):
            paths.append((self.path.replace("/instances", "/instance", 1), "_singular"))
        found = [(path, suffix, self.defaults) for path, suffix in paths]
        if self.nowait:
            found += [(nowait_path(path), suffix + "_nowait", {**self.defaults, "wait": False})
                      for path, suffix in paths]
        return found


def nowait_path(path):
    """
    The C{!} form of a write: C{!} stands before the name it writes
    (C{/<app>/queues/!/<name>}, C{/<app>/instances/<name>/queues/!/<queue>},
    as the original client sends them), or after the collection of a create
    without a name (C{/<app>/instances/!}).
    """
    segments = path.split("/")
    if segments[-1] in COLLECTIONS:
        return path + "/!"
    last = max(i for i, s in enumerate(segments) if s.startswith("<"))
    return "/".join(segments[:last] + ["!"] + segments[last:])


INSTANCE = "/<app>/instances/<name>"

ROUTES = [
    # The branch
    Route("/ping", ("GET",), "ping", "Liveness: pong", "Pong", errors=(), open=True),
    Route("/openapi.json", ("GET",), "document", "This document", "Document", errors=()),
    Route("/admin", ("GET",), "admin", "The admin page (HTML)", content=HTML, errors=(303,),
          description="A browser without a token is sent to the login form (303)."),
    Route("/health", ("GET",), "health", "Readiness: 200, or 503 naming each failing part",
          "Health", status=(200, 503), errors=(), open=True),
    Route("/metrics", ("GET",), "metrics", "Prometheus text: workers, restarts, queued "
          "URLs, bus, histograms", content="text/plain", errors=()),
    Route("/events", ("GET",), "events", "The cluster's events, as Server-Sent Events",
          content=EVENT_STREAM, errors=(),
          description="A stream that lasts while the client stays: ?app= and ?type= "
          "filter, ?last=N starts with the latest N, Last-Event-ID resumes."),
    Route("/drift", ("GET",), "drift", "Every instance of the cluster that differs from "
          "what was asked", "Instances", errors=(504,), partial=True),
    Route("/restarts/<restart_id>", ("GET",), "get_restart", "A rolling restart's progress",
          "Restart"),
    Route("/login", ("GET",), "login_form", "The login form (HTML)", content=HTML,
          errors=(), open=True),
    Route("/login", ("POST",), "login", "Exchange a token for the login cookie", "LoggedIn",
          status=(303,), params="login", errors=(400, 401), open=True,
          description="Sets the cyme_token cookie and sends the browser to /admin/ (303)."),
    # Tokens (the admin scope)
    Route("/tokens", ("GET",), "list_tokens", "Every token (never its secret)", "Tokens",
          errors=()),
    Route("/tokens", ("POST",), "create_token", "Make a token: its secret is in this "
          "answer only", "NewToken", status=(201,), params="token", errors=(409,),
          nowait=True, partial=True),
    Route("/tokens/<name>", ("DELETE",), "revoke_token", "Revoke a token everywhere", "Ok",
          nowait=True, partial=True),
    # Branches
    Route("/branches", ("GET",), "list_branches", "The ids of the live branches", "Names",
          errors=()),
    Route("/branches/<branch>", ("GET",), "get_branch", "A branch", "Branch"),
    # Apps
    Route("/", ("GET",), "list_apps", "The names of every app", "Names", errors=(504,),
          partial=True),
    Route("/<app>", ("GET",), "get_app", "An app", "App"),
    Route("/<app>", CREATE, "put_app", "Create or change an app", "App", status=(201, 200),
          params="app", errors=RECORD_ERRORS + (409,), nowait=True, partial=True),
    Route("/<app>/restart", ("POST",), "restart_app", "Restart the app's instances a few "
          "at a time (?parallel=N): 202 with the restart's id", "Restart", status=(202,),
          errors=RECORD_ERRORS + (409,)),
    Route("/<app>", ("DELETE",), "delete_app", "Delete an app, its instances and queues",
          "Ok", nowait=True, partial=True),
    # Instances
    Route("/<app>/instances", ("GET",), "list_instances", "The names of the app's "
          "instances, on every branch (as this branch knows them; ?fresh=1: asked of "
          "their branches)", "Names", partial=True, query=("fresh",)),
    Route("/<app>/instances", CREATE, "put_instance", "Create an anonymous instance "
          "(named by a UUID)", "Instance", status=(201,), params="instance",
          errors=RECORD_ERRORS + (409,), nowait=True, defaults={"name": None},
          name="add_anonymous_instance"),
    Route(INSTANCE, CREATE, "put_instance", "Create or change an instance", "Instance",
          status=(201, 200), params="instance", errors=RECORD_ERRORS + (409,), nowait=True,
          description="Answers once its worker answered its first ping (at most the "
          "branch's --ready-timeout); the ! form at once."),
    Route(INSTANCE, ("GET",), "get_instance", "An instance, with its worker's live state",
          "Instance"),
    Route(INSTANCE, ("DELETE",), "delete_instance", "Delete an instance: its worker is "
          "stopped", "Ok", nowait=True),
    Route("/instances/<name>", ("GET",), "get_instance_by_name", "An instance, by its "
          "name alone (names are unique)", "Instance"),
    Route("/instances/<name>", ("DELETE",), "delete_instance_by_name", "Delete an "
          "instance by its name alone", "Ok", nowait=True),
    Route(INSTANCE + "/restart", CREATE, "restart_instance", "Restart its worker now "
          "(clears quarantine)", "Instance", params="none", nowait=True),
    Route(INSTANCE + "/enable", CREATE, "enable_instance", "Start its worker again",
          "Instance", params="none", nowait=True),
    Route(INSTANCE + "/disable", CREATE, "disable_instance", "Stop its worker and keep it "
          "stopped", "Instance", params="none", nowait=True),
    Route(INSTANCE + "/stats", ("GET",), "instance_stats", "The worker's live statistics "
          "(Celery's stats)", "Stats", errors=RECORD_ERRORS + (409,)),
    Route(INSTANCE + "/autoscale", ("GET",), "get_autoscale", "Its autoscale bounds",
          "Autoscale"),
    Route(INSTANCE + "/autoscale", CREATE, "set_autoscale", "Set its autoscale bounds; "
          "without max and min, read them", "Autoscale", params="autoscale", nowait=True),
    # Consumers
    Route(INSTANCE + "/queues", ("GET",), "instance_queues", "The queues its worker "
          "consumes now (live)", "Names", errors=RECORD_ERRORS + (409,)),
    Route(INSTANCE + "/queues/<queue>", ("GET",), "get_consumer", "The declaration of a "
          "queue the instance consumes", "Queue"),
    Route(INSTANCE + "/queues/<queue>", CREATE, "add_consumer", "Consume a declared queue",
          "Ok", status=(201, 200), params="none", nowait=True),
    Route(INSTANCE + "/queues/<queue>", ("DELETE",), "cancel_consumer", "Stop consuming a "
          "queue", "Ok", nowait=True),
    # Queues
    Route("/<app>/queues", ("GET",), "list_queues", "The names of the app's queues",
          "Names", partial=True),
    Route("/<app>/queues/<name>", ("GET",), "get_queue", "A queue declaration", "Queue"),
    Route("/<app>/queues/<name>", CREATE, "put_queue", "Declare a queue", "Queue",
          status=(201, 200), params="queue", nowait=True, partial=True),
    Route("/<app>/queues/<name>", ("DELETE",), "delete_queue", "Delete a queue "
          "declaration: its consumers stop consuming it", "Ok", nowait=True, partial=True),
    # Tasks
    Route("/<app>/query/<task_id>/state", ("GET",), "task_state", "A task's state",
          "TaskState"),
    Route("/<app>/query/<task_id>/result", ("GET",), "task_result", "A task's state and "
          "result", "Task"),
    Route("/<app>/query/<task_id>/wait", ("GET",), "task_wait", "The task once it is "
          "done (200), or as it is after the timeout (202)", "Task", status=(200, 202),
          query=("timeout",)),
]

#: The queued-URL route, served by the guard before Klein (its URL is the
#: rest of the path, slashes included): documented, never routed by Klein.
QUEUED_URL = Route(
    "/<app>/queue/<queue>/<url>",
    ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"),
    "queue_task", "Queue an HTTP request as a task", "Accepted", status=(202,),
    params="task", errors=RECORD_ERRORS + (502,),
    description=(
        "The URL is the rest of the path, slashes included, sent as is "
        "(http://host/path?query): OpenAPI cannot say so of a path parameter, so "
        "this document gives it percent-encoded whole (http%3A%2F%2Fhost%2Fpath), "
        "which the branch takes too.  Any verb is queued and used by the worker: "
        "CONNECT as well, which OpenAPI has no operation for.  The query string is "
        "forwarded as the request's query, the body as its body (a form stays a "
        "form; anything else is sent raw with its Content-Type).  A HEAD gets the "
        "Location header alone."
    ),
)
