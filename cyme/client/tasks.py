"""Queued URLs and their results, for L{cyme.client}."""

import time

from cyme.client.errors import GatewayTimeout, TaskFailed
from cyme.client.transport import path

#: The longest a branch holds one C{/wait/} request (its C{?timeout=} cap).
LONGEST_WAIT = 300.0
#: Celery's states of a task that is done: a wait ends with one of them.
DONE = frozenset(["SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED"])
#: Seconds the client gives the branch beyond the wait itself.
SLACK = 15.0


class Task:
    """
    A queued URL's task: C{uuid}; C{state} (asked each time it is read),
    C{result()} and C{wait(timeout)}.  C{info} is the last JSON read.
    """

    def __init__(self, app, uuid, info=None):
        self.app = app
        self.uuid = uuid
        self.info = dict(info or {"uuid": uuid})

    def __repr__(self):
        return f"<Task: {self.uuid!r}>"

    def _path(self, what):
        return path(self.app.name, "query", self.uuid, what)

    @property
    def state(self):
        """PENDING (also for a task nobody knows), STARTED, RETRY, SUCCESS or FAILURE."""
        answer = self.app.transport.request("GET", self._path("state"))
        self.info["state"] = answer["state"]
        return answer["state"]

    def result(self):
        """
        The task's result (C{{"status_code", "url", "headers", "content",
        "encoding"}} for a queued URL) if it succeeded, None while it is not
        done; raises L{TaskFailed} if it failed.
        """
        return self._outcome(self.app.transport.request("GET", self._path("result")))

    def wait(self, timeout=30.0):
        """
        The result once the task is done (the branch holds the request:
        no polling); L{GatewayTimeout} after C{timeout} seconds, and
        L{TaskFailed} if it failed.  A task that ended otherwise (revoked,
        rejected, ignored) gives None at once, its state in C{info}.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            step = max(min(left, LONGEST_WAIT), 0.1)
            try:
                answer = self.app.transport.request(
                    "GET", self._path("wait"), params={"timeout": f"{round(step, 3):g}"},
                    timeout=step + SLACK,
                )
            except GatewayTimeout:  # a branch of an earlier version: 504 when it ran out
                if deadline - time.monotonic() > 0.5:
                    continue
                raise
            if answer.get("state") in DONE:
                return self._outcome(answer)
            # The wait ran out with the task not done (the branch answers 202).
            if deadline - time.monotonic() > 0.5:
                continue
            self.info = dict(answer)
            raise GatewayTimeout(f"task {self.uuid} not ready after {timeout:g} s",
                                 body=answer)

    def _outcome(self, answer):
        self.info = dict(answer)
        state = answer.get("state")
        if state == "FAILURE":
            result = answer.get("result")
            reason = result.get("exc_message") if isinstance(result, dict) else result
            raise TaskFailed(f"task {self.uuid} failed: {reason}", body=answer)
        return answer.get("result") if state == "SUCCESS" else None
