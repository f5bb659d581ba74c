"""JSON Schemas of the API's answers and parameters, made from the models.

The records' schemas come from the attrs fields of L{cyme.state.models}
(their types, defaults and the models' own limits: the name pattern, the
pools, the exchange types, the concurrency bounds), and the parameters'
from the parameter sets of L{cyme.state.params}: a field added to a model
or a parameter set is in the document without a second list to keep.
"""

import types

import attrs

from cyme.api.auth import SCOPES
from cyme.state import params
from cyme.state.models import (
    EXCHANGE_TYPES, MAX_CONCURRENCY, NAME_RE, POOLS, App, Broker, Instance, Queue,
)

STRING = {"type": "string"}
NAME = {"type": "string", "pattern": "^" + NAME_RE.pattern.removesuffix(r"\Z") + "$"}
NAMES = {"type": "array", "items": STRING}
#: A value the answer leaves free: any JSON.
ANY = {}
_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
          tuple: "array"}

#: What the models' converters and validators allow, by field name.
LIMITS = {
    "name": NAME,
    "app": NAME,
    "port": {"minimum": 1, "maximum": 65535},
    "queues": {"items": NAME},
    "max_concurrency": {"minimum": 1, "maximum": MAX_CONCURRENCY},
    "min_concurrency": {"minimum": 0, "maximum": MAX_CONCURRENCY},
    "pool": {"enum": list(POOLS)},
    "exchange_type": {"enum": list(EXCHANGE_TYPES)},
    "task_timeout": {"exclusiveMinimum": 0, "maximum": 3600},
    "allowed_hosts": {"items": STRING},
    "imports": {"items": STRING},
}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema):
    return {"anyOf": [schema, {"type": "null"}]}


def field_schema(cls, name):
    """The JSON Schema of field C{name} of the attrs class C{cls}."""
    kind = attrs.fields_dict(cls)[name].type
    if isinstance(kind, types.UnionType):  # X | None
        (kind,) = [k for k in kind.__args__ if k is not type(None)]
        return nullable(field_schema_of(kind, name))
    return field_schema_of(kind, name)


def field_schema_of(kind, name):
    if attrs.has(kind):
        return ref(kind.__name__)
    return {"type": _TYPES[kind], **LIMITS.get(name, {})}


def record(cls, *, optional=(), extra=None, required=None):
    """
    The schema of C{cls}'s C{to_json}: every field, and C{extra} ones;
    all of them required but C{optional} (or only C{required}).
    """
    properties = {a.name: field_schema(cls, a.name) for a in attrs.fields(cls)}
    properties.update(extra or {})
    if required is None:
        required = [n for n in properties if n not in optional]
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


#: What an instance's JSON adds to the record: where it runs and how its
#: worker is (L{cyme.supervision}), or what an offline branch last said.
INSTANCE_LIVE = {
    "broker": ref("Broker"),
    "branch": STRING,
    "state": {"type": "string", "enum": [
        "starting", "running", "unresponsive", "failed", "stopping", "stopped",
        "quarantined", "offline"]},
    "pid": nullable({"type": "integer"}),
    "node": nullable(STRING),
    "restarts": {"type": "integer", "minimum": 0},
    "last_error": nullable(STRING),
    "quarantined_until": nullable({"type": "number"}),
    "live": nullable({"type": "object", "properties": {
        "queues": NAMES, "max": nullable({"type": "integer"}),
        "min": nullable({"type": "integer"}), "seen_at": {"type": "number"}}}),
    "last_heartbeat": nullable({"type": "number"}),
    "uptime": nullable({"type": "number"}),
    "last_pong": nullable({"type": "number"}),
    "drift": {"type": "array", "items": {"type": "object", "properties": {
        "kind": STRING, "detail": STRING, "since": nullable({"type": "number"})},
        "required": ["kind", "detail"]}},
}


def _object(required, **properties):
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_BROKER = record(Broker)
# Shown as null without the admin scope.
_BROKER["properties"]["password"] = nullable(STRING)
_TOKEN = {"name": NAME, "scopes": {"type": "array", "items": {"enum": list(SCOPES)}},
          "created": {"type": "number"}, "expires": nullable({"type": "number"})}

