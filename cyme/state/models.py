"""The desired state of a cyme cluster as frozen, validated attrs records.

``Broker``, ``App``, ``Queue`` and ``Instance`` are values: they are checked
when built (so an invalid one never exists), changed only through
``attrs.evolve`` and turned to and from the JSON shapes of the HTTP API and
the store with ``to_json``/``from_json``.
"""

import re
from urllib.parse import quote, unquote, urlsplit

import attrs

from cyme.errors import BadRequest
from cyme.fence import parse_entry
# The field checks, which callers have long imported from here.
from cyme.state.fields import (  # noqa: F401
    as_converter as _converter, as_validator as _validator, build, check_bool,
    check_hostname, check_int, check_json_object, check_seconds, check_text,
)
from cyme.state.workeroptions import MAX_CONCURRENCY, parse_imports

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")

#: Top-level routes of the HTTP API (now or to come): no new app takes one;
#: an older state file's app still loads (L{reserved_apps}: a warning).
RESERVED_APP_NAMES = frozenset([
    "ping", "admin", "branches", "metrics", "instances", "queues", "queue", "query",
    "tokens", "openapi.json", "events", "drift", "restarts", "health", "login",
])

EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
POOLS = ("prefork", "solo", "threads", "eventlet", "gevent")

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def check_name(value, field="name"):
    """
    Return C{value} if it may name an app, instance or queue.

    Names become directory names and AMQP queue names, so only a conservative
    alphabet is allowed and a name can never be C{.}, contain C{..} or start
    with C{-} (which a command line would read as an option).
    """
    if not isinstance(value, str):
        raise BadRequest(field, f"{field} must be a string")
    if not NAME_RE.match(value) or ".." in value:
        raise BadRequest(
            field,
            f"{field} must be 1-64 characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.' or '-' and without '..'",
        )
    return value


@attrs.frozen
class Broker:
    """
    Connection parameters of an AMQP broker.

    C{ssl}: over TLS (C{amqps://}), the broker's certificate and host name
    verified; its port defaults to 5671 then, else to 5672.
    """

    hostname: str = attrs.field(
        default="127.0.0.1", validator=_validator(check_text, 255)
    )
    # Before the port, whose default it decides; a keyword only, so that
    # the fields keep their positions.
    ssl: bool = attrs.field(
        default=False, kw_only=True, converter=_converter(check_bool, "ssl")
    )
    port: int = attrs.field(
        default=attrs.Factory(lambda self: 5671 if self.ssl else 5672, takes_self=True),
        converter=_converter(check_int, "port", 1, 65535),
    )
    userid: str = attrs.field(
        default="guest", validator=_validator(check_text, 255, True)
    )
    password: str = attrs.field(
        default="guest", validator=_validator(check_text, 255, True)
    )
    virtual_host: str = attrs.field(
        default="/", validator=_validator(check_text, 255)
    )

    @classmethod
    def from_url(cls, url, field="broker"):
        """
        Parse C{amqp://user:password@host:port/vhost} (C{amqps://}: over
        TLS, port 5671 by default); C{//} means C{/}.
        """
        check_text(url, field, 1024)
        shape = f"{field} must be an amqp:// or amqps://user:pass@host:port/vhost URL"
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:  # "amqp://[/": an IPv6 literal never closed
            raise BadRequest(field, shape) from None
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "pyamqp", "amqps", "pyamqps") or not hostname:
            raise BadRequest(field, shape)
        ssl = scheme.endswith("s")
        try:
            port = parts.port if parts.port is not None else (5671 if ssl else 5672)
        except ValueError:
            raise BadRequest(field, f"{field} has an invalid port") from None
        hostname = check_hostname(hostname, field)
        vhost = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls.from_json(
            {
                "hostname": hostname,
                "port": port,
                "userid": unquote(parts.username or "guest"),
                "password": unquote(parts.password or "guest"),
                "virtual_host": unquote(vhost) or "/",
                "ssl": ssl,
            }
        )

    def as_url(self):
        hostname = self.hostname
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"  # an IPv6 address
        return "{}://{}:{}@{}:{}/{}".format(
            "amqps" if self.ssl else "amqp",
            quote(self.userid, safe=""),
            quote(self.password, safe=""),
            hostname,
            self.port,
            quote(self.virtual_host, safe=""),
        )

    def to_json(self):
        return {
            "hostname": self.hostname,
            "port": self.port,
            "userid": self.userid,
            "password": self.password,
            "virtual_host": self.virtual_host,
            "ssl": self.ssl,
        }

    @classmethod
    def from_json(cls, data, field="broker"):
        return build(cls, data, field)


