"""cyme.client: a synchronous Python client of cyme's HTTP API, for scripts.

It speaks only HTTP (urllib3) to any branch of a cluster, and keeps the
original Cyme client's object model::

    >>> from cyme.client import Client
    >>> client = Client("http://localhost:8000")    # token=, cacert=, timeout=
    >>> app = client.add("foo")                     # or client.get("foo")
    >>> app.queues.add("tasks", exchange="tasks", routing_key="tasks")
    <Queue: 'tasks'>
    >>> i = app.instances.add()                     # anonymous: named with a UUID
    >>> w1 = app.instances.add("w1", nowait=True)   # answers before the worker is up
    >>> i.autoscale()
    {'max': 1, 'min': 1}
    >>> i.autoscale(max=4, min=1)
    {'max': 4, 'min': 1}
    >>> i.stats()["pool"]["max-concurrency"]
    4
    >>> i.consumers.add("tasks")
    {'ok': 'ok'}
    >>> i.consumers.delete("tasks")
    {'ok': 'ok'}
    >>> task = app.queue("tasks", "http://example.com/import?user=133")
    >>> task.state, task.wait(timeout=60)["status_code"]
    ('PENDING', 200)
    >>> i.delete(); w1.delete(); app.queues.delete("tasks"); app.delete()

Records (L{App}, L{Instance}, L{Queue}) are snapshots of what a branch
answered: fields as attributes (C{i.state}, C{i.branch}) or in C{info}.
Failures raise the errors of L{cyme.client.errors}: C{NotFound},
C{BadRequest}... carrying the HTTP C{status} and the branch's message, and
C{ConnectionFailed} when no branch answered.

This package imports nothing of the daemon (tests/test_layers.py checks it).
"""

from cyme.client.apps import App, Client, Tokens
from cyme.client.errors import (
    APIError, BadGateway, BadRequest, ClientError, Conflict, ConnectionFailed, Forbidden,
    GatewayTimeout, MethodNotAllowed, NotFound, PayloadTooLarge, ServerError, TaskFailed,
    Unauthorized, Unavailable,
)
from cyme.client.instances import Consumers, Instance, Instances
from cyme.client.queues import Queue, Queues
from cyme.client.tasks import Task
from cyme.client.transport import DEFAULT_URL, PartialAnswer

__all__ = [
    "APIError", "App", "BadGateway", "BadRequest", "Client", "ClientError", "Conflict",
    "ConnectionFailed", "Consumers", "DEFAULT_URL", "Forbidden", "GatewayTimeout",
    "Instance", "Instances", "MethodNotAllowed", "NotFound", "PartialAnswer",
    "PayloadTooLarge", "Queue", "Queues", "ServerError", "Task", "TaskFailed", "Tokens",
    "Unauthorized", "Unavailable",
]
