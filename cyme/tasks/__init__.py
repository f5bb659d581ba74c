"""Queued URLs: webhook tasks published by the branch, and their results.

Owns publishing (``results``: the task service), the check of a URL
before it is queued (``urlcheck``: the branch's side of ``cyme.fence``),
the results journal (``journal``), the HTTP request a worker performs
(``webhook``, with ``webdata`` for what it sends and gets) and the Celery
app the workers load (``worker``: ``celery -A cyme.tasks.worker``).

May import: ``cyme.state``, ``cyme.amqp``, ``cyme.errors``, ``cyme.logs``,
``cyme.fence``.
``worker`` and ``webhook`` run inside workers: they import Celery, which
the branch process never does.
"""