def _check_broker(instance, attribute, value):
    if not isinstance(value, Broker):
        raise BadRequest("broker", "broker must be a broker object")


#: What allowed_hosts took before the fence: a state file of that version
#: may hold an entry the fence cannot read (C{[1:2]}).  It loads and matches
#: nothing (L{cyme.fence}); only a write through the API is refused.
OLDER_HOST_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?(:\d{1,5})?\Z|\[[0-9A-Fa-f:.]+\](:\d{1,5})?\Z"
)


def _check_hosts(value, strict=False):
    # Names, "*.domain", addresses and networks (CIDR), each with an
    # optional ":port": the webhook fence's entries (cyme.fence.parse_entry).
    if isinstance(value, str):
        value = [h.strip() for h in value.split(",") if h.strip()]
    if not isinstance(value, (list, tuple)) or len(value) > 1000:
        raise BadRequest("allowed_hosts", "allowed_hosts must be a list of host names, "
                                          "addresses or networks")
    for host in value:
        try:
            parse_entry(host)
        except ValueError as e:
            if strict or not isinstance(host, str) or not OLDER_HOST_RE.match(host.strip()):
                raise BadRequest("allowed_hosts", f"allowed_hosts: {e}") from None
    return tuple(h.strip().lower() for h in value)


def check_allowed_hosts(value):
    """C{allowed_hosts} as a client writes them: every entry one the fence reads."""
    return _check_hosts(value, strict=True)


def check_app_name(value, field="name"):
    """C{value} if it may name a new app: a name, and not one of the API's routes."""
    check_name(value, field)
    if value in RESERVED_APP_NAMES:
        raise BadRequest(
            field, f"{value!r} is a route of the API and cannot name an app "
            f"(reserved: {', '.join(sorted(RESERVED_APP_NAMES))})",
        )
    return value


def reserved_apps(apps):
    """The names of C{apps} that are reserved words (kept from older versions)."""
    return sorted(a.name for a in apps if a.name in RESERVED_APP_NAMES)




@attrs.frozen
class App:
    """An application: a named group of instances sharing a default broker."""

    # Checked against the reserved words where a new app is made
    # (check_app_name), not here: an older state file may hold one.
    name: str = attrs.field(validator=_validator(check_name))
    broker: Broker = attrs.field(factory=Broker, validator=_check_broker)
    arguments: str = attrs.field(default="", validator=_validator(check_text, 4096, True))
    extra_config: dict = attrs.field(
        factory=dict, converter=_converter(check_json_object, "extra_config")
    )
    #: Hosts queued URLs may name (and redirect to); empty allows all.
    allowed_hosts: tuple = attrs.field(default=(), converter=lambda v: _check_hosts(v))
    #: Seconds a queued URL's request may take (per request: a header).
    task_timeout: float = attrs.field(
        default=60.0, converter=lambda v: check_seconds(v, "task_timeout", 3600.0)
    )
    #: Task modules its workers import (within the branch's --task-module).
    imports: tuple = attrs.field(default=(), converter=parse_imports)

    def to_json(self):
        data = {
            "name": self.name,
            "broker": self.broker.to_json(),
            "arguments": self.arguments,
            "extra_config": self.extra_config,
            "allowed_hosts": list(self.allowed_hosts),
            "task_timeout": self.task_timeout,
        }
        if self.imports:  # only then: older branches read the rest, replicated
            data["imports"] = list(self.imports)
        return data

    @classmethod
    def from_json(cls, data):
        data = dict(check_json_object(data, "app"))
        data["broker"] = Broker.from_json(data.get("broker") or {})
        return build(cls, data, "app")


