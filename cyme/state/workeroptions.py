"""The worker options and settings a user may give, and the operator's limits.

An app's or instance's ``arguments`` (options of ``celery worker``) and
``extra_config`` (Celery settings) reach a worker process that runs with
the branch's rights, so only the options and settings listed here are
accepted, each with a typed value: L{parse_arguments} and
L{parse_settings} turn what a client wrote into the canonical form that is
stored, or raise L{BadRequest} naming the option and pointing to the list
(the README's "Security" section shows it).  Never through the API: the
worker's files (log, pid, state db, beat schedule), ``--detach``, the node
name, the queues, pool and concurrency that cyme sets itself, and anything
that imports code or accepts a serializer other than JSON.

Two of those the branch's operator may open (L{WorkerPolicy}): task
modules matching the patterns given with ``--task-module`` (an app's
``imports``), and the serializers named with ``--accept-content``.  The
policy also caps ``max_concurrency`` and the number of instances of the
branch.  A record replicated from a branch whose operator allowed more is
checked again against this branch's policy when its worker is started
(L{WorkerPolicy.check}).
"""

import fnmatch
import math
import os
import re
import shlex

import attrs

from cyme.errors import BadRequest
from cyme.fence import parse_entry
from cyme.state.fields import check_int

#: Where an error points the client to.
SEE = "see the allowed worker options in the README's Security section"

SERIALIZERS = {
    "json": "json", "application/json": "json",
    "pickle": "pickle", "application/x-python-serialize": "pickle",
    "yaml": "yaml", "application/x-yaml": "yaml",
    "msgpack": "msgpack", "application/x-msgpack": "msgpack",
}

MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?\[\]!]{1,200}\Z")
RATE_RE = re.compile(r"\d{1,9}(\.\d{1,6})?(/[smh])?\Z")
ZONE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}\Z")


class Refused(BadRequest):
    """A value outside the allow-list; C{option} names the option or setting."""

    def __init__(self, field, message, option):
        super().__init__(field, message)
        self.detail["option"] = option


def _fail(field, message):
    raise BadRequest(field, f"{field}: {message}; {SEE}")


# Typed values.  Each parser takes the value (JSON, or the text of a
# command line) and the name to blame, and returns the canonical value.

def _integer(low, high):
    def parse(value, field):
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,12}\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(field, f"must be an integer between {low} and {high}")
        return value
    parse.kind = f"integer {low}..{high}"
    return parse


def _seconds(zero=False, high=7 * 86400):
    def parse(value, field):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not (0 if zero else 1e-3) <= value <= high):
            _fail(field, f"must be a number of seconds in {'[0' if zero else '(0'}, {high}]")
        return int(value) if float(value).is_integer() else float(value)
    parse.kind = f"seconds, {'0 or more' if zero else 'more than 0'}"
    return parse


def _boolean(value, field):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    _fail(field, "must be true or false")


_boolean.kind = "true or false"


def _choice(*choices):
    def parse(value, field):
        if value not in choices:
            _fail(field, f"must be one of {', '.join(choices)}")
        return value
    parse.kind = " | ".join(choices)
    return parse


def _pattern(regex, what):
    def parse(value, field):
        if value is None:
            return None
        if not isinstance(value, str) or not regex.match(value):
            _fail(field, f"must be {what}")
        return value
    parse.kind = what
    return parse


def _serializer(value, field):
    if not isinstance(value, str) or value not in SERIALIZERS:
        _fail(field, f"{value!r} is not a serializer ({', '.join(sorted(set(SERIALIZERS.values())))})")
    return SERIALIZERS[value]


_serializer.kind = "a serializer name"


def _serializers(value, field):
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or len(value) > 8:
        _fail(field, "must be a list of serializer names")
    return sorted({_serializer(v, field) for v in value})


_serializers.kind = "list of serializer names"

