"""The API's OpenAPI 3.1 document, served at C{/openapi.json}.

Made from the route table (L{cyme.api.table}: every route, its aliases
and C{!} forms) and the schemas made from the models
(L{cyme.api.schemas}), so that a route or a field cannot be added without
being in it.
"""

import re

from cyme import __version__
from cyme.api import schemas
from cyme.api.table import COMMON_ERRORS, EVENT_STREAM, JSON, QUEUED_URL, ROUTES

#: Paths written without the trailing slash every other path has (either
#: spelling works for every route).
SLASHLESS = ("/metrics", "/openapi.json")

_VARIABLE = re.compile(r"<([a-z_]+)>")

#: The path parameters' schemas, by name.
PATH_PARAMETERS = {
    # One operation for both spellings of the instance routes.
    "instances": {"type": "string", "enum": ["instances", "instance"],
                  "description": "instances, or the original Cyme's singular instance"},
    "task_id": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"},
    # Percent-encoded whole: a path parameter has no "/" (the branch takes
    # the URL raw too, which OpenAPI cannot describe).
    "url": {"type": "string", "examples": ["http%3A%2F%2Fexample.com%2Fimport%3Fuser%3D1"],
            "pattern": "^https?%3A%2F%2F[A-Za-z0-9.-]{1,40}(%3A[0-9]{1,5})?"
                       "(%2F[A-Za-z0-9._~-]{0,20}){0,3}$"},
}

STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted: not waited for (or not done yet)",
    303: "See other",
    400: "Bad input: `field` names the parameter; nothing was changed",
    401: "No token, or an invalid, expired or revoked one",
    403: "The token lacks the scope, or a cross-site write",
    404: "No such record (`kind` and `name` say which)",
    409: "A conflict: a name taken, a limit reached",
    413: "A body over 1 MiB", 502: "The broker refused the task",
    503: "Unavailable: too many connections or waits, no supervisor, a broker "
         "out of reach", 504: "A worker or another branch did not answer in time",
}

DESCRIPTION = """\
The HTTP API of a cyme branch: every branch of a cluster answers for all.

Every path works with and without its trailing slash, HEAD with every GET.
The original Cyme's singular `/<app>/instance/...` is an alias of
`/<app>/instances/...`, and every write has a no-wait form with `!` before
the name it writes (`/<app>/queues/!/<name>/`) or after the collection of
a create without a name (`/<app>/instances/!/`): it answers 202 once the
change is recorded, without waiting for the worker or the other branches.

A write's parameters may come in the query string, a form or a JSON
object (the body's over the query's).  An empty value is absent; JSON
`null` (or `[]`, `{}`) clears a value back to its default.

Callers on the branch's machine (loopback, `unix:`) are trusted unless the
branch runs with `--no-trust-loopback`; everyone else sends a bearer token
with the scope the route needs: `read` for GET and HEAD, `write` for every
other method and for queueing a URL, `admin` for `/tokens/` (and to see
broker passwords, null otherwise).
"""

#: One Server-Sent Event of C{/events/}: its C{data} is the event's JSON (or
#: a C{reset}'s), its C{id} C{<branch>:<n>}.
SSE_EVENT = {"type": "object", "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
    "retry": {"type": "integer"}}}


def openapi_path(path):
    """C{/<app>/queues/<name>} as OpenAPI writes it: C{/{app}/queues/{name}/}."""
    path = _VARIABLE.sub(r"{\1}", path)
    if path == "/" or path in SLASHLESS or path.endswith("{url}"):
        return path
    return path + "/"


def _tag(path):
    for word, tag in (("/query/", "tasks"), ("/queue/", "tasks"), ("/instance", "instances"),
                      ("/queues", "queues"), ("/tokens", "tokens"), ("/<app>", "apps")):
        if word in path:
            return tag
    return "apps" if path == "/" else "branch"


_MISSING = {"description": "The branches that did not answer: the answer is partial",
            "schema": {"type": "string"}}
_LOCATION = {"description": "Where the answer points: the task's result, the admin "
             "page", "required": True, "schema": {"type": "string"}}


