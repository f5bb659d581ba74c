"""Where a branch keeps the desired state: apps, queue declarations, instances.

``IStore`` is the interface; ``JSONFileStore`` keeps everything in one JSON
file under the branch's root directory and replaces that file atomically
on every change; ``MemoryStore`` is the same store without the file, for
tests.  The store checks nothing but its own consistency: a delete
cascades (an app's instances and queues, a queue from its consumers) in
the same single write, so a crash never leaves half of it behind.

The store is also the source of change events: whoever acts on the desired
state (the supervisor, the bus's announcements) subscribes to it rather
than being called by whoever changed it.
"""

import hashlib
import json
import os

import attrs
from zope.interface import implementer

from cyme import __version__
from cyme.errors import NotFound, StartupError
from cyme.listeners import Listeners
from cyme.state import tokens as _tokens
from cyme.state.models import App, Instance, Queue
from cyme.state.schema import SCHEMA_VERSION, corrupt, keep_old_file, read


@attrs.frozen
class StoreChange:
    """
    What one successful write changed.

    C{kind} names the write: C{put_app}, C{delete_app}, C{put_queue},
    C{delete_queue}, C{put_instance}, C{delete_instance}, C{put_token},
    C{delete_token} or C{merge}; C{key} names the record: C{app/<name>},
    C{queue/<app>/<name>}, C{instance/<name>}, C{token/<name>}, or None for
    a merge (which may change many).
    """

    kind: str
    key: str | None = None


class IStore(_tokens.ITokenStore):
    """The desired state of this branch."""

    def subscribe(listener):
        """
        Call C{listener(change)} after every successful write, with a
        L{StoreChange}; a write that failed (or a merge that changed
        nothing) calls nobody.  A listener that raises is logged and the
        others are still called; the write stands.

        Listeners that only need to know I{that} something changed ignore
        the argument (C{supervisor.reconcile(change=None)}).
        """

    def apps():
        """All apps, sorted by name."""

    def get_app(name):
        """The L{App} called C{name}; raises L{NotFound}."""

    def put_app(app, version=None):
        """Create or replace C{app}; returns True if it was created."""

    def delete_app(name, version=None):
        """Delete an app with its queues and instances; returns the instances."""

    def queues(app):
        """The queue declarations of app C{app}, sorted by name."""

    def get_queue(app, name):
        """The L{Queue} C{name} of app C{app}; raises L{NotFound}."""

    def put_queue(app, queue, version=None):
        """Create or replace a declaration; returns True if it was created."""

    def delete_queue(app, name, version=None):
        """Delete a declaration and stop every instance of C{app} consuming it."""

    def instances(app=None):
        """Instances (of C{app}, or all), sorted by name."""

    def get_instance(name):
        """The L{Instance} called C{name}; raises L{NotFound}."""

    def put_instance(instance):
        """Create or replace C{instance}; returns True if it was created."""

    def delete_instance(name):
        """Delete an instance; returns it."""

    def version(key):
        """The replication version of C{key} (C{app/<name>},
        C{queue/<app>/<name>}): C{(milliseconds, branch id)}, or None."""

    def replica():
        """Apps, queues, tokens and their versions (tombstones included), as JSON."""

    def merge(replica):
        """Apply what in C{replica} (a checked L{Replica}) is newer; the instances removed."""

    def digest():
        """A short hash of every version: equal replicas, equal digests."""


def _version(value):
    """A version as stored: C{[milliseconds, branch id]}."""
    ms, branch = value
    if type(ms) is not int or not isinstance(branch, str):
        raise ValueError(f"bad version {value!r}")
    return (ms, branch)


def app_key(name):
    return f"app/{name}"


def queue_key(app, name):
    return f"queue/{app}/{name}"


def instance_key(name):
    return f"instance/{name}"