# The options of ``celery worker`` a user may add: its spellings, and the
# parser of its value (None: a flag).
_OPTIONS = [
    (("-O", "--optimization"), _choice("default", "fair")),
    (("--prefetch-multiplier",), _integer(1, 10000)),
    (("--disable-prefetch",), None),
    (("--time-limit",), _seconds()),
    (("--soft-time-limit",), _seconds()),
    (("--max-tasks-per-child",), _integer(1, 10**9)),
    (("--max-memory-per-child",), _integer(1024, 2**40)),
    (("--pool-start-method",), _choice("fork", "spawn")),
    (("--heartbeat-interval",), _integer(1, 3600)),
    (("--without-heartbeat",), None),
    (("--without-gossip",), None),
    (("--without-mingle",), None),
    (("-E", "--task-events", "--events"), None),
]
OPTIONS = {spelling: parse for names, parse in _OPTIONS for spelling in names}

# Options refused with the reason a client needs.
_REFUSED = [
    (("-n", "--hostname"), "the node name is cyme's: <instance>@<host>"),
    (("-D", "--detach"), "cyme supervises the worker process itself"),
    (("-f", "--logfile", "--pidfile", "-S", "--statedb", "-s", "--schedule",
      "--schedule-filename"), "the worker's files are the branch's"),
    (("-Q", "--queues", "-X", "--exclude-queues"),
     "queues are set by cyme: use the instance's queues and the consumers routes"),
    (("-c", "--concurrency", "--autoscale"), "use max_concurrency and min_concurrency"),
    (("-P", "--pool"), "use the instance's pool"),
    (("-l", "--loglevel"), "the branch's --loglevel sets it"),
    (("-I", "--include"), "task modules are the app's imports, within the branch's --task-module"),
    (("-A", "--app", "-b", "--broker", "--workdir", "--config"), "cyme sets it"),
    (("-B", "--beat", "--scheduler"), "cyme runs no beat scheduler"),
    (("--purge", "--discard"), "it deletes the messages of the queues"),
    (("--uid", "--gid", "--umask", "--executable"), "not through the API"),
]
REFUSED = {spelling: why for names, why in _REFUSED for spelling in names}


def _typed(parse, value, field, name):
    """C{value} of option or setting C{name} parsed; a 400 naming both."""
    try:
        return parse(value, f"{field} {name}")
    except BadRequest as e:
        raise Refused(field, e.message, name) from None


def parse_arguments(text, field="arguments"):
    """
    C{text} if each worker option in it is allowed, with a valid value
    (C{--name=value}, C{--name value}, C{-Xvalue} or C{-X value}, or the
    flag alone); else L{BadRequest}.  It is kept as written, so that a
    client reads back what it wrote.
    """
    if not isinstance(text, str) or len(text) > 4096:
        raise BadRequest(field, f"{field} must be text of at most 4096 characters")
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise BadRequest(field, f"{field} cannot be read as a command line ({e}); {SEE}") from None
    i = 0
    while i < len(words):
        word, i = words[i], i + 1
        name, value = word, None
        if word.startswith("--") and "=" in word:
            name, value = word.split("=", 1)
        elif word.startswith("-") and not word.startswith("--") and len(word) > 2:
            name, value = word[:2], word[2:]
        if name in REFUSED:
            raise Refused(field, f"{field}: {name} is not allowed ({REFUSED[name]}); {SEE}",
                          name)
        if name not in OPTIONS:
            raise Refused(field, f"{field}: {name!r} is not an allowed option; {SEE}",
                          name)
        parse = OPTIONS[name]
        if parse is None:
            if value is not None:
                raise Refused(field, f"{field}: {name} takes no value", name)
            continue
        if value is None:
            if i >= len(words):
                raise Refused(field, f"{field}: {name} needs a value", name)
            value, i = words[i], i + 1
        _typed(parse, value, field, name)
    return text


# The Celery settings a user may set in extra_config.
SETTINGS = {
    "worker_prefetch_multiplier": _integer(1, 10000),
    "worker_max_tasks_per_child": _integer(1, 10**9),
    "worker_max_memory_per_child": _integer(1024, 2**40),
    "worker_disable_rate_limits": _boolean,
    "worker_lost_wait": _seconds(),
    "worker_proc_alive_timeout": _seconds(),
    "worker_send_task_events": _boolean,
    "worker_cancel_long_running_tasks_on_connection_loss": _boolean,
    "task_time_limit": _seconds(),
    "task_soft_time_limit": _seconds(),
    "task_acks_late": _boolean,
    "task_acks_on_failure_or_timeout": _boolean,
    "task_reject_on_worker_lost": _boolean,
    "task_track_started": _boolean,
    "task_ignore_result": _boolean,
    "task_store_errors_even_if_ignored": _boolean,
    "task_send_sent_event": _boolean,
    "task_default_rate_limit": _pattern(RATE_RE, "a rate such as 10/s, 100/m or 1000/h"),
    "result_expires": _seconds(zero=True, high=365 * 86400),
    "result_persistent": _boolean,
    "broker_heartbeat": _seconds(zero=True, high=3600),
    "broker_connection_timeout": _seconds(high=600),
    "broker_pool_limit": _integer(0, 1000),
    "timezone": _pattern(ZONE_RE, "a time zone name such as Europe/Oslo"),
    "enable_utc": _boolean,
    "cyme_webhook_timeout": _seconds(high=3600),
    "cyme_webhook_max_response_bytes": _integer(1, 2**30),
    # Beyond json only with the branch's --accept-content (WorkerPolicy).
    "accept_content": _serializers,
    "result_accept_content": _serializers,
    "task_serializer": _serializer,
    "result_serializer": _serializer,
}

_REFUSED_SETTINGS = {
    # Its pool_restart remote command imports the modules it is sent: any
    # broker user's choice, past the operator's --task-module.
    "worker_pool_restarts": "it lets a remote command import any module",
    "worker_enable_remote_control": "cyme commands its workers through it",
    "worker_concurrency": "use max_concurrency and min_concurrency",
    "worker_pool": "use the instance's pool",
    "imports": "use the app's imports", "include": "use the app's imports",
    "worker_state_db": "the worker's files are the branch's",
    "broker_url": "use the broker fields", "result_backend": "cyme sets it",
}


def parse_settings(settings, field="extra_config"):
    """The canonical copy of Celery C{settings} (a dict), each allowed and typed."""
    if not isinstance(settings, dict):
        raise BadRequest(field, f"{field} must be a JSON object")
    parsed = {}
    for name, value in settings.items():
        parse = SETTINGS.get(name)
        if parse is None:
            why = _REFUSED_SETTINGS.get(name)
            if why is None and name.startswith(("task_queue", "task_default_", "task_route",
                                                "task_create_missing")):
                why = "queues are set by cyme"
            reason = f" ({why})" if why else ""
            raise Refused(field, f"{field}: setting {name!r} is not allowed{reason}; {SEE}",
                          name)
        parsed[name] = _typed(parse, value, field, name)
    return parsed


