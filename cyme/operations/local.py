"""The API's operations as this branch performs them: records in, JSON out.

L{LocalOperations} implements L{IOperations} over this branch's store and
supervisor: it checks each operation against the store (an unknown app is
a 404, an instance name taken by another app a 409), applies it and
answers JSON.  Each name is checked once and the app looked up once per
operation.  It does not tell anyone about a change: the store does, to
whoever subscribed (the supervisor, the bus).  Listings return C{(names,
missing)}; C{missing} names the branches that did not answer (none here).
L{cyme.operations.cluster.ClusterOperations} runs the same operations on
the branch that owns each record.
"""

import time
import uuid

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from cyme import __version__, logs
from cyme.errors import Conflict, GatewayTimeout, NotFound, Unavailable
from cyme.cluster.presence import PROTOCOL_VERSION, load_figures
from cyme.operations.interfaces import IOperations
from cyme.operations.localtasks import LocalTasks
from cyme.operations.restarts import RestartOperations
from cyme.operations.tokens import LocalTokens
from cyme.state import params
from cyme.state.models import App, Broker, check_app_name, check_name
from cyme.state.workeroptions import WorkerPolicy
from cyme.state.store import app_key, queue_key


def _autoscale(instance):
    return {"max": instance.max_concurrency, "min": instance.min_concurrency}