#: The components' schemas, by name.
SCHEMAS = {
    "Error": {"type": "object", "properties": {"error": STRING}, "required": ["error"],
              "description": "What went wrong; more fields may say where (field, kind, "
              "name, limit...)."},
    "Ok": _object(["ok"], ok={"const": "ok"}),
    "Pong": _object(["ok"], ok={"const": "pong"}),
    "LoggedIn": _object(["ok", "name"], ok={"const": "ok"}, name=NAME),
    "Names": NAMES,
    "Document": {"type": "object", "description": "An OpenAPI 3.1 document."},
    "Broker": _BROKER,
    "App": record(App, optional=("imports",)),
    "Queue": record(Queue),
    # An instance of an offline branch is shown with what its heartbeats said.
    "Instance": record(Instance, extra=INSTANCE_LIVE, required=("name", "app", "branch")),
    "Autoscale": _object(["max", "min"], max={"type": "integer"}, min={"type": "integer"}),
    "Stats": {"type": "object", "description": "Celery's stats of the worker: pid, pool, "
              "autoscaler, totals, rusage..."},
    "Branch": {"type": "object", "properties": {
        "id": STRING, "url": nullable(STRING), "instances": NAMES, "load": {"type": "object"},
        "limits": nullable({"type": "object"}), "version": nullable(STRING),
        "uptime": nullable({"type": "number"}), "last_heartbeat": nullable({"type": "number"}),
        "online": {"type": "boolean"}}, "required": ["id", "online"]},
    "Token": _object(list(_TOKEN), **_TOKEN),
    "Tokens": {"type": "array", "items": ref("Token")},
    "NewToken": _object([*_TOKEN, "token"], **_TOKEN, token=STRING),
    "TaskState": _object(["uuid", "state"], uuid=STRING, state=STRING),
    "Task": _object(["uuid", "state", "result"], uuid=STRING, state=STRING, result=ANY,
                    traceback=STRING),
    "Accepted": _object(["uuid", "url", "queue", "method"], uuid=STRING, url=STRING,
                        queue=STRING, method=STRING),
    "Instances": {"type": "array", "items": ref("Instance")},
    "Health": {"type": "object", "properties": {"ready": {"type": "boolean"}},
               "required": ["ready"], "description": "Whether the branch is ready, and a "
               "reason per failing part (bus, supervisor, journal); each app's broker for "
               "a caller who may read."},
    "Restart": {"type": "object", "properties": {"id": STRING, "app": NAME,
                "state": STRING}, "required": ["id", "app", "state"],
                "description": "A rolling restart: its plan, each instance's step, its state."},
}


# Parameters: a JSON body's fields are typed (null clears one); a form's
# (or a query's) are text.

_OBJECT_TEXT = {"anyOf": [{"type": "object"}, STRING]}


def _param(cls, name):
    schema = field_schema(cls, name)
    if schema.get("type") == "array":
        schema = {"anyOf": [schema, STRING]}  # or comma-separated
    elif schema.get("type") == "object":
        schema = _OBJECT_TEXT  # or its JSON text
    return nullable(schema)


def _broker_params():
    fields = {n: field_schema(Broker, n) for n in params.BROKER_FIELDS}
    fields["vhost"] = STRING
    fields["broker"] = nullable({"anyOf": [STRING, _BROKER]})
    return fields


def _set(names, cls, **special):
    """
    The JSON Schema of a parameter set: C{names} typed from C{cls}'s fields,
    or as C{special} says (a name in neither fails at import: a parameter
    added to a set cannot be left out of the document).
    """
    properties = {n: special[n] if n in special else _param(cls, n) for n in sorted(names)}
    return {"type": "object", "properties": properties, "additionalProperties": False}


_AUTOSCALE_BOUND = {"type": "integer", "minimum": 0, "maximum": MAX_CONCURRENCY}

#: The parameter sets of the routes (L{cyme.api.table.Route.params}).
PARAMS = {
    "app": _set(params.APP_PARAMS, App, **_broker_params()),
    "instance": _set(params.INSTANCE_PARAMS | {"branch"}, Instance,
                     branch=nullable(NAME), **_broker_params()),
    "queue": _set(params.QUEUE_PARAMS, Queue, options=nullable(_OBJECT_TEXT)),
    "autoscale": _set({"max", "min"}, Instance, max=nullable(_AUTOSCALE_BOUND),
                      min=nullable(_AUTOSCALE_BOUND)),
    "token": _object(["name", "scope"], name=NAME, scope={"anyOf": [
        STRING, {"type": "array", "items": {"enum": list(SCOPES)}, "minItems": 1}]},
        expires=nullable({"anyOf": [{"type": "integer", "minimum": 1},
                                    {"type": "string", "pattern": "^[0-9]{1,9}[smhdw]?$"}]})),
    "login": _object(["token"], token=STRING),
    "task": {"type": "object", "additionalProperties": STRING},
}


def form(schema):
    """The form (or query) version of a parameter set: every value text."""
    free = schema.get("additionalProperties", False)
    return {
        "type": "object",
        "properties": {n: STRING for n in schema.get("properties", {})},
        "required": schema.get("required", []),
        "additionalProperties": STRING if free else False,
    }


def query(max_wait):
    """The query parameters routes name besides their set
    (L{cyme.api.table.Route.query}), for a branch whose longest wait is
    C{max_wait}."""
    return {"timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": max_wait},
            "fresh": {"type": "string", "enum": ["0", "1"]}}