def _answer(route, status, method):
    answer = {"description": STATUS_TEXT[status]}
    if route.partial:
        answer["headers"] = {"Cyme-Missing-Branches": _MISSING}
    if route is QUEUED_URL or status == 303:
        answer["headers"] = {"Location": _LOCATION}
    if method == "HEAD":
        return answer
    if route.content == JSON:
        schema = schemas.ref(route.answer) if route.answer else {}
    elif route.content == EVENT_STREAM:
        # Each event of the stream, as Server-Sent Events frame it.
        schema = SSE_EVENT
    else:
        schema = {"type": "string"}
    answer["content"] = {route.content: {"schema": schema}}
    return answer


def _error(status, method):
    answer = {"description": STATUS_TEXT[status]}
    if method != "HEAD":
        answer["content"] = {JSON: {"schema": schemas.ref("Error")}}
    if status == 303:
        answer["headers"] = {"Location": _LOCATION}
    elif status == 401:
        answer["headers"] = {"WWW-Authenticate": {
            "description": "Bearer, when no token was sent", "schema": {"type": "string"}}}
    return answer


def _parameters(route, path, query):
    found = [{"name": name, "in": "path", "required": True,
              "schema": PATH_PARAMETERS.get(name, schemas.NAME)}
             for name in _VARIABLE.findall(path)]
    found += [{"name": name, "in": "query", "required": False, "schema": query[name]}
              for name in route.query]
    if route.params == "task":
        found.append({"name": "Cyme-Timeout", "in": "header", "required": False,
                      "description": "Seconds the request may take (default: the app's "
                      "task_timeout)", "schema": {"type": "number", "exclusiveMinimum": 0,
                                                  "maximum": 3600}})
    return found


def _body(route):
    schema = schemas.PARAMS[route.params]
    content = {
        JSON: {"schema": schema},
        "application/x-www-form-urlencoded": {"schema": schemas.form(schema)},
    }
    if route.params == "task":
        content["application/octet-stream"] = {"schema": {"type": "string",
                                                          "format": "binary"}}
    else:
        content["multipart/form-data"] = {"schema": schemas.form(schema)}
    return {"required": False, "content": content,
            "description": "Also accepted in the query string." if route.params != "task"
            else "Forwarded to the URL as the request's body."}


def operation(route, path, suffix, method, query):
    """The OpenAPI operation of C{method} on one spelling of C{route}."""
    nowait = suffix.endswith("_nowait")
    statuses = (202,) if nowait else route.status
    errors = set(route.errors) | ({413, 503} if route.open else set(COMMON_ERRORS))
    responses = {str(s): _answer(route, s, method) for s in statuses}
    responses.update({str(s): _error(s, method) for s in sorted(errors - set(statuses))})
    op = {
        "operationId": route.endpoint + suffix + (
            f"_{method.lower()}" if len(route.methods) > 1 else ""),
        "summary": route.summary + (" (without waiting)" if nowait else ""),
        "tags": [_tag(route.path)],
        "parameters": _parameters(route, path, query),
        "responses": responses,
    }
    if route.description:
        op["description"] = route.description
    if route.params not in (None, "none") and method not in ("GET", "HEAD"):
        op["requestBody"] = _body(route)
    if route.open:
        op["security"] = []
    return op


def document(max_wait=300.0):
    """The document of a branch whose C{/wait/} holds at most C{max_wait} s."""
    query = schemas.query(max_wait)
    paths = {}
    for route in [*ROUTES, QUEUED_URL]:
        for path, suffix, _ in route.spellings():
            if "_singular" in suffix:
                continue  # the {instances} parameter's other value
            path = path.replace("/<app>/instances", "/<app>/<instances>", 1)
            item = paths.setdefault(openapi_path(path), {})
            for method in route.methods:
                item[method.lower()] = operation(route, path, suffix, method, query)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cyme", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas.SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description":
                           "A token from `cyme-branch token create` or `POST /tokens/`."},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "cyme_token",
                           "description": "The login form's cookie (browsers)."},
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }
