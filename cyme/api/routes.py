"""The HTTP API of a branch: the original cyme's routes and JSON shapes.

Routes only parse, call L{IOperations} and render JSON.  Which path and
method reach which handler is the route table's to say (L{cyme.api.table}),
from which the OpenAPI document is made too: every path works with and
without its trailing slash, the original Cyme's singular
``/<app>/instance/...`` spelling is an alias of ``/<app>/instances/...``,
and every write has a ``!`` form that answers 202 without waiting (the
handler's C{wait} is False).  Every request reaches them through
L{GuardResource} (L{cyme.api.guard}), which has admitted its caller
(L{cyme.api.auth}); C{/tokens/} and C{/login/} are this module's too.
"""

import json
import re
from urllib.parse import unquote

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from cyme import logs
from cyme.api import admin, login, openapi, prometheus
from cyme.api import events as event_stream
from cyme.api.auth import Gate, caller_of
from cyme.api.guard import GuardResource
from cyme.api.table import ROUTES
from cyme.api.http import error_body, fields, json_body, query_fields, request_params
from cyme.api.requestmetrics import RequestMetrics
from cyme.errors import BadRequest, CymeError, MethodNotAllowed, NotFound
from cyme.metrics import Metrics
from cyme.state.models import check_seconds
from cyme.waits import WaitCap


def created_status(created, wait=True):
    if not wait:
        return 202
    return 201 if created else 200


_klein = Klein()
# A path with "//" is no route: werkzeug would answer a redirect to the
# merged path, which Klein raises as an error.
_klein.url_map.merge_slashes = False


#: The longest wait for a task (C{?timeout=} of C{/wait}), and the default.
MAX_WAIT = 300.0
DEFAULT_WAIT = 30.0
#: The longest request a queued URL may make (its C{Cyme-Timeout} header).
MAX_TASK_TIMEOUT = 3600.0


def _ok(wait=True):
    return 200 if wait else 202


