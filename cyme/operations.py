"""The API's operations with JSON in and out, as this branch performs them.

The web layer and the bus both speak to an operations object: this one
runs everything on the local branch (its store and supervisor);
L{cyme.cluster.ClusterOperations} has the same methods and routes each one
to the branch that owns the record.  Listings return C{(names, missing)},
C{missing} naming the branches that did not answer (none here).
"""

import os
import time

import attrs

from cyme import __version__
from cyme.errors import NotFound


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


@attrs.define
class LocalOperations:
    controller: object
    url: str | None = None
    started: float = attrs.field(factory=time.time)

    def load(self):
        return load_figures(len(self.controller.store.instances()))

    def branch_info(self, now, beat=None):
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


def _autoscale(instance):
    return {"max": instance.max_concurrency, "min": instance.min_concurrency}
