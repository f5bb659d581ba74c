"""cyme: the Celery instance manager.

Every machine runs one ``cyme-branch`` daemon; together the branches manage
a cluster of Celery worker instances behind one HTTP API.

The package is laid out as its layers, each calling only the ones below it
(``tests/test_layers.py`` checks the imports):

``tap``          the wiring: options and ``makeService``, the one place that
                 knows every part (``script``: the ``cyme-branch`` command;
                 ``branch``: the parent service; ``systemd``: its notifications;
                 ``jsonlog``: ``--log-format json``)
``api``          Klein routes, request parsing, the admin page, the event
                 stream (SSE); calls ``IOperations`` only
``operations``   ``IOperations``: on this branch, or routed through the cluster;
                 the branch's events (``events``, ``eventfeeds``, ``eventhub``)
                 and its instances' drift
``cluster``      the bus between branches, presence, replication, placement
``supervision``  the supervisor, each worker's lifecycle, launchers and the
                 fork server, Celery's remote control
``tasks``        queued URLs: publishing, results and their journal, the
                 workers' Celery app and webhook
``state``        the desired state: models, stores, the root directory
``amqp``         the txAMQP adapter and the branch's broker pool
base modules     ``errors``, ``logs``, ``backoff``, ``gather`` (scatter-gather),
                 ``listeners`` and ``fence`` (the addresses queued URLs may
                 reach), used by every layer

Apart from the daemon, the operator's tools speak to it over HTTP only and
import none of it: ``client`` (``cyme.client``, the Python client) and
``cli`` (``cyme``, the management command, built on the client).
"""

__version__ = "0.1.0"
