"""Where a branch keeps the desired state: apps, queue declarations, instances.

``IStore`` is the interface; ``JSONFileStore`` keeps everything in one JSON
file under the branch's root directory and replaces that file atomically
on every change; ``MemoryStore`` is the same store without the file, for
tests.  The store checks nothing but its own consistency: a delete
cascades (an app's instances and queues, a queue from its consumers) in
the same single write, so a crash never leaves half of it behind.
"""

import json
import os

import attrs
from zope.interface import Interface, implementer

from cyme.errors import NotFound, StartupError
from cyme.models import App, Instance, Queue

SCHEMA_VERSION = 1


class IStore(Interface):
    """The desired state of this branch."""

    def apps():
        """All apps, sorted by name."""

    def get_app(name):
        """The L{App} called C{name}; raises L{NotFound}."""

    def put_app(app):
        """Create or replace C{app}; returns True if it was created."""

    def delete_app(name):
        """Delete an app with its queues and instances; returns the instances."""

    def queues(app):
        """The queue declarations of app C{app}, sorted by name."""

    def get_queue(app, name):
        """The L{Queue} C{name} of app C{app}; raises L{NotFound}."""

    def put_queue(app, queue):
        """Create or replace a declaration; returns True if it was created."""

    def delete_queue(app, name):
        """Delete a declaration and stop every instance of C{app} consuming it."""

    def instances(app=None):
        """Instances (of C{app}, or all), sorted by name."""

    def get_instance(name):
        """The L{Instance} called C{name}; raises L{NotFound}."""

    def put_instance(instance):
        """Create or replace C{instance}; returns True if it was created."""

    def delete_instance(name):
        """Delete an instance; returns it."""


@attrs.frozen
class _State:
    apps: dict = attrs.field(factory=dict)
    queues: dict = attrs.field(factory=dict)  # app name -> {queue name: Queue}
    instances: dict = attrs.field(factory=dict)

    def to_json(self):
        return {
            "schema": SCHEMA_VERSION,
            "apps": {n: a.to_json() for n, a in sorted(self.apps.items())},
            "queues": {
                app: {n: q.to_json() for n, q in sorted(qs.items())}
                for app, qs in sorted(self.queues.items())
            },
            "instances": {n: i.to_json() for n, i in sorted(self.instances.items())},
        }

    @classmethod
    def from_json(cls, data):
        state = cls(
            apps={n: App.from_json(a) for n, a in data["apps"].items()},
            queues={
                app: {n: Queue.from_json(q) for n, q in qs.items()}
                for app, qs in data["queues"].items()
            },
            instances={n: Instance.from_json(i) for n, i in data["instances"].items()},
        )
        # Records are looked up by their key: one stored under another
        # name would be served under the wrong name.
        keyed = [state.apps, state.instances, *state.queues.values()]
        for records in keyed:
            for key, record in records.items():
                if key != record.name:
                    raise ValueError(f"{record.name!r} is stored under the key {key!r}")
        return state


@implementer(IStore)
class MemoryStore:
    """
    The store's logic over an in-memory state.

    Every change builds a new L{_State} and hands it to L{_commit}; only once
    that returns does the store serve the new state, so a failed write
    leaves both the disk and the memory as they were.
    """

    def __init__(self, state=None):
        self._state = state if state is not None else _State()

    def _commit(self, state):
        self._state = state

    def _change(self, **changes):
        self._commit(attrs.evolve(self._state, **changes))

    def apps(self):
        return [self._state.apps[n] for n in sorted(self._state.apps)]

    def get_app(self, name):
        try:
            return self._state.apps[name]
        except KeyError:
            raise NotFound("app", name) from None

    def put_app(self, app):
        created = app.name not in self._state.apps
        self._change(apps={**self._state.apps, app.name: app})
        return created

    def delete_app(self, name):
        self.get_app(name)
        apps = dict(self._state.apps)
        del apps[name]
        queues = dict(self._state.queues)
        queues.pop(name, None)
        removed = [i for i in self.instances(name)]
        instances = {n: i for n, i in self._state.instances.items() if i.app != name}
        self._change(apps=apps, queues=queues, instances=instances)
        return removed

    def queues(self, app):
        declared = self._state.queues.get(app, {})
        return [declared[n] for n in sorted(declared)]

    def get_queue(self, app, name):
        try:
            return self._state.queues[app][name]
        except KeyError:
            raise NotFound("queue", name) from None

    def put_queue(self, app, queue):
        declared = self._state.queues.get(app, {})
        created = queue.name not in declared
        self._change(
            queues={**self._state.queues, app: {**declared, queue.name: queue}}
        )
        return created

    def delete_queue(self, app, name):
        queue = self.get_queue(app, name)
        declared = dict(self._state.queues[app])
        del declared[name]
        instances = dict(self._state.instances)
        for instance in self.instances(app):
            if name in instance.queues:
                instances[instance.name] = attrs.evolve(
                    instance, queues=[q for q in instance.queues if q != name]
                )
        self._change(
            queues={**self._state.queues, app: declared}, instances=instances
        )
        return queue

    def instances(self, app=None):
        return [
            i
            for n, i in sorted(self._state.instances.items())
            if app is None or i.app == app
        ]

    def get_instance(self, name):
        try:
            return self._state.instances[name]
        except KeyError:
            raise NotFound("instance", name) from None

    def put_instance(self, instance):
        created = instance.name not in self._state.instances
        self._change(instances={**self._state.instances, instance.name: instance})
        return created

    def delete_instance(self, name):
        instance = self.get_instance(name)
        instances = dict(self._state.instances)
        del instances[name]
        self._change(instances=instances)
        return instance


class JSONFileStore(MemoryStore):
    """
    The store kept in one JSON file, replaced atomically on every change.

    The new content goes to a temporary file beside the old one, is fsynced,
    renamed over it and the directory fsynced, so after a crash the file
    holds either the old state or the new one, never a mix.
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)
        super().__init__(self._load())

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return _State()
        except OSError as e:
            raise StartupError(f"cannot read state file {self.path}: {e.strerror}") from e
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or "schema" not in data:
                raise ValueError("no schema version")
            if type(data["schema"]) is not int or data["schema"] != SCHEMA_VERSION:
                raise StartupError(
                    f"state file {self.path} has schema version {data['schema']!r}; "
                    f"this cyme reads version {SCHEMA_VERSION}"
                )
            return _State.from_json(data)
        except StartupError:
            raise
        except Exception as e:
            # Never start over an unreadable file: starting empty would
            # overwrite the operator's state at the first change.
            raise StartupError(
                f"state file {self.path} is corrupt ({e}); "
                "restore it or move it away to start empty"
            ) from e

    def _commit(self, state):
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode("utf-8")
        directory = os.path.dirname(self.path)
        temp = self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        dirfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        super()._commit(state)