@implementer(IOperations)
@attrs.define
class LocalOperations(LocalTasks, LocalTokens, RestartOperations):
    """
    The operations of one branch over its C{store} (an L{IStore}); every
    other collaborator is a keyword argument, None when this branch has
    none (no supervisor: nothing waits for workers; no task service: no
    queued URLs).
    """

    store: object
    branch_id: str = attrs.field(default="branch", kw_only=True)
    #: The broker of an app created without one.
    default_broker: Broker = attrs.field(factory=Broker, kw_only=True)
    #: The L{cyme.supervision.supervisor.Supervisor} of this branch's workers, if any.
    supervisor: object = attrs.field(default=None, kw_only=True)
    #: Celery's remote control of those workers (an L{IControl}): live queries.
    control: object = attrs.field(default=None, kw_only=True)
    #: The L{cyme.tasks.results.TaskService} of this branch, if it queues tasks.
    tasks: object = attrs.field(default=None, kw_only=True)
    #: Schedules the deadline of a wait for a task.
    clock: object = attrs.field(default=None, kw_only=True)
    #: What this branch's operator opened and capped (worker settings).
    worker_policy: WorkerPolicy = attrs.field(factory=WorkerPolicy, kw_only=True)
    #: Where other branches and clients reach this branch's API.
    url: str | None = attrs.field(default=None, kw_only=True)
    #: The name of the branches' cluster: its bus's queues and exchanges
    #: are no app's to declare.
    cluster: str = attrs.field(default="cyme", kw_only=True)
    #: How long creating (enabling, restarting) an instance waits for its
    #: worker's first pong.
    ready_timeout: float = attrs.field(default=10.0, kw_only=True)
    #: How long a live query (stats, queues) waits for the worker.
    query_timeout: float = attrs.field(default=2.0, kw_only=True)
    #: This branch's readiness (a L{cyme.operations.health.BranchHealth}), if
    #: it runs the parts that can fail.
    readiness: object = attrs.field(default=None, kw_only=True)
    #: This branch's events (an L{cyme.operations.eventhub.EventHub} of its log).
    events: object = attrs.field(default=None, kw_only=True)
    #: What differs in its instances (a L{cyme.operations.drift.DriftWatch}).
    drift: object = attrs.field(default=None, kw_only=True)
    #: The rolling restarts it coordinates (L{cyme.operations.rolling.RollingRestarts}).
    restarts: object = attrs.field(default=None, kw_only=True)
    #: Wall clock: replication versions (last writer wins) and uptime.
    now: object = attrs.field(default=time.time, kw_only=True)
    started: float = attrs.field(
        default=attrs.Factory(lambda self: self.now(), takes_self=True), kw_only=True
    )

    log = Logger(observer=logs.observer)

    def _log_change(self, what, **fields):
        """The info line every change of the desired state writes."""
        self.log.info(
            "{what} {fields}", what=what,
            fields=" ".join(f"{k}={v}" for k, v in fields.items()), **fields,
        )

    def _next_version(self, key):
        """A version newer than C{key}'s: (milliseconds, this branch's id)."""
        current = self.store.version(key)
        ms = int(self.now() * 1000)
        if current is not None and ms <= current[0]:
            ms = current[0] + 1
        return (ms, self.branch_id)

    def _app(self, name):
        return self.store.get_app(check_name(name, "app"))

    def _instance(self, app, name):
        """C{(app record, instance)}: the instance C{name} of C{app}, or 404."""
        record = self._app(app)
        instance = self.store.get_instance(check_name(name, "instance"))
        if instance.app != app:
            raise NotFound("instance", name)
        return record, instance

    # The branch

    def load(self):
        return load_figures(len(self.store.instances()))

    def branch_info(self, now):
        """This branch's JSON, as C{/branches/<id>} shows it."""
        return {
            "id": self.branch_id,
            "url": self.url,
            "instances": [i.name for i in self.store.instances()],
            "load": self.load(),
            "limits": self.worker_policy.limits(),
            "version": __version__,
            "uptime": self.now() - self.started,
            "last_heartbeat": now,
            "online": True,
            "protocol": PROTOCOL_VERSION,
        }

    def metrics(self):
        figures = {}
        if self.supervisor is not None:
            figures.update(self.supervisor.metrics())
        if self.tasks is not None:
            figures.update(queued=dict(self.tasks.queued), results_stored=dict(self.tasks.stored),
                           results_dropped=self.tasks.dropped)
        return figures

    def health(self, apps=True):
        if self.readiness is None:
            return {"ready": True, "branch": self.branch_id, "failing": {}}
        return self.readiness.report(apps)

    async def list_branches(self):
        return [self.branch_id]

    async def get_branch(self, branch_id):
        if branch_id != self.branch_id:
            raise NotFound("branch", branch_id)
        return self.branch_info(self.now())

    async def local_instances(self):
        return [
            self.describe(instance, app)
            for app in self.store.apps()
            for instance in self.store.instances(app.name)
        ]

    async def describe_instances(self, drift_only=False):
        return [i for i in await self.local_instances() if i["drift"] or not drift_only], []

    def watch_events(self, deliver, match=None, after=(), last=0):
        if self.events is None:
            raise Unavailable("this branch keeps no events")
        return self.events.watch(deliver, match, after, last)

    # Apps

    async def list_apps(self):
        return [a.name for a in self.store.apps()], []

    async def get_app(self, name):
        return self._app(name).to_json()

    async def put_app(self, name, values, wait=True):
        check_name(name, "app")
        changes = params.app_changes(values, self.worker_policy)
        try:
            existing = self.store.get_app(name)
        except NotFound:
            check_app_name(name)  # a new app; old ones may keep a reserved name
            existing = None
        if existing is None or params.names_broker(values):
            changes["broker"] = params.broker(values, self.default_broker)
        if existing is None:
            app = App(name=name, **changes)
        else:
            app = attrs.evolve(existing, **changes)
        created = self.store.put_app(app, self._next_version(app_key(name)))
        self._log_change("app.put", app=name, created=created)
        return app.to_json(), created, []

    async def delete_app(self, name, wait=True):
        removed = self.store.delete_app(
            check_name(name, "app"), self._next_version(app_key(name))
        )
        self._log_change("app.delete", app=name, instances=[i.name for i in removed])
        return []

    # Queue declarations

    async def list_queues(self, app):
        self._app(app)
        return [q.name for q in self.store.queues(app)], []

    async def get_queue(self, app, name):
        self._app(app)
        return self.store.get_queue(app, check_name(name, "queue")).to_json()

    async def put_queue(self, app, name, values, wait=True):
        self._app(app)
        queue = params.queue(check_name(name, "queue"), values, self.cluster)
        created = self.store.put_queue(app, queue, self._next_version(queue_key(app, name)))
        self._log_change("queue.put", app=app, queue=name, created=created)
        return queue.to_json(), created, []

    async def delete_queue(self, app, name, wait=True):
        self._app(app)
        # Raises NotFound, writing nothing, for an unknown queue.
        self.store.delete_queue(
            app, check_name(name, "queue"), self._next_version(queue_key(app, name))
        )
        self._log_change("queue.delete", app=app, queue=name)
        return []

    # Instances

    async def list_instances(self, app, fresh=False):
        self._app(app)
        return [i.name for i in self.store.instances(app)], []

    async def app_of_instance(self, name):
        return self.store.get_instance(check_name(name, "instance")).app

    async def get_instance(self, app, name):
        record, instance = self._instance(app, name)
        return self.describe(instance, record)

    async def put_instance(self, app, name, values, wait=True, branch=None):
        """
        Create (or change) an instance.  Without a name it is anonymous and
        gets a UUID, as in the original Cyme.  With C{wait}, answers once
        its worker answered its first ping (or after C{ready_timeout},
        still starting).
        """
        branch = params.branch(branch)
        if branch not in (None, self.branch_id):
            raise NotFound("branch", branch)
        record = self._app(app)
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
        instance = params.instance(name, app, values, existing, self.worker_policy)
        if existing is None:
            self._check_room()
        for queue in instance.queues:
            self.store.get_queue(app, queue)
        created = self.store.put_instance(instance)
        self._log_change("instance.put", app=app, instance=name, created=created)
        if wait and instance.is_enabled:
            await self._wait_ready(name)
        return self.describe(instance, record), created

    def _check_room(self):
        limit = self.worker_policy.max_instances
        if len(self.store.instances()) >= limit:
            raise Conflict(
                f"branch {self.branch_id} has {limit} instances, its --max-instances",
                limit="max_instances", branch=self.branch_id, max_instances=limit,
            )

    async def _wait_ready(self, name):
        if self.supervisor is not None:
            await self.supervisor.wait_ready(name, self.ready_timeout)

    async def delete_instance(self, app, name):
        self._instance(app, name)
        self.store.delete_instance(name)
        self._log_change("instance.delete", app=app, instance=name)

    async def add_consumer(self, app, name, queue):
        _, instance = self._instance(app, name)
        self.store.get_queue(app, check_name(queue, "queue"))
        if queue in instance.queues:
            return False
        self.store.put_instance(attrs.evolve(instance, queues=instance.queues + (queue,)))
        self._log_change("instance.consume", app=app, instance=name, queue=queue)
        return True

    async def cancel_consumer(self, app, name, queue):
        _, instance = self._instance(app, name)
        self.store.get_queue(app, check_name(queue, "queue"))
        if queue in instance.queues:
            self.store.put_instance(
                attrs.evolve(instance, queues=[q for q in instance.queues if q != queue])
            )
            self._log_change("instance.cancel", app=app, instance=name, queue=queue)

    async def get_consumer(self, app, name, queue):
        _, instance = self._instance(app, name)
        if check_name(queue, "queue") not in instance.queues:
            raise NotFound("consumer", queue, f"instance {name} does not consume {queue}")
        return self.store.get_queue(app, queue).to_json()

    async def instance_queues(self, app, name):
        if self.supervisor is None:
            return list(self._instance(app, name)[1].queues)
        queues = await self._ask_worker(app, name, "active_queues")
        return [q.get("name") for q in queues if isinstance(q, dict)]

    async def get_autoscale(self, app, name):
        return _autoscale(self._instance(app, name)[1])

    async def set_autoscale(self, app, name, values):
        existing = self._instance(app, name)[1]
        instance = params.autoscale(values, existing, self.worker_policy)
        if instance == existing:  # nothing set: the bounds are read
            return _autoscale(instance)
        self.store.put_instance(instance)
        self._log_change(
            "instance.autoscale", app=app, instance=name,
            max=instance.max_concurrency, min=instance.min_concurrency,
        )
        return _autoscale(instance)

    async def restart(self, app, name, wait=True):
        """Restart an instance's worker (clearing quarantine); wait for it."""
        record, instance = self._instance(app, name)
        supervisor = self._supervisor()
        self._log_change("instance.restart", app=app, instance=name)
        restarted = supervisor.restart(name)
        if not wait:
            restarted.addErrback(lambda f: self.log.failure(
                "restart of {instance}", f, instance=name))
            return self.describe(instance, record)
        await restarted
        if instance.is_enabled:
            await self._wait_ready(name)
        return self.describe(instance, record)

    async def set_enabled(self, app, name, enabled, wait=True):
        record, instance = self._instance(app, name)
        if instance.is_enabled != enabled:
            instance = attrs.evolve(instance, is_enabled=enabled)
            self.store.put_instance(instance)
            self._log_change(
                "instance.enable" if enabled else "instance.disable", app=app, instance=name,
            )
        if wait and enabled:
            await self._wait_ready(name)
        elif wait and self.supervisor is not None:
            await self.supervisor.wait_stopped(name)
        return self.describe(instance, record)

    async def stats(self, app, name):
        """The worker's live statistics (Celery's C{stats} remote command)."""
        return await self._ask_worker(app, name, "stats")

    def _supervisor(self):
        if self.supervisor is None:
            raise Unavailable("this branch runs no supervisor")
        return self.supervisor

    async def _ask_worker(self, app, name, command):
        self._instance(app, name)
        supervisor = self._supervisor()
        state = supervisor.status(name)["state"]
        if state != "running" and state != "stopped" and not self.control.reachable(
                supervisor.node(name)):
            # Its broker is out of this branch's reach: try again later.
            raise Unavailable(f"the broker of instance {name} is not reachable now",
                              name=name, state=state)
        if state != "running":
            # Only a worker that answers pings answers a live query: no
            # need to wait out the timeout to say so.
            raise Conflict(
                f"instance {name} is {state}: only a running worker answers live queries",
                name=name, state=state,
            )
        node = supervisor.node(name)
        ask = getattr(self.control, command)
        replies = await ask([node], self.query_timeout)
        if node not in replies:
            raise GatewayTimeout(
                f"instance {name} did not answer within {self.query_timeout:g} s",
                name=name, state=supervisor.status(name)["state"],
            )
        return replies[node]

    def describe(self, instance, app=None):
        """
        The instance's JSON with its broker resolved (its own, else its
        app's, as the original Cyme shows it) and its worker's live state.
        C{app} is its app's record when the caller has it already.
        """
        data = instance.to_json()
        broker = instance.broker
        if broker is None:
            if app is None:
                try:
                    app = self.store.get_app(instance.app)
                except NotFound:
                    pass
            broker = app.broker if app is not None else self.default_broker
        data["broker"] = broker.to_json()
        data["branch"] = self.branch_id
        if self.supervisor is not None:
            data.update(self.supervisor.status(instance.name))
        data["drift"] = self.drift.of(data) if self.drift is not None else []
        return data
