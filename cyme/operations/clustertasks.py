"""The queued-URL operations of the cluster: published here, answered by the
branch that published them.

L{ClusterTasks} is the part of L{cyme.operations.cluster.ClusterOperations}
that queues URLs through this branch (its own result queue) and finds a
task's result on the branch that holds it: this branch's journal first,
else the one branch that answers C{task.get}; a wait is held by that
branch, and counts against its cap on open waits.
"""

from . import calls


class ClusterTasks:
    """Mixed into L{ClusterOperations}: uses its C{local}, C{bus}, C{waits}
    and C{call_timeout}."""

    def task_handlers(self):
        return {"task.get": self._task_local, "task.wait": self._task_wait_local}

    async def queue_task(self, app, queue, method, url, query, body, content_type, timeout):
        return await self.local.queue_task(
            app, queue, method, url, query, body, content_type, timeout
        )

    def _task_local(self, args, sender):
        args = calls.checked(args, calls.TASK_GET)
        record = self.local.task_record(args["app"], args["uuid"])
        return None if record is None else {"state": record.state}

    async def _task_wait_local(self, args, sender):
        args = calls.checked(args, calls.TASK_WAIT)
        with self.waits.hold(args["app"], args["uuid"]):
            task, ready = await self.local.wait_task(args["app"], args["uuid"],
                                                     args["timeout"])
        return {"task": task, "ready": ready}

    async def _task_owner(self, app, task_id):
        if self.local.task_record(app, task_id) is not None:
            return self.bus.branch_id
        results, errors, missing = await self.bus.broadcast(
            "task.get", {"app": app, "uuid": task_id}, self.call_timeout
        )
        for branch, found in sorted(results.items()):
            if found:
                return branch
        return None

    async def task(self, app, task_id):
        await self.local.get_app(app)
        owner = await self._task_owner(app, task_id)
        if owner is None or owner == self.bus.branch_id:
            return await self.local.task(app, task_id)
        return await self.bus.call(
            owner, "instance.op", {"op": "task", "args": [app, task_id]}, self.call_timeout
        )

    async def wait_task(self, app, task_id, timeout):
        await self.local.get_app(app)
        owner = await self._task_owner(app, task_id)
        if owner is None or owner == self.bus.branch_id:
            return await self.local.wait_task(app, task_id, timeout)
        answer = calls.checked(await self.bus.call(
            owner, "task.wait", {"app": app, "uuid": task_id, "timeout": timeout},
            timeout + self.call_timeout,
        ), calls.TASK_WAITED)
        return answer["task"], answer["ready"]
