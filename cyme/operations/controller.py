"""The operations of the API on apps, queues and instances.

The Controller owns no state: it checks each operation against the
store (an unknown app is a 404, an instance name taken by another app a
409), applies it, and tells its listeners (the supervisor) that the desired
state changed.  Operations are coroutines so that the cluster layer can
route them to other branches without changing any caller.
"""

import time
import uuid

import attrs
from twisted.logger import Logger

from cyme import logs
from cyme.state import params
from cyme.errors import Conflict, GatewayTimeout, NotFound, Unavailable
from cyme.state.models import App, Broker, check_name
from cyme.state.store import app_key, queue_key


@attrs.define
class Controller:
    store: object
    default_broker: Broker = attrs.field(factory=Broker)
    branch_id: str = "branch"
    listeners: list = attrs.field(factory=list)
    #: The L{cyme.supervision.supervisor.Supervisor} of this branch's workers, if any.
    supervisor: object = None
    #: How long creating an instance waits for its worker's first pong.
    ready_timeout: float = 10.0
    #: How long a live query (stats, queues) waits for the worker.
    query_timeout: float = 2.0
    #: Wall clock for replication versions (last writer wins).
    now: object = time.time

    log = Logger(observer=logs.observer)

    def _changed(self, what, **fields):
        self.log.info(
            "{what} {fields}", what=what,
            fields=" ".join(f"{k}={v}" for k, v in fields.items()), **fields,
        )
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                self.log.failure("state-change listener failed")

    def next_version(self, key):
        """A version newer than C{key}'s: (milliseconds, this branch's id)."""
        current = self.store.version(key)
        ms = int(self.now() * 1000)
        if current is not None and ms <= current[0]:
            ms = current[0] + 1
        return (ms, self.branch_id)

    # Apps

    async def apps(self):
        return self.store.apps()

    async def app(self, name):
        return self.store.get_app(check_name(name, "app"))

    async def put_app(self, name, values):
        """Create or update an app; returns C{(app, created)}."""
        check_name(name, "app")
        changes = params.app_changes(values)
        try:
            existing = self.store.get_app(name)
        except NotFound:
            existing = None
        if existing is None or params.names_broker(values):
            changes["broker"] = params.broker(values, self.default_broker)
        if existing is None:
            app = App(name=name, **changes)
        else:
            app = attrs.evolve(existing, **changes)
        created = self.store.put_app(app, self.next_version(app_key(name)))
        self._changed("app.put", app=name, created=created)
        return app, created

    async def delete_app(self, name):
        removed = self.store.delete_app(
            check_name(name, "app"), self.next_version(app_key(name))
        )
        self._changed("app.delete", app=name, instances=[i.name for i in removed])

    # Queues

    async def queues(self, app):
        await self.app(app)
        return self.store.queues(app)

    async def queue(self, app, name):
        await self.app(app)
        return self.store.get_queue(app, check_name(name, "queue"))

    async def put_queue(self, app, name, values):
        await self.app(app)
        queue = params.queue(check_name(name, "queue"), values)
        created = self.store.put_queue(app, queue, self.next_version(queue_key(app, name)))
        self._changed("queue.put", app=app, queue=name, created=created)
        return queue, created

    async def delete_queue(self, app, name):
        await self.queue(app, name)
        self.store.delete_queue(app, name, self.next_version(queue_key(app, name)))
        self._changed("queue.delete", app=app, queue=name)

    # Instances

    async def instances(self, app):
        await self.app(app)
        return self.store.instances(app)

    async def instance(self, app, name):
        await self.app(app)
        instance = self.store.get_instance(check_name(name, "instance"))
        if instance.app != app:
            raise NotFound("instance", name)
        return instance

    def _check_queues(self, app, names):
        for name in names:
            self.store.get_queue(app, name)

    async def put_instance(self, app, name, values, wait=True):
        """
        Create (or update) an instance; returns C{(instance, created)}.

        Without a name the instance is anonymous and gets a UUID, as in the
        original cyme.  With C{wait}, answers once its worker answered its
        first ping (or after C{ready_timeout}, still starting).
        """
        await self.app(app)
        name = check_name(name if name is not None else str(uuid.uuid4()), "instance")
        try:
            existing = self.store.get_instance(name)
        except NotFound:
            existing = None
        if existing is not None and existing.app != app:
            raise Conflict(
                f"instance {name} already exists in app {existing.app}",
                name=name, app=existing.app,
            )
        instance = params.instance(name, app, values, existing)
        self._check_queues(app, instance.queues)
        created = self.store.put_instance(instance)
        self._changed("instance.put", app=app, instance=name, created=created)
        if wait and instance.is_enabled:
            await self._wait_ready(name)
        return instance, created

    async def _wait_ready(self, name):
        if self.supervisor is not None:
            await self.supervisor.wait_ready(name, self.ready_timeout)

    async def delete_instance(self, app, name):
        await self.instance(app, name)
        self.store.delete_instance(name)
        self._changed("instance.delete", app=app, instance=name)

    async def add_consumer(self, app, name, queue):
        """Make an instance consume a declared queue; True if it was new."""
        instance = await self.instance(app, name)
        self.store.get_queue(app, check_name(queue, "queue"))
        if queue in instance.queues:
            return False
        self.store.put_instance(
            attrs.evolve(instance, queues=instance.queues + (queue,))
        )
        self._changed("instance.consume", app=app, instance=name, queue=queue)
        return True

    async def cancel_consumer(self, app, name, queue):
        instance = await self.instance(app, name)
        self.store.get_queue(app, check_name(queue, "queue"))
        if queue in instance.queues:
            self.store.put_instance(
                attrs.evolve(
                    instance, queues=[q for q in instance.queues if q != queue]
                )
            )
            self._changed("instance.cancel", app=app, instance=name, queue=queue)

    async def set_autoscale(self, app, name, values):
        instance = params.autoscale(values, await self.instance(app, name))
        self.store.put_instance(instance)
        self._changed(
            "instance.autoscale", app=app, instance=name,
            max=instance.max_concurrency, min=instance.min_concurrency,
        )
        return instance

    async def restart(self, app, name):
        """Restart an instance's worker (clearing quarantine); wait for it."""
        instance = await self.instance(app, name)
        supervisor = self._supervisor()
        self.log.info("instance.restart app={app} instance={instance}", app=app, instance=name)
        await supervisor.restart(name)
        if instance.is_enabled:
            await self._wait_ready(name)
        return instance

    async def set_enabled(self, app, name, enabled):
        instance = await self.instance(app, name)
        if instance.is_enabled != enabled:
            instance = attrs.evolve(instance, is_enabled=enabled)
            self.store.put_instance(instance)
            self._changed(
                "instance.enable" if enabled else "instance.disable",
                app=app, instance=name,
            )
        if enabled:
            await self._wait_ready(name)
        elif self.supervisor is not None:
            await self.supervisor.wait_stopped(name)
        return instance

    def _supervisor(self):
        if self.supervisor is None:
            raise Unavailable("this branch runs no supervisor")
        return self.supervisor

    async def _ask_worker(self, app, name, command):
        await self.instance(app, name)
        supervisor = self._supervisor()
        node = supervisor.node(name)
        replies = await command(supervisor.control)([node], self.query_timeout)
        if node not in replies:
            raise GatewayTimeout(
                f"instance {name} did not answer within {self.query_timeout:g} s",
                name=name, state=supervisor.status(name)["state"],
            )
        return replies[node]

    async def stats(self, app, name):
        """The worker's live statistics (Celery's C{stats} remote command)."""
        return await self._ask_worker(app, name, lambda control: control.stats)

    async def live_queues(self, app, name):
        """The names of the queues the worker consumes right now."""
        queues = await self._ask_worker(app, name, lambda control: control.active_queues)
        return [q.get("name") for q in queues if isinstance(q, dict)]

    def describe(self, instance):
        """The instance's JSON with its broker resolved, as the seed shows it."""
        data = instance.to_json()
        broker = instance.broker
        if broker is None:
            try:
                broker = self.store.get_app(instance.app).broker
            except NotFound:
                broker = self.default_broker
        data["broker"] = broker.to_json()
        data["branch"] = self.branch_id
        if self.supervisor is not None:
            data.update(self.supervisor.status(instance.name))
        return data