class BranchAPI:
    """The Klein application; holds the operations it serves."""

    app = _klein
    log = Logger(observer=logs.observer)

    def __init__(self, ops, gate=None, waits=None, *, clock, metrics=None,
                 max_wait=MAX_WAIT, max_stream=event_stream.MAX_STREAM):
        #: The L{IOperations} served: this branch alone, or routed across
        #: the cluster's branches.
        self.ops = ops
        #: Who may call (L{cyme.api.auth.Gate}): loopback trusted by default.
        self.gate = gate if gate is not None else Gate(ops)
        #: The branch's cap on open waits (L{cyme.waits.WaitCap}), shared
        #: with the waits other branches send it.
        self.waits = waits if waits is not None else WaitCap()
        #: Times the event streams' keep-alives.
        self.clock = clock
        #: The branch's histograms (L{cyme.metrics.Metrics}): its requests'
        #: go there, and C{/metrics} shows them all.
        self.histograms = metrics if metrics is not None else Metrics()
        #: The longest C{/wait} (and the default, when shorter than 30 s).
        self.max_wait = max_wait
        #: The longest an event stream lasts (C{--max-stream}).
        self.max_stream = max_stream
        self._document = json.dumps(openapi.document(max_wait=max_wait)).encode("utf-8")

    def resource(self):
        return GuardResource(self.app.resource(), self.gate, self.queue_task,
                             observe=RequestMetrics(self.histograms, self.app.url_map))

    # Errors: every one is JSON, and no traceback ever reaches a client.

    @app.handle_errors(CymeError)
    def cyme_error(self, request, failure):
        return error_body(request, failure.value)

    @app.handle_errors(RouteNotFound)
    def no_route(self, request, failure):
        return error_body(request, NotFound("route", request.path.decode("latin-1"),
                                            "no such route"))

    @app.handle_errors(RouteMethodNotAllowed)
    def bad_method(self, request, failure):
        allowed = failure.value.valid_methods or []
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("latin-1")
        return error_body(
            request,
            MethodNotAllowed(f"{method} is not allowed here", allowed=allowed),
        )

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        self.log.failure(
            "unexpected error on {method} {path}", failure,
            method=request.method, path=request.path,
        )
        return json_body(request, 500, {"error": "internal error"})

    # Branch

    def ping(self, request):
        return json_body(request, 200, {"ok": "pong"})

    def health(self, request):
        """Readiness: 200, or 503 naming each failing part; apps only for readers."""
        report = self.ops.health(apps="read" in caller_of(request).scopes)
        return json_body(request, 200 if report["ready"] else 503, report)

    def document(self, request):
        """The OpenAPI document (L{cyme.api.openapi}): made once, as it
        holds no record and no secret."""
        return json_body(request, 200, self._document, encoded=True)

    async def admin(self, request):
        """The admin page: branches, apps, every instance, the latest events, live."""
        page = await admin.render(self.ops, self.clock.seconds())
        admin.set_headers(request)
        return page

    def events(self, request):
        """The cluster's events as Server-Sent Events (L{cyme.api.events})."""
        return event_stream.serve(request, self.ops, self.clock, self.max_stream)

    async def drift(self, request):
        """Every instance of the cluster whose worker is not as it asks."""
        return self._listing(request, await self.ops.describe_instances(drift_only=True))

    def metrics(self, request):
        """Prometheus' text: the branch's figures now, and its histograms."""
        request.setHeader(b"Content-Type", prometheus.CONTENT_TYPE)
        return prometheus.render(self.ops.metrics(), self.histograms)

    def login_form(self, request):
        """The login form: a browser exchanges a token for a cookie."""
        return login.form(request)

    def login(self, request):
        return login.log_in(request, self.gate, request_params(request))

    # Tokens (admin)

    async def list_tokens(self, request):
        return json_body(request, 200, await self.ops.list_tokens())

    async def create_token(self, request, wait=True):
        token, missing = await self.ops.create_token(request_params(request), wait=wait)
        _mark_partial(request, missing)
        return json_body(request, 201 if wait else 202, token)

    async def revoke_token(self, request, name, wait=True):
        _mark_partial(request, await self.ops.revoke_token(name, wait=wait))
        return json_body(request, _ok(wait), {"ok": "ok"})

    # Branches

    async def list_branches(self, request):
        return json_body(request, 200, await self.ops.list_branches())

    async def get_branch(self, request, branch):
        return json_body(request, 200, await self.ops.get_branch(branch))

    # Apps

    async def list_apps(self, request):
        return self._listing(request, await self.ops.list_apps())

    async def get_app(self, request, app):
        return json_body(request, 200, await self.ops.get_app(app))

    async def put_app(self, request, app, wait=True):
        record, created, missing = await self.ops.put_app(
            app, request_params(request), wait=wait)
        _mark_partial(request, missing)
        return json_body(request, created_status(created, wait), record)

    async def delete_app(self, request, app, wait=True):
        _mark_partial(request, await self.ops.delete_app(app, wait=wait))
        return json_body(request, _ok(wait), {"ok": "ok"})

    async def restart_app(self, request, app):
        """A rolling restart of the app's instances: 202 with its id at once."""
        restart = await self.ops.restart_app(app, request_params(request))
        request.setHeader(b"Location", f"/restarts/{restart['id']}/".encode("utf-8"))
        return json_body(request, 202, restart)

    async def get_restart(self, request, restart_id):
        return json_body(request, 200, await self.ops.get_restart(restart_id))

    # Instances

    async def list_instances(self, request, app):
        fresh = query_fields(request).get("fresh") not in (None, "", "0")
        return self._listing(request, await self.ops.list_instances(app, fresh=fresh))

    # One handler for every create: PUT /<app>/instances/ makes an anonymous
    # instance (name None), /<app>/instances/<name>/ a named one.
    async def put_instance(self, request, app, name, wait=True):
        values = request_params(request)
        branch = values.pop("branch", None)
        instance, created = await self.ops.put_instance(
            app, name, values, wait=wait, branch=branch
        )
        return json_body(request, created_status(created, wait), instance)

    async def restart_instance(self, request, app, name, wait=True):
        return json_body(request, _ok(wait), await self.ops.restart(app, name, wait=wait))

    async def enable_instance(self, request, app, name, wait=True):
        return json_body(request, _ok(wait),
                         await self.ops.set_enabled(app, name, True, wait=wait))

    async def disable_instance(self, request, app, name, wait=True):
        return json_body(request, _ok(wait),
                         await self.ops.set_enabled(app, name, False, wait=wait))

    async def instance_stats(self, request, app, name):
        return json_body(request, 200, await self.ops.stats(app, name))

    async def get_instance(self, request, app, name):
        return json_body(request, 200, await self.ops.get_instance(app, name))

    # The original Cyme's walkthrough ends with DELETE /instances/<name>/: instance
    # names are unique, so the app may be left out.

    async def get_instance_by_name(self, request, name):
        app = await self.ops.app_of_instance(name)
        return json_body(request, 200, await self.ops.get_instance(app, name))

    async def delete_instance_by_name(self, request, name, wait=True):
        app = await self.ops.app_of_instance(name)
        await self.ops.delete_instance(app, name)
        return json_body(request, _ok(wait), {"ok": "ok"})

    async def delete_instance(self, request, app, name, wait=True):
        await self.ops.delete_instance(app, name)
        return json_body(request, _ok(wait), {"ok": "ok"})

    async def instance_queues(self, request, app, name):
        return json_body(request, 200, await self.ops.instance_queues(app, name))

    async def get_consumer(self, request, app, name, queue):
        """The original client lists an instance's consumers with this."""
        return json_body(request, 200, await self.ops.get_consumer(app, name, queue))

    async def add_consumer(self, request, app, name, queue, wait=True):
        request_params(request)  # a malformed body is an error here too
        created = await self.ops.add_consumer(app, name, queue)
        return json_body(request, created_status(created, wait), {"ok": "ok"})

    async def cancel_consumer(self, request, app, name, queue, wait=True):
        await self.ops.cancel_consumer(app, name, queue)
        return json_body(request, _ok(wait), {"ok": "ok"})

    async def get_autoscale(self, request, app, name):
        return json_body(request, 200, await self.ops.get_autoscale(app, name))

    async def set_autoscale(self, request, app, name, wait=True):
        return json_body(
            request, _ok(wait),
            await self.ops.set_autoscale(app, name, request_params(request)),
        )

    # Queues

    async def list_queues(self, request, app):
        return self._listing(request, await self.ops.list_queues(app))

    async def get_queue(self, request, app, name):
        return json_body(request, 200, await self.ops.get_queue(app, name))

    async def put_queue(self, request, app, name, wait=True):
        queue, created, missing = await self.ops.put_queue(
            app, name, request_params(request), wait=wait)
        _mark_partial(request, missing)
        return json_body(request, created_status(created, wait), queue)

    async def delete_queue(self, request, app, name, wait=True):
        _mark_partial(request, await self.ops.delete_queue(app, name, wait=wait))
        return json_body(request, _ok(wait), {"ok": "ok"})

    # Queued URLs

    async def queue_task(self, request, app, queue):
        """
        C{[verb] /<app>/queue/<queue>/<url>}: the hot path of the API, so
        the guard hands it here directly rather than through Klein's
        routing (see L{GuardResource}).
        """
        query = query_fields(request)
        body, content_type = task_body(request)
        timeout = request.getHeader(b"cyme-timeout")
        if timeout is not None:
            timeout = check_seconds(
                timeout.decode("latin-1"), "Cyme-Timeout", MAX_TASK_TIMEOUT
            )
        accepted = await self.ops.queue_task(
            app, queue, request.method.decode("ascii"), raw_target(request),
            query, body, content_type, timeout,
        )
        # The answer to a HEAD has no body: the Location names the task too.
        request.setHeader(
            b"Location", f"/{app}/query/{accepted['uuid']}/result/".encode("utf-8")
        )
        # A task's id, URL, queue and method: no record of cyme's (no
        # broker) to mask, so the caller need not be looked up again.
        return json_body(request, 202, accepted, records=False)

    async def task_state(self, request, app, task_id):
        task = await self.ops.task(app, _task_id(task_id))
        return json_body(request, 200, {"uuid": task["uuid"], "state": task["state"]})

    async def task_result(self, request, app, task_id):
        return json_body(request, 200, await self.ops.task(app, _task_id(task_id)),
                         records=False)

    async def task_wait(self, request, app, task_id):
        timeout = request_params(request).get("timeout")
        timeout = min(DEFAULT_WAIT, self.max_wait) if timeout in (None, "") else (
            check_seconds(timeout, "timeout", self.max_wait))
        task_id = _task_id(task_id)
        with self.waits.hold(app, task_id):
            task, ready = await self.ops.wait_task(app, task_id, timeout)
        # Not done within the timeout: no error, the task is still running
        # (or unknown); 202 says so, as its state does.
        return json_body(request, 200 if ready else 202, task, records=False)

    def _listing(self, request, result):
        names, missing = result
        _mark_partial(request, missing)
        return json_body(request, 200, names)