def parse_imports(value, field="imports"):
    """Module names as a tuple, from a JSON list or comma-separated text."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or len(value) > 100:
        raise BadRequest(field, f"{field} must be a list of module names")
    for module in value:
        if not isinstance(module, str) or len(module) > 200 or not MODULE_RE.match(module):
            raise BadRequest(field, f"{field}: {module!r} is not a module name")
    if len(set(value)) != len(value):
        raise BadRequest(field, f"{field} must not repeat a module")
    return tuple(value)


#: The highest max_concurrency of an instance, and of a branch's cap.
MAX_CONCURRENCY = 10000


def default_max_concurrency():
    return 4 * (os.cpu_count() or 1)


@attrs.frozen
class WorkerPolicy:
    """
    What the operator of a branch opens and caps (its command line).

    C{task_modules}: patterns (C{fnmatch}, as C{myproject.tasks*}) the
    modules of an app's imports must match; C{accept_content}: the
    serializers workers may use besides json; C{max_concurrency} caps an
    instance's, C{max_instances} the number of instances on the branch;
    C{broker_ca}: the CA bundle workers check an C{amqps://} broker's
    certificate with (C{--broker-ca}; None: the system's CAs);
    C{webhook_allow}: where inside the ranges the fence refuses by default
    an app's C{allowed_hosts} may open queued URLs (C{--webhook-allow},
    entries as C{allowed_hosts}); C{webhook_deny_private}: private ranges
    are refused too (C{--webhook-deny-private}).  The workers get the
    fence with their configuration.
    """

    task_modules: tuple = ()
    accept_content: frozenset = frozenset()
    max_concurrency: int = attrs.field(factory=default_max_concurrency)
    max_instances: int = 100
    broker_ca: str | None = None
    webhook_allow: tuple = ()
    webhook_deny_private: bool = False

    @classmethod
    def from_options(cls, task_modules=(), accept_content=(), max_concurrency=None,
                     max_instances=100, broker_ca=None, webhook_allow=(),
                     webhook_deny_private=False):
        """The policy from the command line's values; L{BadRequest} names the option."""
        counts = {}
        for name, value in (("--max-concurrency", max_concurrency),
                            ("--max-instances", max_instances)):
            try:
                counts[name] = None if value is None else check_int(value, name, 1,
                                                                     MAX_CONCURRENCY)
            except BadRequest as e:
                raise BadRequest(name, f"{e.message}, not {value!r}") from None
        for entry in webhook_allow:
            try:
                parse_entry(entry)
            except ValueError as e:
                raise BadRequest("--webhook-allow", f"--webhook-allow: {e}") from None
        for pattern in task_modules:
            if not PATTERN_RE.match(pattern):
                raise BadRequest("--task-module", f"--task-module {pattern!r} is not a "
                                 "module pattern (letters, digits, _ . * ? [ ])")
        serializers = set()
        for value in accept_content:
            serializers.update(_serializers(value, "--accept-content"))
        return cls(
            tuple(task_modules), frozenset(serializers - {"json"}),
            counts["--max-concurrency"] or default_max_concurrency(),
            counts["--max-instances"] or 100, broker_ca,
            tuple(e.strip().lower() for e in webhook_allow), bool(webhook_deny_private),
        )

    def limits(self):
        """What other branches need to know to place instances here."""
        return {"max_instances": self.max_instances, "max_concurrency": self.max_concurrency}

    def check_imports(self, imports, field="imports"):
        for module in imports:
            if not any(fnmatch.fnmatchcase(module, p) for p in self.task_modules):
                allowed = ", ".join(self.task_modules) or "none"
                raise Refused(
                    field, f"{field}: module {module} is not allowed on this branch (its "
                    f"operator allows --task-module patterns: {allowed}); {SEE}", module,
                )

    def check_settings(self, settings, field="extra_config"):
        for name in ("accept_content", "result_accept_content",
                     "task_serializer", "result_serializer"):
            value = settings.get(name)
            names = value if isinstance(value, list) else [value] if value else []
            for serializer in names:
                if serializer != "json" and serializer not in self.accept_content:
                    raise Refused(
                        field, f"{field} {name}: {serializer} is not accepted on this branch "
                        f"(its operator did not start it with --accept-content "
                        f"{serializer}); {SEE}", name,
                    )

    def check_concurrency(self, max_concurrency, field="max_concurrency"):
        if max_concurrency > self.max_concurrency:
            raise BadRequest(field, f"{field} must be at most {self.max_concurrency} on this "
                             "branch (its --max-concurrency)")

    def check(self, app, instance):
        """
        Whether C{app}'s and C{instance}'s worker may start here: every
        value parsed and within this policy; else L{BadRequest}.  For
        records that did not come through this branch's API (replicated,
        or from an older state file).  The caps are not checked here: they
        hold for what is written, and an instance written before the
        operator lowered one keeps running as it was.
        """
        parse_arguments(app.arguments, "app arguments")
        parse_arguments(instance.arguments, "arguments")
        self.check_settings(parse_settings(app.extra_config, "app extra_config"),
                            "app extra_config")
        self.check_settings(parse_settings(instance.extra_config))
        self.check_imports(app.imports)
