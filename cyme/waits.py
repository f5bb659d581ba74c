"""The cap on the task waits (C{wait/} long-polls) one branch holds open.

Each open wait holds a request, a Deferred and a timer.  A branch counts
the waits it answers over HTTP and those it serves for other branches over
the bus (a wait sent to the branch that owns the task) in one L{WaitCap},
so that neither its clients nor other branches can make it hold more than
its limit; beyond it a wait is a 503 telling the caller to poll instead.
"""

import contextlib

from cyme.errors import Unavailable

#: Open waits per branch (the README's "Limits").
MAX_WAITS = 1000


class WaitCap:
    def __init__(self, limit=MAX_WAITS):
        self.limit = limit
        #: The waits open now.
        self.open = 0

    @contextlib.contextmanager
    def hold(self, app, task_id):
        """One wait for task C{task_id} of C{app}, while the block runs; a 503 beyond the cap."""
        if self.open >= self.limit:
            raise Unavailable(
                f"this branch holds {self.limit} waits already: poll "
                f"/{app}/query/{task_id}/state/ or retry later",
                limit=self.limit,
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
