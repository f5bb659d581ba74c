"""What a queue declaration may say: names cyme and Celery keep, and options.

A declaration becomes a queue, an exchange and a binding on the app's
broker, declared by its workers.  Names that cyme, Celery or RabbitMQ use
themselves are refused (a 400 when written), so an app's queue cannot
consume another app's tasks, a branch's results, the remote control, the
event stream or the branches' bus: C{cyme.} (results, the default
cluster's bus), C{<cluster>.} (a named cluster's bus), C{dq.} (the
remote-control queues cyme declares for workers), C{celery.pidbox} and
C{reply.celery.pidbox} (Celery's remote control), C{celeryev} (its
events) and C{amq.} (the broker's own exchanges, C{amq.rabbitmq.trace}
among them).

A declaration's C{options} are kombu's queue options, each with a typed
value; C{bindings}, which would bind the queue to any exchange, and
whatever names the queue's exchange or key again, are not among them.
"""

from cyme.errors import BadRequest

#: Prefixes of queue and exchange names that are not an app's to use.
RESERVED_PREFIXES = ("cyme.", "dq.", "celery.pidbox", "reply.celery.pidbox", "celeryev",
                     "amq.")

_FLAGS = ("durable", "exclusive", "auto_delete", "exchange_durable",
          "exchange_auto_delete", "no_declare")
_NUMBERS = ("expires", "message_ttl")
_COUNTS = ("max_length", "max_length_bytes", "max_priority")
_ARGUMENT_TABLES = ("queue_arguments", "exchange_arguments", "binding_arguments",
                    "consumer_arguments")

#: The queue options a declaration may carry (kombu's names).
QUEUE_OPTIONS = frozenset(_FLAGS + _NUMBERS + _COUNTS + _ARGUMENT_TABLES)


def reserved_prefix(name, cluster="cyme"):
    """The reserved prefix C{name} starts with, or None."""
    for prefix in (*RESERVED_PREFIXES, f"{cluster}."):
        if name.startswith(prefix):
            return prefix
    return None


def check_names(queue, cluster="cyme"):
    """Refuse a declaration whose queue or exchange has a reserved name."""
    for field, name in (("name", queue.name), ("exchange", queue.exchange)):
        prefix = reserved_prefix(name, cluster)
        if prefix is not None:
            raise BadRequest(
                field, f"{field} {name!r} is reserved: names starting with {prefix!r} "
                "belong to cyme, Celery or the broker",
            )


def check_options(options):
    """C{options} if every one is a known queue option with a value of its type."""
    for key, value in options.items():
        if key not in QUEUE_OPTIONS:
            raise BadRequest(
                "options", f"queue option {key!r} is not allowed (allowed: "
                f"{', '.join(sorted(QUEUE_OPTIONS))})",
            )
        if key in _FLAGS:
            ok = isinstance(value, bool)
        elif key in _NUMBERS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        elif key in _COUNTS:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and _scalar(v) for k, v in value.items()
            )
        if not ok:
            raise BadRequest("options", f"queue option {key!r} has a value of the wrong type")
    return options


def _scalar(value):
    return value is None or isinstance(value, (str, int, float, bool))
