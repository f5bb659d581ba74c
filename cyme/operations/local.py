"""The API's operations with JSON in and out, as this branch performs them.

The web layer and the bus both speak to an operations object: this one
runs everything on the local branch (its store and supervisor);
L{cyme.operations.cluster.ClusterOperations} has the same methods and routes each one
to the branch that owns the record.  Listings return C{(names, missing)},
C{missing} naming the branches that did not answer (none here).
"""

import os
import time

import attrs

from cyme import __version__
from twisted.internet import defer

from cyme.errors import BadRequest, GatewayTimeout, NotFound, Unavailable
from cyme.state.models import check_name


def _json(record):
    return record.to_json()


def load_figures(instances):
    """What a heartbeat says of this machine's load."""
    figures = {"instances": instances}
    try:
        figures["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    figures["mem_available"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return figures


MAX_WAIT = 300.0
DEFAULT_WAIT = 30.0


def _task_json(task_id, record):
    if record is None:
        return {"uuid": task_id, "state": "PENDING", "result": None}
    body = {"uuid": task_id, "state": record.state, "result": record.fields.get("result")}
    if record.fields.get("traceback"):
        body["traceback"] = record.fields["traceback"]
    return body


def wait_seconds(value):
    """The C{?timeout=} of a wait: default 30 s, at most 300 s."""
    if value in (None, ""):
        return DEFAULT_WAIT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadRequest("timeout", "timeout must be a number of seconds") from None
    if not 0 < seconds <= MAX_WAIT:
        raise BadRequest("timeout", f"timeout must be more than 0 and at most {MAX_WAIT:g} s")
    return seconds


@attrs.define
class LocalOperations:
    controller: object
    url: str | None = None
    started: float = attrs.field(factory=time.time)
    #: The L{cyme.tasks.results.TaskService} of this branch, if it queues tasks.
    tasks: object = None
    clock: object = None

    def load(self):
        return load_figures(len(self.controller.store.instances()))

    def branch_info(self, now):
        return {
            "id": self.controller.branch_id,
            "url": self.url,
            "instances": [i.name for i in self.controller.store.instances()],
            "load": self.load(),
            "version": __version__,
            "uptime": time.time() - self.started,
            "last_heartbeat": now,
            "online": True,
        }

    async def list_branches(self):
        return [self.controller.branch_id]

    async def get_branch(self, branch_id):
        if branch_id != self.controller.branch_id:
            raise NotFound("branch", branch_id)
        return self.branch_info(time.time())

    @property
    def supervisor(self):
        return self.controller.supervisor

    async def list_apps(self):
        return [a.name for a in await self.controller.apps()], []

    async def get_app(self, name):
        return _json(await self.controller.app(name))

    async def put_app(self, name, values):
        app, created = await self.controller.put_app(name, values)
        return _json(app), created, []

    async def delete_app(self, name):
        await self.controller.delete_app(name)
        return []

    async def list_queues(self, app):
        return [q.name for q in await self.controller.queues(app)], []

    async def get_queue(self, app, name):
        return _json(await self.controller.queue(app, name))

    async def put_queue(self, app, name, values):
        queue, created = await self.controller.put_queue(app, name, values)
        return _json(queue), created, []

    async def delete_queue(self, app, name):
        await self.controller.delete_queue(app, name)
        return []

    async def list_instances(self, app):
        return [i.name for i in await self.controller.instances(app)], []

    async def app_of_instance(self, name):
        """The app of instance C{name} (names are unique: no app needed)."""
        return self.controller.store.get_instance(check_name(name, "instance")).app

    async def get_instance(self, app, name):
        return self.controller.describe(await self.controller.instance(app, name))

    async def put_instance(self, app, name, values, wait=True, branch=None):
        if branch not in (None, "", self.controller.branch_id):
            raise NotFound("branch", branch)
        instance, created = await self.controller.put_instance(app, name, values, wait=wait)
        return self.controller.describe(instance), created

    async def delete_instance(self, app, name):
        await self.controller.delete_instance(app, name)

    async def add_consumer(self, app, name, queue):
        return await self.controller.add_consumer(app, name, queue)

    async def cancel_consumer(self, app, name, queue):
        await self.controller.cancel_consumer(app, name, queue)

    async def instance_queues(self, app, name):
        if self.controller.supervisor is None:
            return list((await self.controller.instance(app, name)).queues)
        return await self.controller.live_queues(app, name)

    async def get_autoscale(self, app, name):
        return _autoscale(await self.controller.instance(app, name))

    async def set_autoscale(self, app, name, values):
        return _autoscale(await self.controller.set_autoscale(app, name, values))

    async def restart(self, app, name):
        return self.controller.describe(await self.controller.restart(app, name))

    async def set_enabled(self, app, name, enabled):
        return self.controller.describe(await self.controller.set_enabled(app, name, enabled))

    async def stats(self, app, name):
        return await self.controller.stats(app, name)

    # Queued URLs

    def _tasks(self):
        if self.tasks is None:
            raise Unavailable("this branch does not queue tasks")
        return self.tasks

    async def queue_task(self, app, queue, method, url, query, body, content_type, timeout):
        record = await self.controller.app(app)
        declaration = await self.controller.queue(app, queue)
        task_id = await self._tasks().queue(
            record, declaration, method, url, query=query, body=body,
            content_type=content_type, timeout=timeout,
        )
        return {"uuid": task_id, "url": url, "queue": queue, "method": method}

    def task_record(self, app, task_id):
        """This branch's record of a task of C{app}, or None."""
        if self.tasks is None:
            return None
        record = self.tasks.get(task_id)
        if record is not None and record.fields.get("app") not in (None, app):
            return None
        return record

    async def task(self, app, task_id):
        await self.controller.app(app)
        return _task_json(task_id, self.task_record(app, task_id))

    async def wait_task(self, app, task_id, timeout):
        """The task once it is ready; 504 after C{timeout} seconds."""
        await self.controller.app(app)
        tasks = self._tasks()
        known = tasks.get(task_id)
        if known is not None and known.fields.get("app") not in (None, app):
            # Another app's task is unknown to this one (PENDING, as its
            # state says): it never gets ready here.
            d = defer.Deferred()
        else:
            d = tasks.journal.when_ready(task_id)
        timer = self.clock.callLater(timeout, d.cancel)
        try:
            record = await d
        except defer.CancelledError:
            record = self.task_record(app, task_id)
            raise GatewayTimeout(
                f"task {task_id} not ready after {timeout:g} s",
                uuid=task_id, state=record.state if record is not None else "PENDING",
            ) from None
        finally:
            if timer.active():
                timer.cancel()
        return _task_json(task_id, record)


def _autoscale(instance):
    return {"max": instance.max_concurrency, "min": instance.min_concurrency}
