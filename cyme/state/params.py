"""Request parameters (form fields, query arguments or JSON) made into models.

Clients send the original Cyme's flat parameters (``hostname=w1&userid=me``,
``max_concurrency=4``); these functions turn such a mapping into the model
records or changes, raising L{BadRequest} naming the first field at fault.
Here the values that reach a worker are parsed, once, when written: worker
options and settings against the allow-list, task modules, serializers and
concurrency against the branch's L{WorkerPolicy}, the broker's host.

An empty value (C{broker=&arguments=}, as the original client sends every
field it was not given) means absent, for every parameter; a value is
cleared, back to its default, with JSON C{null} (or C{[]}, C{{}} for a list
or an object).
"""

import json

import attrs

from cyme.errors import BadRequest
from cyme.state.models import (
    App, Broker, Instance, Queue, check_allowed_hosts, check_bool, check_hostname,
    check_json_object, check_name,
)
from cyme.state.queues import check_names, check_options
from cyme.state.workeroptions import (
    WorkerPolicy, parse_arguments, parse_imports, parse_settings,
)

#: The policy of a branch whose operator opened nothing.
CLOSED = WorkerPolicy()

BROKER_FIELDS = ("hostname", "port", "userid", "password", "virtual_host", "ssl")


def given(params):
    """The parameters a request gives: an empty value is absent."""
    return {k: v for k, v in params.items() if not (isinstance(v, str) and v == "")}


def _cleared(cls, params, keys):
    """C{{key: default}} of C{cls} for each of C{keys} given as null."""
    fields = attrs.fields_dict(cls)
    changes = {}
    for key in keys:
        if key in params and params[key] is None:
            default = fields[key].default
            changes[key] = default.factory() if isinstance(default, attrs.Factory) else default
    return changes


def _check_known(params, allowed):
    for key in params:
        if key not in allowed:
            raise BadRequest(key, f"unknown parameter: {key}")


