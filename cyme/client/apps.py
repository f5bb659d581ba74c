"""The cluster and its apps, for L{cyme.client}: L{Client} and L{App}."""

from cyme.client.events import follow
from cyme.client.instances import Instance, Instances
from cyme.client.queues import Queues
from cyme.client.records import Record, bang, name_of
from cyme.client.tasks import Task
from cyme.client.transport import DEFAULT_TIMEOUT, Transport, path


class App(Record):
    """
    An app as the branch described it (C{name}, C{broker}, C{arguments},
    C{extra_config}, C{allowed_hosts}, C{task_timeout}...), with its
    C{queues} and C{instances}, and the URLs it queues.
    """

    def __init__(self, client, info):
        super().__init__(info)
        self.client = client
        self.transport = client.transport
        self.queues = Queues(self)
        self.instances = Instances(self)

    def refresh(self):
        return self.client.get(self.name)

    def update(self, **params):
        """Change the app's settings: C{broker}, C{arguments}, C{extra_config}..."""
        return self.client.add(self.name, **params)

    def delete(self, nowait=False):
        return self.client.delete(self.name, nowait=nowait)

    def queue(self, queue, url, data=None, method=None, params=None, timeout=None):
        """
        Queue an HTTP request that one of the app's workers consuming
        C{queue} makes: C{url} with C{params} in its query string and
        C{data} (a dict: a form; bytes or str: sent as they are) as its
        body, by C{method} (GET, or POST when there is data).  C{timeout}:
        the seconds the request may take (the app's C{task_timeout} by
        default).  A L{Task}, once the broker confirmed it.
        """
        method = (method or ("POST" if data is not None else "GET")).upper()
        target = path(self.name, "queue", name_of(queue)) + url
        headers = {}
        if timeout is not None:
            headers["Cyme-Timeout"] = f"{timeout:g}"
        form = raw = None
        if isinstance(data, dict):
            form = data
        elif data is not None:
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            headers.setdefault("Content-Type", "application/octet-stream")
        answer, headers = self.transport.exchange(method, target, params=params, form=form,
                                                  raw=raw, headers=headers)
        if answer is None:  # HEAD: no body; the Location names the task
            uuid = headers.get("Location", "").rstrip("/").split("/")[-2]
            answer = {"uuid": uuid, "queue": name_of(queue), "method": method}
        return Task(self, answer["uuid"], answer)

    def task(self, uuid):
        """The handle of a task queued earlier, by its uuid."""
        return Task(self, uuid)


class Listing(list):
    """A list that may also be called for itself: a property that once was a method."""

    def __call__(self):
        return list(self)


class Tokens:
    """C{client.tokens}: the API's tokens (the C{admin} scope)."""

    def __init__(self, transport):
        self.transport = transport

    def all(self):
        """Every token: C{{"name", "scopes", "created", "expires"}} (no secret)."""
        return self.transport.request("GET", path("tokens"))

    def add(self, name, scope="read", expires=None, nowait=False):
        """
        Make a token: C{scope} is C{"read"}, C{"read,write"}, a list...;
        C{expires} seconds or C{"30d"}.  Its JSON with the secret
        (C{"token"}), shown this once.  C{nowait}: answered before every
        branch has it.
        """
        if not isinstance(scope, str):
            scope = ",".join(scope)
        return self.transport.request(
            "POST", path("tokens", *bang(nowait)),
            body={"name": name, "scope": scope, "expires": expires},
        )

    def delete(self, name, nowait=False):
        """Revoke a token everywhere."""
        return self.transport.request("DELETE", path("tokens", *bang(nowait), name))


class Client:
    """
    A cyme cluster through one of its branches: C{url} (default
    C{http://localhost:8000}), a bearer C{token}, C{cacert} (the CA file
    of a branch served over TLS with a private CA), C{timeout} (seconds per
    call).  Calls are synchronous; errors are L{cyme.client.errors}'s.
    """

    def __init__(self, url=None, token=None, cacert=None, timeout=DEFAULT_TIMEOUT,
                 on_partial=None):
        self.transport = Transport(url, token=token, cacert=cacert, timeout=timeout,
                                   on_partial=on_partial)
        self.url = self.transport.url
        self.tokens = Tokens(self.transport)

    def __repr__(self):
        return f"<Client: {self.url!r}>"

    # Apps, as the original client had them

    def all(self):
        """The names of every app."""
        return self.transport.request("GET", "/")

    def get(self, name):
        return App(self, self.transport.request("GET", path(name_of(name))))

    def app(self, name):
        """A handle on app C{name} that reads nothing (its C{info} has only the name)."""
        return App(self, {"name": name_of(name)})

    def add(self, name, broker=None, arguments=None, extra_config=None, nowait=False,
            **params):
        """
        Create app C{name}, or change it: C{broker} an C{amqp://} URL
        (default: the branch's), or C{hostname}, C{port}, C{userid},
        C{password}, C{virtual_host}; C{arguments}, C{extra_config},
        C{allowed_hosts}, C{task_timeout}, C{imports}.  With C{nowait}
        (the original client's C{!}), the branch answers before every
        branch has it (202).
        """
        body = {"broker": broker, "arguments": arguments, "extra_config": extra_config,
                **params}
        answer = self.transport.request("PUT", path(*bang(nowait), name), body=body)
        return App(self, answer)

    def delete(self, name, nowait=False):
        """Delete the app with all its instances and queue declarations."""
        return self.transport.request("DELETE", path(*bang(nowait), name_of(name)))

    def __iter__(self):
        return iter(self.all())

    def __getitem__(self, name):
        return self.get(name)

    # The cluster

    @property
    def branches(self):
        """
        The ids of the live branches: C{client.branches}, a property as in
        the original client, or C{client.branches()}.
        """
        return Listing(self.transport.request("GET", path("branches")))

    def branch(self, branch_id):
        """A branch: C{{"id", "url", "instances", "load", "limits", "version", ...}}."""
        return self.transport.request("GET", path("branches", branch_id))

    # The original client's name of branch().
    branch_info = branch

    def instance(self, name):
        """An instance by its name alone (names are unique in the cluster)."""
        info = self.transport.request("GET", path("instances", name))
        return Instance(self.app(info["app"]), info)

    def ping(self):
        return self.transport.request("GET", path("ping"))

    def drift(self):
        """Every instance of the cluster whose worker is not as it asks (its C{drift})."""
        return self.transport.request("GET", path("drift"))

    def events(self, app=None, types=None, last=0, reconnect=True):
        """
        The cluster's events as they happen (an endless iterator of dicts:
        C{id}, C{time}, C{branch}, C{type}, C{app}, C{instance},
        C{reason}, C{peer}): C{app}'s, of C{types}, the latest C{last}
        first; C{reset} where some were lost (L{cyme.client.events}).
        """
        return follow(self.transport, app, types, last, reconnect)
