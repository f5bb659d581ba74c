"""An app's worker instances and what each consumes, for L{cyme.client}."""

from cyme.client.errors import NotFound
from cyme.client.queues import Queue
from cyme.client.records import Record, Section, bang, name_of
from cyme.client.transport import path


class Instance(Record):
    """
    A worker instance as its branch described it: C{name}, C{app},
    C{branch}, C{queue_names}, C{max_concurrency}, C{min_concurrency},
    C{is_enabled}, C{broker}, C{pool}, and the live side: C{state},
    C{pid}, C{restarts}, C{last_error}, C{live}...
    """

    def __init__(self, app, info):
        super().__init__(info)
        self.app = app
        self.consumers = Consumers(self)

    @property
    def queue_names(self):
        """The queues it is to consume (the original client's name)."""
        return list(self.info.get("queues") or ())

    @property
    def queues(self):
        """The declarations of the queues it is to consume."""
        return [self.app.queues.get(name) for name in self.queue_names]

    def refresh(self):
        return self.app.instances.get(self.name)

    def stats(self):
        return self.app.instances.stats(self.name)

    def autoscale(self, max=None, min=None, nowait=False):
        return self.app.instances.autoscale(self.name, max=max, min=min, nowait=nowait)

    def restart(self, nowait=False):
        return self.app.instances.restart(self.name, nowait=nowait)

    def enable(self, nowait=False):
        return self.app.instances.enable(self.name, nowait=nowait)

    def disable(self, nowait=False):
        return self.app.instances.disable(self.name, nowait=nowait)

    def delete(self, nowait=False):
        return self.app.instances.delete(self.name, nowait=nowait)


class Consumers(Section):
    """C{instance.consumers}: the queues an instance consumes."""

    def __init__(self, instance):
        self.instance = instance

    def _path(self, queue=None, nowait=False):
        app, name = self.instance.app.name, self.instance.name
        tail = bang(nowait) + ((name_of(queue),) if queue is not None else ())
        return path(app, "instances", name, "queues", *tail)

    def names(self):
        """The queues its worker consumes right now (its live C{active_queues})."""
        return self.instance.app.transport.request("GET", self._path())

    def get(self, queue):
        """The declaration of C{queue} if the instance consumes it (else L{NotFound})."""
        app = self.instance.app
        return Queue(app, app.transport.request("GET", self._path(queue)))

    def all(self):
        """The declarations of the declared queues its worker consumes."""
        found = []
        for name in self.names():
            try:
                found.append(self.get(name))
            except NotFound:  # its own dq.<name>, declared by no one
                pass
        return found

    def add(self, queue, nowait=False):
        """Make the instance consume the declared C{queue}: C{{"ok": "ok"}}."""
        return self.instance.app.transport.request("PUT", self._path(queue, nowait))

    def delete(self, queue, nowait=False):
        """Make it stop consuming C{queue}."""
        return self.instance.app.transport.request("DELETE", self._path(queue, nowait))

    def __repr__(self):
        return f"<Consumers of {self.instance.name!r}>"


class Instances(Section):
    """C{app.instances}: the app's worker instances, on every branch."""

    def __init__(self, app):
        self.app = app

    def _path(self, name=None, *rest, nowait=False):
        named = (name_of(name),) if name is not None else ()
        return path(self.app.name, "instances", *bang(nowait), *named, *rest)

    def _request(self, method, *args, **kwargs):
        return self.app.transport.request(method, *args, **kwargs)

    def names(self):
        return self._request("GET", self._path())

    def get(self, name):
        return Instance(self.app, self._request("GET", self._path(name)))

    def named(self, name):
        """A handle on instance C{name} that reads nothing (its C{info} has only the name)."""
        return Instance(self.app, {"name": name_of(name)})

    def add(self, name=None, broker=None, arguments=None, config=None, nowait=False,
            **params):
        """
        Create an instance (C{name} None: the branch names it with a UUID)
        and start its worker; answers once the worker answered its first
        ping, or at once with C{nowait}.  C{broker}: an C{amqp://} URL
        (default: the app's).  C{config}: its C{extra_config} (Celery
        settings), as the original client named it.  C{params}: C{queues},
        C{max_concurrency}, C{min_concurrency}, C{pool}, C{is_enabled},
        C{extra_config}, C{branch} (where to place it)...
        """
        if config is not None:
            if params.get("extra_config") is not None:
                raise TypeError("config and extra_config name the same setting: give one")
            params["extra_config"] = config
        answer = self._request("PUT", self._path(name, nowait=nowait),
                               body={"broker": broker, "arguments": arguments, **params})
        return Instance(self.app, answer)

    def update(self, name, **params):
        """Change an instance's settings (a changed worker is restarted)."""
        return Instance(self.app, self._request("PUT", self._path(name), body=params))

    def delete(self, name, nowait=False):
        """Delete the instance: its worker is stopped and its directory removed."""
        return self._request("DELETE", self._path(name, nowait=nowait))

    def stats(self, name):
        """The worker's live statistics (Celery's C{stats})."""
        return self._request("GET", self._path(name, "stats"))

    def autoscale(self, name, max=None, min=None, nowait=False):
        """
        The autoscale bounds C{{"max", "min"}}; sets those given first
        (with C{nowait}, the branch answers before the worker applied them).
        """
        if max is None and min is None and not nowait:
            return self._request("GET", self._path(name, "autoscale"))
        return self._request("POST", self._path(name, "autoscale", nowait=nowait),
                             body={"max": max, "min": min})

    def restart(self, name, nowait=False):
        """Restart the worker now (clears a quarantine); answers once it is up."""
        return self._change(name, "restart", nowait)

    def enable(self, name, nowait=False):
        return self._change(name, "enable", nowait)

    def disable(self, name, nowait=False):
        """Stop the worker and keep it stopped; answers once it is gone."""
        return self._change(name, "disable", nowait)

    def _change(self, name, action, nowait):
        # nowait: the branch answers 202 at once, the worker's change to come.
        return Instance(self.app, self._request("POST", self._path(name, action,
                                                                   nowait=nowait)))

    def __repr__(self):
        return f"<Instances of {self.app.name!r}>"