def json_object(value, field):
    """A JSON object given as such (JSON bodies) or as text (forms)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise BadRequest(field, f"{field} must be a JSON object") from None
    return check_json_object(value, field)


def broker(params, default):
    """
    The broker the parameters name, or C{default} when they name none.

    As in the original cyme, a broker is named by C{hostname} (with the
    other fields defaulting to guest on 5672, or 5671 with C{ssl}, vhost
    C{/}) or by an amqp:// or amqps:// URL in C{broker}; without either,
    the other fields are ignored.  C{broker} null is C{default}: cleared.
    """
    if "broker" in params and params["broker"] is None:
        return default
    if params.get("broker") not in (None, ""):
        if isinstance(params["broker"], dict):
            found = Broker.from_json(params["broker"])
        else:
            found = Broker.from_url(params["broker"])
            if params.get("ssl") not in (None, "") and \
                    check_bool(params["ssl"], "ssl") != found.ssl:
                # Which one was meant is anybody's guess: neither is taken.
                raise BadRequest("ssl", f"ssl={params['ssl']} contradicts the broker URL's "
                                        "scheme (amqps:// is TLS, amqp:// is not)")
            return found
    elif params.get("hostname") in (None, ""):
        return default
    else:
        fields = {k: params[k] for k in BROKER_FIELDS if params.get(k) not in (None, "")}
        if params.get("vhost") not in (None, "") and "virtual_host" not in fields:
            fields["virtual_host"] = params["vhost"]
        found = Broker.from_json(fields)
    return attrs.evolve(found, hostname=check_hostname(found.hostname))


APP_PARAMS = set(BROKER_FIELDS) | {
    "vhost", "broker", "arguments", "extra_config", "allowed_hosts", "task_timeout",
    "imports",
}


def worker_settings(params, changes, policy):
    """Parse the C{arguments} and C{extra_config} the parameters set into C{changes}."""
    if "arguments" in params:
        changes["arguments"] = parse_arguments(params["arguments"] or "")
    if "extra_config" in params:
        settings = parse_settings(json_object(params["extra_config"], "extra_config"))
        policy.check_settings(settings)
        changes["extra_config"] = settings


APP_CLEARABLE = ("arguments", "extra_config", "allowed_hosts", "task_timeout", "imports")


def app_changes(params, policy=CLOSED):
    """The non-broker fields of an app that the parameters set."""
    params = given(params)
    _check_known(params, APP_PARAMS)
    changes = _cleared(App, params, APP_CLEARABLE)
    params = {k: v for k, v in params.items() if k not in changes}
    worker_settings(params, changes, policy)
    if "imports" in params:
        changes["imports"] = parse_imports(params["imports"] or ())
        policy.check_imports(changes["imports"])
    if "allowed_hosts" in params:  # strictly: an older version's "[1:2]" loads, is not written
        changes["allowed_hosts"] = check_allowed_hosts(params["allowed_hosts"])
    if "task_timeout" in params:
        changes["task_timeout"] = params["task_timeout"]
    return changes


def branch(value):
    """The branch a create names (C{?branch=}), or None for any."""
    if value is None or (isinstance(value, str) and not value):
        return None
    return check_name(value, "branch")


def names_broker(params):
    """Whether the parameters name a broker, or clear it (C{broker} null)."""
    return ("broker" in params and params["broker"] is None) or (
        params.get("broker") not in (None, "") or params.get("hostname") not in (None, "")
    )


QUEUE_PARAMS = {"exchange", "exchange_type", "routing_key", "options"}


def queue(name, params, cluster="cyme"):
    """
    A queue declaration; exchange and routing key default to the name.
    Neither may be one of the names cyme and Celery keep (C{cluster}: the
    name of the branches' cluster, whose bus is theirs too).
    """
    _check_known(params, QUEUE_PARAMS)
    fields = {k: params[k] for k in QUEUE_PARAMS if params.get(k) not in (None, "")}
    if "options" in fields:
        fields["options"] = check_options(json_object(fields["options"], "options"))
    declared = Queue(name=name, **fields)
    check_names(declared, cluster)
    return declared


INSTANCE_PARAMS = (
    {"queues", "max_concurrency", "min_concurrency", "is_enabled", "pool"}
    | {"arguments", "extra_config"}
    | set(BROKER_FIELDS)
    | {"vhost", "broker"}
)


INSTANCE_CLEARABLE = (
    "queues", "max_concurrency", "min_concurrency", "is_enabled", "pool", "arguments",
    "extra_config",
)


def queue_names(value):
    """Queue names as a list, from a JSON list or a comma-separated string."""
    if isinstance(value, str):
        return [q.strip() for q in value.split(",") if q.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise BadRequest("queues", "queues must be a list of queue names")


def instance(name, app, params, existing=None, policy=CLOSED):
    """
    The instance the parameters describe: a new one, or C{existing} changed.

    Fields the parameters leave out keep their current value (or default).
    """
    params = given(params)
    _check_known(params, INSTANCE_PARAMS)
    changes = _cleared(Instance, params, INSTANCE_CLEARABLE)
    values = {k: v for k, v in params.items() if k not in changes}
    for key in ("max_concurrency", "min_concurrency", "is_enabled", "pool"):
        if values.get(key) is not None:
            changes[key] = values[key]
    if "queues" in values:
        changes["queues"] = queue_names(values["queues"])
    worker_settings(values, changes, policy)
    if names_broker(params):
        changes["broker"] = broker(params, None)
    if existing is None:
        made = Instance(name=name, app=app, **changes)
    else:
        made = attrs.evolve(existing, **changes)
    if existing is None or made.max_concurrency != existing.max_concurrency:
        policy.check_concurrency(made.max_concurrency)
    return made


def autoscale(params, existing, policy=CLOSED):
    """
    The instance with the C{max}/C{min} the parameters set (null: the
    default, 1); without either, C{existing} itself: the original client
    reads the bounds with C{POST .../autoscale/?max=&min=}.
    """
    params = given(params)
    _check_known(params, {"max", "min"})
    renamed = {"max": "max_concurrency", "min": "min_concurrency"}
    changes = _cleared(Instance, {renamed[k]: v for k, v in params.items()},
                       renamed.values())
    for key, field in renamed.items():
        if params.get(key) is not None:
            changes[field] = params[key]
    if not changes:
        return existing
    try:
        changed = attrs.evolve(existing, **changes)
        if changed.max_concurrency != existing.max_concurrency:
            policy.check_concurrency(changed.max_concurrency)
        return changed
    except BadRequest as e:
        # Name the parameter the client sent, not the model's field.
        field = {"max_concurrency": "max", "min_concurrency": "min"}.get(e.field, e.field)
        message = e.message.replace("max_concurrency", "max").replace(
            "min_concurrency", "min"
        )
        raise BadRequest(field, message) from None