def _check_exchange_type(instance, attribute, value):
    if value not in EXCHANGE_TYPES:
        raise BadRequest(
            "exchange_type", f"exchange_type must be one of {', '.join(EXCHANGE_TYPES)}"
        )


@attrs.frozen
class Queue:
    """
    A queue declaration: the queue, its exchange and their binding.

    The exchange and routing key default to the queue's name, as in the
    original cyme.
    """

    name: str = attrs.field(validator=_validator(check_name))
    exchange: str = attrs.field(
        default=attrs.Factory(lambda self: self.name, takes_self=True),
        validator=_validator(check_text, 255, True),
    )
    exchange_type: str = attrs.field(default="direct", validator=_check_exchange_type)
    routing_key: str = attrs.field(
        default=attrs.Factory(lambda self: self.name, takes_self=True),
        validator=_validator(check_text, 255, True),
    )
    options: dict = attrs.field(factory=dict, converter=_converter(check_json_object, "options"))

    def to_json(self):
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data):
        return build(cls, data, "queue")


def _queue_tuple(value):
    # A string is iterable too, but "abc" is not the list ["a", "b", "c"].
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BadRequest("queues", "queues must be a list of queue names")
    return tuple(value)


def _check_queue_names(instance, attribute, value):
    if not isinstance(value, tuple):
        raise BadRequest("queues", "queues must be a list of queue names")
    for name in value:
        check_name(name, "queues")
    if len(set(value)) != len(value):
        raise BadRequest("queues", "queues must not repeat a name")


def _check_min_concurrency(instance, attribute, value):
    if value > instance.max_concurrency:
        raise BadRequest(
            "min_concurrency", "min_concurrency must not be greater than max_concurrency"
        )


def _check_pool(instance, attribute, value):
    if value not in POOLS:
        raise BadRequest("pool", f"pool must be one of {', '.join(POOLS)}")


@attrs.frozen
class Instance:
    """
    A Celery worker instance: what it consumes and how many processes.

    C{broker} is None while the instance uses its app's broker.
    """

    name: str = attrs.field(validator=_validator(check_name))
    app: str = attrs.field(validator=_validator(check_name))
    queues: tuple = attrs.field(default=(), converter=_queue_tuple, validator=_check_queue_names)
    max_concurrency: int = attrs.field(
        default=1,
        converter=_converter(check_int, "max_concurrency", 1, MAX_CONCURRENCY),
    )
    min_concurrency: int = attrs.field(
        default=1,
        converter=_converter(check_int, "min_concurrency", 0, MAX_CONCURRENCY),
        validator=_check_min_concurrency,
    )
    is_enabled: bool = attrs.field(
        default=True, converter=_converter(check_bool, "is_enabled")
    )
    broker: Broker | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_check_broker),
    )
    pool: str = attrs.field(default="prefork", validator=_check_pool)
    arguments: str = attrs.field(default="", validator=_validator(check_text, 4096, True))
    extra_config: dict = attrs.field(
        factory=dict, converter=_converter(check_json_object, "extra_config")
    )

    def to_json(self):
        return {
            "name": self.name,
            "app": self.app,
            "queues": list(self.queues),
            "max_concurrency": self.max_concurrency,
            "min_concurrency": self.min_concurrency,
            "is_enabled": self.is_enabled,
            "broker": self.broker.to_json() if self.broker is not None else None,
            "pool": self.pool,
            "arguments": self.arguments,
            "extra_config": self.extra_config,
        }

    @classmethod
    def from_json(cls, data):
        data = dict(check_json_object(data, "instance"))
        if data.get("broker") is not None:
            data["broker"] = Broker.from_json(data["broker"])
        if "queues" in data and not isinstance(data["queues"], (list, tuple)):
            raise BadRequest("queues", "queues must be a list of queue names")
        return build(cls, data, "instance")