@attrs.frozen
class _State:
    apps: dict = attrs.field(factory=dict)
    queues: dict = attrs.field(factory=dict)  # app name -> {queue name: Queue}
    instances: dict = attrs.field(factory=dict)
    tokens: dict = attrs.field(factory=dict)  # name -> Token
    # Replication: "app/<name>" or "queue/<app>/<name>" -> (ms, branch id),
    # kept after a delete as its tombstone.
    versions: dict = attrs.field(factory=dict)

    def to_json(self):
        return {
            "schema": SCHEMA_VERSION,
            "written_by": __version__,
            "versions": {k: list(v) for k, v in sorted(self.versions.items())},
            "apps": {n: a.to_json() for n, a in sorted(self.apps.items())},
            "queues": {
                app: {n: q.to_json() for n, q in sorted(qs.items())}
                for app, qs in sorted(self.queues.items())
            },
            "instances": {n: i.to_json() for n, i in sorted(self.instances.items())},
            "tokens": {n: t.to_json() for n, t in sorted(self.tokens.items())},
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
            versions={k: _version(v) for k, v in data.get("versions", {}).items()},
            tokens={n: _tokens.Token.from_json(t) for n, t in data.get("tokens", {}).items()},
        )
        # Records are looked up by their key: one stored under another
        # name would be served under the wrong name.
        keyed = [state.apps, state.instances, state.tokens, *state.queues.values()]
        for records in keyed:
            for key, record in records.items():
                if key != record.name:
                    raise ValueError(f"{record.name!r} is stored under the key {key!r}")
        return state


