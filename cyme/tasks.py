"""The Celery app that cyme's worker instances load (``celery -A cyme.tasks``).

It runs inside the workers, never in the branch.  The branch passes the
instance's queue declarations and extra settings in the environment
(``CYME_WORKER_CONFIG``, JSON), so a worker starts consuming exactly the
declared queues, with their exchanges, without a round trip after start.
"""

import json
import os

from celery import Celery
from kombu import Queue

app = Celery("cyme")

app.conf.update(
    # No task is lost when a worker dies: a task is acknowledged only once
    # it ran, and one whose worker process was killed goes back to the queue.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Results go back to the publisher's own queue (reply_to), durably.
    result_backend="rpc://",
    result_persistent=True,
    task_track_started=True,
    worker_send_task_events=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


def _queues(declarations):
    return [
        Queue.from_dict(
            d["name"],
            exchange=d["exchange"],
            exchange_type=d["exchange_type"],
            routing_key=d["routing_key"],
            **d.get("options", {}),
        )
        for d in declarations
    ]


def configure(config):
    """Apply the branch's C{CYME_WORKER_CONFIG} to the app."""
    if config.get("queues"):
        app.conf.task_queues = _queues(config["queues"])
    app.conf.update(config.get("extra_config") or {})


configure(json.loads(os.environ.get("CYME_WORKER_CONFIG") or "{}"))


@app.task(name="cyme.echo")
def echo(*args, **kwargs):
    """Return what it was given: a task to check that a queue is consumed."""
    return {"args": list(args), "kwargs": kwargs, "hostname": echo.request.hostname}
