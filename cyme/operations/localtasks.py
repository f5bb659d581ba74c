"""The queued-URL operations of one branch: publish a URL as a task, and
answer its state and result from this branch's journal.

L{LocalTasks} is the part of L{cyme.operations.local.LocalOperations} that
goes through its task service (L{cyme.tasks.results.TaskService}); a task
is another app's as far as an app is concerned (PENDING, never ready).
"""

from twisted.internet import defer

from cyme.errors import Unavailable
from cyme.state.models import check_name


def _task_json(task_id, record):
    if record is None:
        return {"uuid": task_id, "state": "PENDING", "result": None}
    body = {"uuid": task_id, "state": record.state, "result": record.fields.get("result")}
    if record.fields.get("traceback"):
        body["traceback"] = record.fields["traceback"]
    return body


class LocalTasks:
    """Mixed into L{LocalOperations}: uses its C{tasks}, C{store}, C{clock} and C{_app}."""

    def _tasks(self):
        if self.tasks is None:
            raise Unavailable("this branch does not queue tasks")
        return self.tasks

    async def queue_task(self, app, queue, method, url, query, body, content_type, timeout):
        record = self._app(app)
        declaration = self.store.get_queue(app, check_name(queue, "queue"))
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
        self._app(app)
        return _task_json(task_id, self.task_record(app, task_id))

    async def wait_task(self, app, task_id, timeout):
        """
        C{(json, ready)}: the task once it is ready, or as it is after
        C{timeout} seconds (a wait that ran out is no error: the task is
        just not done yet).
        """
        self._app(app)
        tasks = self._tasks()
        known = tasks.get(task_id)
        if known is not None and known.fields.get("app") not in (None, app):
            # Another app's task is unknown to this one (PENDING, as its
            # state says): it never gets ready here.
            d = defer.Deferred()
        else:
            d = tasks.when_ready(task_id)
        d.addTimeout(timeout, self.clock)
        try:
            record = await d
        except defer.TimeoutError:
            return _task_json(task_id, self.task_record(app, task_id)), False
        return _task_json(task_id, record), True