@implementer(IStore)
class MemoryStore(_tokens.TokenRecords):
    """
    The store's logic over an in-memory state.

    Every change builds a new L{_State} and hands it to L{_commit}; only once
    that returns does the store serve the new state, so a failed write
    leaves both the disk and the memory as they were.
    """

    def __init__(self, state=None):
        self._state = state if state is not None else _State()
        self._digest = None  # (state, its digest), of the state last asked
        self._listeners = Listeners("store change")

    def subscribe(self, listener):
        self._listeners.add(listener)

    def _commit(self, state):
        self._state = state

    def _change(self, change, **changes):
        """Commit C{changes}, then tell the listeners about C{change}."""
        self._commit(attrs.evolve(self._state, **changes))
        self._listeners.notify(change)

    def apps(self):
        return [self._state.apps[n] for n in sorted(self._state.apps)]

    def get_app(self, name):
        try:
            return self._state.apps[name]
        except KeyError:
            raise NotFound("app", name) from None

    def _versions(self, version, *keys):
        if version is None:
            return self._state.versions
        return {**self._state.versions, **{k: tuple(version) for k in keys}}

    def put_app(self, app, version=None):
        created = app.name not in self._state.apps
        self._change(
            StoreChange("put_app", app_key(app.name)),
            apps={**self._state.apps, app.name: app},
            versions=self._versions(version, app_key(app.name)),
        )
        return created

    def delete_app(self, name, version=None):
        self.get_app(name)
        changes, removed = self._without_app(self._state, name, version)
        self._change(StoreChange("delete_app", app_key(name)), **changes)
        return removed

    def _without_app(self, state, name, version):
        apps = dict(state.apps)
        apps.pop(name, None)
        queues = dict(state.queues)
        gone = queues.pop(name, {})
        removed = [i for i in state.instances.values() if i.app == name]
        instances = {n: i for n, i in state.instances.items() if i.app != name}
        versions = dict(state.versions)
        if version is not None:
            versions[app_key(name)] = tuple(version)
            for queue in gone:
                versions[queue_key(name, queue)] = tuple(version)
        return dict(apps=apps, queues=queues, instances=instances, versions=versions), removed

    def queues(self, app):
        declared = self._state.queues.get(app, {})
        return [declared[n] for n in sorted(declared)]

    def get_queue(self, app, name):
        try:
            return self._state.queues[app][name]
        except KeyError:
            raise NotFound("queue", name) from None

    def put_queue(self, app, queue, version=None):
        declared = self._state.queues.get(app, {})
        created = queue.name not in declared
        self._change(
            StoreChange("put_queue", queue_key(app, queue.name)),
            queues={**self._state.queues, app: {**declared, queue.name: queue}},
            versions=self._versions(version, queue_key(app, queue.name)),
        )
        return created

    def delete_queue(self, app, name, version=None):
        queue = self.get_queue(app, name)
        self._change(
            StoreChange("delete_queue", queue_key(app, name)),
            **self._without_queue(self._state, app, name, version),
        )
        return queue

    def _without_queue(self, state, app, name, version):
        declared = dict(state.queues.get(app, {}))
        declared.pop(name, None)
        instances = dict(state.instances)
        for instance in state.instances.values():
            if instance.app == app and name in instance.queues:
                instances[instance.name] = attrs.evolve(
                    instance, queues=[q for q in instance.queues if q != name]
                )
        versions = dict(state.versions)
        if version is not None:
            versions[queue_key(app, name)] = tuple(version)
        return dict(queues={**state.queues, app: declared}, instances=instances,
                    versions=versions)

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
        self._change(
            StoreChange("put_instance", instance_key(instance.name)),
            instances={**self._state.instances, instance.name: instance},
        )
        return created

    def delete_instance(self, name):
        instance = self.get_instance(name)
        instances = dict(self._state.instances)
        del instances[name]
        self._change(StoreChange("delete_instance", instance_key(name)), instances=instances)
        return instance

    # Replication

    def version(self, key):
        return self._state.versions.get(key)

    def replica(self):
        state = self._state
        return {
            "apps": {n: a.to_json() for n, a in state.apps.items()},
            "queues": {
                app: {n: q.to_json() for n, q in qs.items()}
                for app, qs in state.queues.items()
            },
            "versions": {k: list(v) for k, v in state.versions.items()},
            "tokens": {n: t.to_json() for n, t in state.tokens.items()},
        }

    def merge(self, replica):
        """
        Last writer wins, record by record: a record (or tombstone) of
        C{replica} (a checked L{cyme.state.replica.Replica}) whose version
        is newer than ours replaces ours; ties go to the higher branch id,
        which the version's tuple order already says.
        """
        state = self._state
        removed = []
        changed = False
        # Apps before queues, so a queue lands in an app that exists.
        for key in sorted(replica.versions, key=lambda k: (not k.startswith("app/"), k)):
            version = replica.versions[key]
            current = state.versions.get(key)
            if current is not None and current >= version:
                continue
            changed = True
            kind, _, rest = key.partition("/")
            if kind == "app":
                app = replica.apps.get(rest)
                if app is not None:
                    state = attrs.evolve(
                        state, apps={**state.apps, rest: app},
                        versions={**state.versions, key: version},
                    )
                else:
                    changes, gone = self._without_app(state, rest, version)
                    removed += gone
                    state = attrs.evolve(state, **changes)
            elif kind == "queue":
                app, _, name = rest.partition("/")
                queue = replica.queues.get(app, {}).get(name)
                if queue is not None:
                    declared = state.queues.get(app, {})
                    state = attrs.evolve(
                        state, queues={**state.queues, app: {**declared, name: queue}},
                        versions={**state.versions, key: version},
                    )
                else:
                    state = attrs.evolve(
                        state, **self._without_queue(state, app, name, version)
                    )
            elif kind == "token":
                state = _tokens.merged(state, rest, replica.tokens.get(rest), version)
        if changed:
            self._commit(state)
            self._listeners.notify(StoreChange("merge"))
        return removed

    def digest(self):
        # Asked at every probe of the bus: computed once per state.
        if self._digest is None or self._digest[0] is not self._state:
            text = json.dumps(sorted((k, list(v)) for k, v in self._state.versions.items()))
            self._digest = (self._state, hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])
        return self._digest[1]


class JSONFileStore(MemoryStore):
    """
    The store kept in one JSON file, replaced atomically on every change.

    The new content goes to a temporary file beside the old one, fsynced, renamed
    over it, the directory fsynced: after a crash, the old state or the new one.
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)
        #: The schema of a file written by an older cyme (migrated in memory,
        #: rewritten at the first change, its old bytes kept: L{keep_old_file}),
        #: and what the migration removed; None and [] for a file of this cyme.
        self.migrated_from = None
        self.migration_notes = []
        self._old_bytes = None
        super().__init__(self._load())

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return _State()
        except OSError as e:
            raise StartupError(f"cannot read state file {self.path}: {e.strerror}") from e
        data, self.migration_notes, schema = read(raw, self.path)
        try:
            state = _State.from_json(data)
        except Exception as e:
            raise corrupt(self.path, e) from e
        if schema != SCHEMA_VERSION:
            self.migrated_from, self._old_bytes = schema, raw
        return state

    def _commit(self, state):
        if self._old_bytes is not None:
            keep_old_file(self.path, self.migrated_from, self._old_bytes)
            self._old_bytes = None
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
