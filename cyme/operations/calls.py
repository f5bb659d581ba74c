"""The arguments of the bus methods another branch calls on this one, and the
replies this branch computes with, checked.

A request that opened on the bus came from a holder of the cluster key,
yet it is still data: each method's arguments are checked here, by type
and count, before L{cyme.operations.cluster.ClusterOperations} runs them
(names and values are then checked by the operations themselves, as for
an HTTP request).  Anything else is a L{cyme.cluster.messages.BadMessage}:
a 400 to the caller, counted and logged by the bus, never an exception in
the handler.
"""

from cyme.cluster.messages import (
    BadMessage, array, fields, flag, number, obj, optional, text,
)


def _text(value, field):
    return text(value, field, 255)


def _seconds(value, field):
    # The longest /wait of the API, and some.
    number(value, field)
    if not 0 < value <= 3600:
        raise BadMessage(field, f"{field} must be a number of seconds in (0, 3600]")
    return float(value)


INSTANCES_LIST = {"app": optional(_text)}
INSTANCES_DESCRIBE = {"drift_only": optional(flag, False)}
INSTANCE_LOOKUP = {"name": _text}
INSTANCE_PUT = {
    "app": _text, "name": _text, "values": optional(obj, {}),
    "wait": optional(flag, True), "branch": optional(_text),
}
TASK_GET = {"app": _text, "uuid": _text}
TASK_WAIT = {"app": _text, "uuid": _text, "timeout": _seconds}
#: The answer to C{task.wait}: the task as it is, and whether it is done.
TASK_WAITED = {"task": obj, "ready": flag}

#: The instance operations another branch may ask this one to run: what
#: follows their C{app} and C{name} (or task id), and their keywords.
INSTANCE_OPS = {
    "get_instance": ((), {}),
    "delete_instance": ((), {}),
    "instance_queues": ((), {}),
    "get_autoscale": ((), {}),
    "restart": ((), {"wait": flag}),
    "stats": ((), {}),
    "task": ((), {}),
    "put_instance": ((obj,), {"wait": flag}),
    "add_consumer": ((_text,), {}),
    "cancel_consumer": ((_text,), {}),
    "get_consumer": ((_text,), {}),
    "set_autoscale": ((obj,), {}),
    "set_enabled": ((flag,), {"wait": flag}),
}


def checked(args, spec):
    """C{args} checked by C{spec} (one of the dicts above)."""
    return fields(args, spec)


def instance_op(args):
    """C{(op, positional arguments, keywords)} of an C{instance.op} request."""
    given = fields(args, {
        "op": _text, "args": optional(array, []), "kwargs": optional(obj, {}),
    })
    op = given["op"]
    if op not in INSTANCE_OPS:
        raise BadMessage("op", f"no instance operation {op!r}")
    extra, keywords = INSTANCE_OPS[op]
    positional = given["args"]
    if len(positional) != 2 + len(extra):
        raise BadMessage("args", f"{op} takes {2 + len(extra)} arguments")
    values = [_text(positional[0], "app"), _text(positional[1], "name")]
    values += [check(value, "args") for check, value in zip(extra, positional[2:])]
    unknown = sorted(set(given["kwargs"]) - set(keywords))
    if unknown:
        raise BadMessage("kwargs", f"{op} takes no keyword {unknown[0]!r}")
    kwargs = {k: keywords[k](v, k) for k, v in given["kwargs"].items()}
    return op, values, kwargs


def names(reply):
    """The instance names of an C{instances.list} reply; what is no name is left out."""
    return [n for n in reply if isinstance(n, str)] if isinstance(reply, list) else []


def described(reply):
    """
    The instances of an C{instances.describe} reply: JSON objects, each
    with a C{name} and C{app} (what is not is left out).
    """
    if not isinstance(reply, list):
        return []
    return [i for i in reply if isinstance(i, dict) and isinstance(i.get("name"), str)
            and isinstance(i.get("app"), str) and isinstance(i.get("drift", []), list)]


def app_of(reply):
    """The app of an C{instance.lookup} reply."""
    if not isinstance(reply, dict) or not isinstance(reply.get("app"), str):
        raise BadMessage("app", "instance.lookup answered no app")
    return reply["app"]
