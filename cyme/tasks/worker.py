"""The Celery app that cyme's worker instances load (``celery -A cyme.tasks.worker``).

It runs inside the workers, never in the branch.  The branch passes the
instance's queue declarations, extra settings and the app's task modules
in the environment (``CYME_WORKER_CONFIG``, JSON), so a worker starts
consuming exactly the declared queues, with their exchanges, without a
round trip after start, and imports the task modules the branch's
operator allowed (``--task-module``) and nothing else.  Messages are JSON
only unless the settings, vetted by the branch against its
``--accept-content``, say otherwise.  The broker's URL comes in
``CELERY_BROKER_URL``, which Celery reads itself; a broker over TLS
(``amqps://``) comes with ``broker_tls`` in the configuration, and its
certificate and host name are verified, as the branch verifies them.

The fence of queued URLs is the worker's own too (``webhook`` in the
configuration: the app's ``allowed_hosts``, the branch's
``--webhook-deny-private`` and ``--webhook-allow``): a task message,
which anyone who may publish on the app's broker writes, can narrow it
with its own ``allowed_hosts``, never widen it.
"""

import base64
import json
import os
import ssl

from celery import Celery
from kombu import Queue

from cyme.tasks.webhook import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT, WebhookError, perform

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
    # Nothing but JSON unless the branch's operator opened more.
    accept_content=["json"],
    result_accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
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
    # Imported by the worker as it starts (Celery's own "imports" setting):
    # their tasks register with this app (shared_task, or current_app.task).
    app.conf.imports = tuple(config.get("imports") or ())
    # After extra_config, which may not set these (the branch's allow-list
    # has none of them): the fence is the branch's word, not the app's.
    fence = config.get("webhook") or {}
    app.conf.update(
        cyme_webhook_allowed_hosts=tuple(fence.get("allowed_hosts") or ()),
        cyme_webhook_deny_private=bool(fence.get("deny_private")),
        cyme_webhook_opened=tuple(fence.get("opened") or ()),
    )
    tls = config.get("broker_tls")
    if tls is not None:
        app.conf.broker_use_ssl = {
            "cert_reqs": ssl.CERT_REQUIRED,
            # None: the system's CAs.
            "ca_certs": tls.get("ca_certs"),
            "server_hostname": tls["server_hostname"],
        }


configure(json.loads(os.environ.get("CYME_WORKER_CONFIG") or "{}"))


@app.task(name="cyme.echo")
def echo(*args, **kwargs):
    """Return what it was given: a task to check that a queue is consumed."""
    return {"args": list(args), "kwargs": kwargs, "hostname": echo.request.hostname}


@app.task(name="cyme.webhook", bind=True)
def webhook(
    self,
    method,
    url,
    query=None,
    body=None,
    content_type=None,
    timeout=None,
    max_response_bytes=None,
    allowed_hosts=(),
    headers=None,
    body_encoding=None,
    deny_private=False,
):
    """Perform an HTTP request (see L{cyme.tasks.webhook.perform}) and return
    C{{"status_code", "url", "headers", "content", "encoding"}}.

    C{timeout} and C{max_response_bytes} default to the app settings
    C{cyme_webhook_timeout} (60 s) and C{cyme_webhook_max_response_bytes}
    (10 MiB), which the branch may set per app in C{extra_config}.  A raw
    body that is not text travels in the JSON message as base64 with
    C{body_encoding="base64"}.  A L{WebhookError} (refused, timeout, size
    cap, forbidden redirect, ...) makes the task fail with its message.

    Every hop is fenced (L{cyme.fence}) by the worker's own settings, from
    its branch: C{cyme_webhook_allowed_hosts} (the app's), else the default
    policy, opened inside the refused ranges only where
    C{cyme_webhook_opened} (C{--webhook-allow}) does, private ranges refused
    too with C{cyme_webhook_deny_private}.  The task's own C{allowed_hosts}
    (when it lists any) and C{deny_private} may only narrow that.
    """
    conf = self.app.conf
    if timeout is None:
        timeout = conf.get("cyme_webhook_timeout") or DEFAULT_TIMEOUT
    if max_response_bytes is None:
        max_response_bytes = conf.get("cyme_webhook_max_response_bytes") or DEFAULT_MAX_RESPONSE_BYTES
    if not isinstance(allowed_hosts or (), (list, tuple)):
        raise WebhookError("allowed_hosts must be a list of hosts")
    if body_encoding == "base64" and isinstance(body, str):
        try:
            body = base64.b64decode(body, validate=True)
        except ValueError:
            raise WebhookError("body is not valid base64") from None
    elif body_encoding not in (None, "text", "base64"):
        raise WebhookError(f"unknown body_encoding {body_encoding!r}; use 'text' or 'base64'")
    return perform(
        method,
        url,
        query=query,
        body=body,
        content_type=content_type,
        headers=headers,
        timeout=timeout,
        max_response_bytes=max_response_bytes,
        allowed_hosts=conf.get("cyme_webhook_allowed_hosts") or (),
        deny_private=bool(deny_private or conf.get("cyme_webhook_deny_private")),
        opened=conf.get("cyme_webhook_opened") or (),
        narrowed_by=allowed_hosts or (),
    )
