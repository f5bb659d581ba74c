"""The HTTP API of a branch: the original cyme's routes and JSON shapes.

Routes only parse, call the L{Controller} and render JSON.  Every path
works with and without its trailing slash, and the seed's singular
``/<app>/instance/...`` spelling is an alias of ``/<app>/instances/...``.
"""

from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from cyme import logs
from cyme.errors import BadRequest, CymeError, MethodNotAllowed, NotFound, PayloadTooLarge
from cyme.http import error_body, json_body, request_params

CREATE = ["PUT", "POST"]


def names(records):
    return [r.name for r in records]


def created_status(created):
    return 201 if created else 200


_klein = Klein()


def route(path, methods):
    """Route C{path}, and its singular C{/instance/} alias, for C{methods}."""

    def register(f):
        f = _klein.route(
            path, methods=methods, strict_slashes=False, endpoint=f.__name__
        )(f)
        if "/instances/" in path:
            f = _klein.route(
                path.replace("/instances/", "/instance/"),
                methods=methods,
                strict_slashes=False,
                endpoint=f.__name__ + "_singular",
            )(f)
        return f

    return register


class BranchAPI:
    """The Klein application; holds the controller it serves."""

    app = _klein
    log = Logger(observer=logs.observer)

    def __init__(self, controller):
        self.controller = controller

    def resource(self):
        return GuardResource(self.app.resource())

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

    @route("/ping", ["GET"])
    def ping(self, request):
        return json_body(request, 200, {"ok": "pong"})

    @route("/metrics", ["GET"])
    def metrics(self, request):
        """Prometheus text: supervisor ticks, AMQP messages, workers by state."""
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        supervisor = self.controller.supervisor
        if supervisor is None:
            return b""
        m = supervisor.metrics()
        lines = [
            "# HELP cyme_supervisor_ticks_total Supervisor ticks since start.",
            "# TYPE cyme_supervisor_ticks_total counter",
            f"cyme_supervisor_ticks_total {m['ticks']}",
            "# HELP cyme_amqp_messages_published_total Remote-control messages sent.",
            "# TYPE cyme_amqp_messages_published_total counter",
            f"cyme_amqp_messages_published_total {m['messages']}",
            "# HELP cyme_worker_restarts_total Worker restarts since start.",
            "# TYPE cyme_worker_restarts_total counter",
            f"cyme_worker_restarts_total {m['restarts']}",
            "# HELP cyme_workers Worker instances of this branch by state.",
            "# TYPE cyme_workers gauge",
        ]
        lines += [f'cyme_workers{{state="{k}"}} {v}' for k, v in sorted(m["states"].items())]
        return ("\n".join(lines) + "\n").encode("ascii")

    # Apps

    @route("/", ["GET"])
    async def list_apps(self, request):
        return json_body(request, 200, names(await self.controller.apps()))

    @route("/<app>", ["GET"])
    async def get_app(self, request, app):
        return json_body(request, 200, (await self.controller.app(app)).to_json())

    @route("/<app>", CREATE)
    async def put_app(self, request, app):
        record, created = await self.controller.put_app(app, request_params(request))
        return json_body(request, created_status(created), record.to_json())

    @route("/<app>", ["DELETE"])
    async def delete_app(self, request, app):
        await self.controller.delete_app(app)
        return json_body(request, 200, {"ok": "ok"})

    # Instances

    @route("/<app>/instances", ["GET"])
    async def list_instances(self, request, app):
        return json_body(request, 200, names(await self.controller.instances(app)))

    @route("/<app>/instances", CREATE)
    async def add_anonymous_instance(self, request, app):
        return await self._put_instance(request, app, None)

    @route("/<app>/instances/<name>", CREATE)
    async def put_instance(self, request, app, name):
        if name == "!":  # the seed's no-wait form, anonymous
            return await self._put_instance(request, app, None, wait=False)
        return await self._put_instance(request, app, name)

    @route("/<app>/instances/!/<name>", CREATE)
    async def put_instance_nowait(self, request, app, name):
        return await self._put_instance(request, app, name, wait=False)

    async def _put_instance(self, request, app, name, wait=True):
        instance, created = await self.controller.put_instance(
            app, name, request_params(request), wait=wait
        )
        status = created_status(created) if wait else 202
        return json_body(request, status, self.controller.describe(instance))

    @route("/<app>/instances/<name>/restart", CREATE)
    async def restart_instance(self, request, app, name):
        instance = await self.controller.restart(app, name)
        return json_body(request, 200, self.controller.describe(instance))

    @route("/<app>/instances/<name>/enable", CREATE)
    async def enable_instance(self, request, app, name):
        instance = await self.controller.set_enabled(app, name, True)
        return json_body(request, 200, self.controller.describe(instance))

    @route("/<app>/instances/<name>/disable", CREATE)
    async def disable_instance(self, request, app, name):
        instance = await self.controller.set_enabled(app, name, False)
        return json_body(request, 200, self.controller.describe(instance))

    @route("/<app>/instances/<name>/stats", ["GET"])
    async def instance_stats(self, request, app, name):
        return json_body(request, 200, await self.controller.stats(app, name))

    @route("/<app>/instances/<name>", ["GET"])
    async def get_instance(self, request, app, name):
        instance = await self.controller.instance(app, name)
        return json_body(request, 200, self.controller.describe(instance))

    @route("/<app>/instances/<name>", ["DELETE"])
    async def delete_instance(self, request, app, name):
        await self.controller.delete_instance(app, name)
        return json_body(request, 200, {"ok": "ok"})

    @route("/<app>/instances/<name>/queues", ["GET"])
    async def instance_queues(self, request, app, name):
        if self.controller.supervisor is None:
            instance = await self.controller.instance(app, name)
            return json_body(request, 200, list(instance.queues))
        return json_body(request, 200, await self.controller.live_queues(app, name))

    @route("/<app>/instances/<name>/queues/<queue>", CREATE)
    async def add_consumer(self, request, app, name, queue):
        request_params(request)  # a malformed body is an error here too
        created = await self.controller.add_consumer(app, name, queue)
        return json_body(request, created_status(created), {"ok": "ok"})

    @route("/<app>/instances/<name>/queues/<queue>", ["DELETE"])
    async def cancel_consumer(self, request, app, name, queue):
        await self.controller.cancel_consumer(app, name, queue)
        return json_body(request, 200, {"ok": "ok"})

    @route("/<app>/instances/<name>/autoscale", ["GET"])
    async def get_autoscale(self, request, app, name):
        instance = await self.controller.instance(app, name)
        return json_body(request, 200, _autoscale_json(instance))

    @route("/<app>/instances/<name>/autoscale", CREATE)
    async def set_autoscale(self, request, app, name):
        instance = await self.controller.set_autoscale(
            app, name, request_params(request)
        )
        return json_body(request, 200, _autoscale_json(instance))

    # Queues

    @route("/<app>/queues", ["GET"])
    async def list_queues(self, request, app):
        return json_body(request, 200, names(await self.controller.queues(app)))

    @route("/<app>/queues/<name>", ["GET"])
    async def get_queue(self, request, app, name):
        queue = await self.controller.queue(app, name)
        return json_body(request, 200, queue.to_json())

    @route("/<app>/queues/<name>", CREATE)
    async def put_queue(self, request, app, name):
        queue, created = await self.controller.put_queue(
            app, name, request_params(request)
        )
        return json_body(request, created_status(created), queue.to_json())

    @route("/<app>/queues/<name>", ["DELETE"])
    async def delete_queue(self, request, app, name):
        await self.controller.delete_queue(app, name)
        return json_body(request, 200, {"ok": "ok"})



def _autoscale_json(instance):
    return {"max": instance.max_concurrency, "min": instance.min_concurrency}


def check_path(path):
    """
    Refuse a path whose segments could name something outside a name.

    Twisted decodes C{%2F} and C{%2e%2e} inside a segment before routing, so
    C{a%2Fb} would route as two segments and C{%2e%2e} as C{..}: both are
    refused here, before any route sees them.
    """
    for raw in path.split(b"/")[1:]:
        segment = unquote_to_bytes(raw)
        try:
            text = segment.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path", "the path is not valid UTF-8") from None
        if text in (".", "..") or any(c in text for c in "/\\\0"):
            raise BadRequest("path", f"invalid path segment: {text!r}")


class GuardResource(Resource):
    """
    The API's root: checks the path and body size, then hands to Klein.

    Both checks answer JSON like every route does.
    """

    isLeaf = True

    def __init__(self, klein_resource):
        super().__init__()
        self._klein = klein_resource

    def render(self, request):
        try:
            if getattr(request, "too_large", False):
                raise PayloadTooLarge("the request body is larger than 1 MiB")
            check_path(request.path)
        except CymeError as e:
            return error_body(request, e)
        return self._klein.render(request)