def _register(klein, api):
    """Route every spelling of every route of the table to C{api}'s handler."""
    for entry in ROUTES:
        handler = getattr(api, entry.handler)
        for path, suffix, defaults in entry.spellings():
            klein.route(path, methods=list(entry.methods), strict_slashes=False,
                        endpoint=entry.endpoint + suffix, defaults=defaults or None)(handler)


_register(_klein, BranchAPI)


def _mark_partial(request, missing):
    """Name the branches that did not answer: the answer is partial."""
    if missing:
        request.setHeader(b"Cyme-Missing-Branches", ",".join(missing).encode("utf-8"))


_TASK_ID = re.compile(r"[A-Za-z0-9-]{1,64}\Z")


def _task_id(value):
    if not _TASK_ID.match(value):
        raise BadRequest("uuid", "a task id is 1-64 letters, digits and dashes")
    return value


def raw_target(request):
    """
    The URL to queue: the path after C{/<app>/queue/<queue>/}, as sent.

    A URL sent percent-encoded whole (C{http%3A%2F%2Fm%2Fx}) is decoded.
    """
    target = request.path.split(b"/", 4)[4].decode("utf-8", "replace")
    if "://" not in target and target.lower().startswith(("http%3a", "https%3a")):
        target = unquote(target)
    return target


def task_body(request):
    """The body to forward: form fields as a dict, anything else raw."""
    raw = request.content.read() if request.content is not None else b""
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if not raw:
        return None, None
    if ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("body", "a form body must be URL-encoded") from None
        return fields(text, "body"), None
    return raw, ctype or "application/octet-stream"
